"""The typed Python SDK: :class:`AsyncClient` (aiohttp) and its synchronous facade :class:`Client`.

Replies are parsed with the wire models of :mod:`openclaw_orchestrator.models`, and failures
come back as the same error classes the server raises (:func:`~.errors.error_from_body`).
Transport failures are translated in one place, :func:`_map_transport_errors`::

    connection refused, DNS, reset     -> ConnectionFailedError   (the orchestrator is unreachable)
    the client-side deadline passed    -> TimeoutExceededError
    a non-2xx reply                    -> the class named by its JSON ``code``
    a reply that is not JSON/the model -> OrchestratorError

The client-side HTTP deadline is the request's own ``timeout`` plus :data:`DEFAULT_TIMEOUT_MARGIN`,
so the server's 504 (with its partial results) arrives before the client gives up.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from .__about__ import __version__
from .domain.duration import parse_duration
from .errors import (
    ConnectionFailedError,
    OrchestratorError,
    TimeoutExceededError,
    error_from_body,
)
from .models import FanoutEntry, FanoutResult, HealthDetail, InstanceInfo, RouteResult, TargetExpr
from .settings import load_client_settings

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_TIMEOUT_MARGIN", "AsyncClient", "Client"]

DEFAULT_TIMEOUT = 60.0
"""Seconds a call without its own ``timeout`` may take (above the server's default of 30 s)."""
DEFAULT_TIMEOUT_MARGIN = 5.0
"""Seconds the client waits beyond a request's own ``timeout`` for the server's answer."""

REQUEST_ID_HEADER = "X-Request-ID"
_USER_AGENT = f"openclaw-orchestrator-sdk/{__version__}"
_USERINFO = re.compile(r"//[^/@]*@")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
StreamItem: TypeAlias = FanoutEntry | FanoutResult


def _display_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, fit for messages and reprs."""
    return _USERINFO.sub("//", url)


def _seconds(value: float | str | None, field: str) -> float | None:
    """Parse ``10``/``"10s"``/``"500ms"`` before sending, so a typo fails without a round trip."""
    return None if value is None else parse_duration(value, field=field)


def _targets_param(targets: TargetExpr) -> str:
    """A target expression as one query value: list tokens joined with commas."""
    return targets if isinstance(targets, str) else ",".join(targets)


def _body(**fields: Any) -> dict[str, Any]:
    """A request body without the fields left at ``None`` (the server's defaults apply)."""
    return {key: value for key, value in fields.items() if value is not None}


def _parse(model: type[M], data: Any) -> M:
    """``data`` as ``model``; a reply this SDK cannot read becomes an ``OrchestratorError``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise OrchestratorError(
            f"the orchestrator sent a {model.__name__} this SDK cannot read: {exc}"
        ) from exc


def _decode_error(status: int, raw: bytes) -> OrchestratorError:
    """The typed error of a non-2xx reply; a body that is not JSON keeps only the status."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        snippet = raw[:200].decode("utf-8", "replace").strip()
        return OrchestratorError(
            f"HTTP {status} from the orchestrator: {snippet or '(empty body)'}",
            upstream_status=status,
        )
    return error_from_body(body, status=status)


def _stream_item(line: bytes) -> StreamItem:
    """One NDJSON line of a streaming fanout as an entry or the final result; raises on error."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise OrchestratorError(f"the fanout stream sent a line that is not JSON: {exc}") from exc
    kind = event.get("type") if isinstance(event, dict) else None
    if kind == "entry":
        return _parse(FanoutEntry, event.get("entry"))
    if kind == "result":
        return _parse(FanoutResult, event.get("result"))
    if kind == "error":
        raise error_from_body({"error": event.get("error")}, status=200)
    raise OrchestratorError(f"the fanout stream sent an unknown line type {kind!r}")


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Non-empty lines of an NDJSON body, with no limit on line length (unlike ``readline``)."""
    buffer = bytearray()
    async for chunk in content.iter_any():
        buffer.extend(chunk)
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end]).strip()
            del buffer[: end + 1]
            if line:
                yield line
    if tail := bytes(buffer).strip():
        yield tail


class AsyncClient:
    """Async client of one orchestrator; one pooled aiohttp session, opened on first use.

    ``url``/``api_key`` default to ``ORCHESTRATOR_URL``/``ORCHESTRATOR_API_KEY`` and then to
    ``config`` (see :func:`~.settings.load_client_settings`). A ``session`` passed in is used
    as is and left open by :meth:`aclose`.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        config: Path | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        settings = load_client_settings(config, url=url, api_key=api_key)
        self.url = settings.url.rstrip("/")
        self.timeout = timeout
        self._headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        if settings.api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._session = session
        self._owns_session = session is None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={_display_url(self.url)!r}>"

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` was called; a closed client refuses every call."""
        return self._closed

    async def aclose(self) -> None:
        """Close the pooled session (unless it was passed in). Safe to call twice."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    # -- tasks -----------------------------------------------------------------------------

    async def route(
        self,
        payload: Any = None,
        *,
        instances: TargetExpr | None = None,
        timeout: float | str | None = None,  # server-side deadline
        retry: int | None = None,
        policy: str | None = None,
        idempotency_key: str | None = None,
    ) -> RouteResult:
        """Run ``payload`` on one healthy instance among ``instances``, failing over on errors."""
        deadline = _seconds(timeout, "timeout")
        body = _body(
            instances=instances,
            payload={} if payload is None else payload,
            timeout=deadline,
            retry=retry,
            policy=policy,
        )
        data = await self._request(
            "POST",
            "/api/orchestrator/route",
            body=body,
            deadline=deadline,
            idempotency_key=idempotency_key,
        )
        return _parse(RouteResult, data)

    async def fanout(
        self,
        payload: Any = None,
        *,
        targets: TargetExpr = "all",
        aggregate: bool | str = True,
        timeout: float | str | None = None,  # server-side deadline
        min_success: int | None = None,
        quorum: int | None = None,
        top_k: int | None = None,
        retry: int | None = None,
        idempotency_key: str | None = None,
    ) -> FanoutResult:
        """Run ``payload`` on every target and aggregate the results.

        Raises :class:`~.errors.TimeoutExceededError` when ``min_success`` is not met; its
        ``details["results"]`` holds the entries that did arrive.
        """
        deadline = _seconds(timeout, "timeout")
        body = _fanout_body(
            payload, targets, aggregate, deadline, min_success, quorum, top_k, retry
        )
        data = await self._request(
            "POST",
            "/api/orchestrator/fanout",
            body=body,
            deadline=deadline,
            idempotency_key=idempotency_key,
        )
        return _parse(FanoutResult, data)

    async def fanout_stream(
        self,
        payload: Any = None,
        *,
        targets: TargetExpr = "all",
        aggregate: bool | str = True,
        timeout: float | str | None = None,  # server-side deadline
        min_success: int | None = None,
        quorum: int | None = None,
        top_k: int | None = None,
        retry: int | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Like :meth:`fanout`, but yield each :class:`FanoutEntry` as it arrives, then the
        final :class:`FanoutResult`; an unmet ``min_success`` raises after the entries."""
        deadline = _seconds(timeout, "timeout")
        body = _fanout_body(
            payload, targets, aggregate, deadline, min_success, quorum, top_k, retry
        )
        body["stream"] = True
        headers = self._request_headers(idempotency_key, has_body=True)
        session = self._ensure_session()
        finished = False
        with self._map_transport_errors(deadline):
            async with session.post(
                f"{self.url}/api/orchestrator/fanout",
                data=orjson.dumps(body),
                headers=headers,
                timeout=self._client_timeout(deadline),
            ) as response:
                if response.status >= 400:
                    raise _decode_error(response.status, await response.read())
                async for line in _lines(response.content):
                    item = _stream_item(line)
                    yield item
                    finished = isinstance(item, FanoutResult)
        if not finished:
            raise OrchestratorError("the fanout stream ended before its result")

    # -- health ----------------------------------------------------------------------------

    async def health(self, instances: TargetExpr | None = None) -> dict[str, str]:
        """Each instance's state: ``{"A": "healthy", "B": "down", ...}``."""
        data = await self._get_health(instances, detail=False)
        return {str(name): str(state) for name, state in data.items()}

    async def health_detail(self, instances: TargetExpr | None = None) -> dict[str, HealthDetail]:
        """Each instance's state with latency, last check, failures in a row and last error."""
        data = await self._get_health(instances, detail=True)
        return {str(name): _parse(HealthDetail, value) for name, value in data.items()}

    async def liveness(self) -> dict[str, Any]:
        """``GET /api/health/check``: the orchestrator's own status, version and counts."""
        data = await self._request("GET", "/api/health/check")
        return _expect_object(data, "/api/health/check")

    # -- cluster ---------------------------------------------------------------------------

    async def register(
        self,
        name: str,
        url: str,
        *,
        driver: str = "worker",
        weight: float = 1.0,
        tags: tuple[str, ...] | list[str] = (),
        credentials: str | None = None,
        health_path: str | None = None,
        heartbeat_ttl: float | str | None = None,
    ) -> InstanceInfo:
        """Register (or heartbeat) instance ``name`` at ``url``; ``credentials`` is the bearer
        token the orchestrator will send it, and is never echoed back."""
        body = _body(
            name=name,
            url=url,
            driver=driver,
            weight=weight,
            tags=list(tags),
            credentials=credentials,
            health_path=health_path,
            heartbeat_ttl=_seconds(heartbeat_ttl, "heartbeat_ttl"),
        )
        data = await self._request("POST", "/api/cluster/register", body=body)
        return _parse(InstanceInfo, data)

    async def instances(self) -> list[InstanceInfo]:
        """Every known instance, configured or registered, with its live state."""
        data = await self._request("GET", "/api/cluster/instances")
        items = _expect_object(data, "/api/cluster/instances").get("instances")
        if not isinstance(items, list):
            raise OrchestratorError("the orchestrator sent an instance list without 'instances'")
        return [_parse(InstanceInfo, item) for item in items]

    async def unregister(self, name: str) -> None:
        """Remove instance ``name``; :class:`~.errors.NotFoundError` when it is unknown."""
        await self._request("DELETE", f"/api/cluster/instances/{quote(name, safe='')}")

    # -- transport -------------------------------------------------------------------------

    async def _get_health(self, instances: TargetExpr | None, *, detail: bool) -> dict[str, Any]:
        params = _body(
            instances=None if instances is None else _targets_param(instances),
            detail="true" if detail else None,
        )
        data = await self._request("GET", "/api/orchestrator/health", params=params)
        return _expect_object(data, "/api/orchestrator/health")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        deadline: float | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Send one request and return its decoded JSON; every failure is an OrchestratorError."""
        session = self._ensure_session()
        with self._map_transport_errors(deadline):
            async with session.request(
                method,
                f"{self.url}{path}",
                data=None if body is None else orjson.dumps(body),
                params=params,
                headers=self._request_headers(idempotency_key, has_body=body is not None),
                timeout=self._client_timeout(deadline),
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise _decode_error(response.status, raw)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise OrchestratorError(
                f"the orchestrator sent a reply that is not JSON: {exc}",
                upstream_status=response.status,
            ) from exc

    def _request_headers(self, idempotency_key: str | None, *, has_body: bool) -> dict[str, str]:
        headers = dict(self._headers)
        if has_body:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def _client_timeout(self, deadline: float | None) -> aiohttp.ClientTimeout:
        """The request's deadline plus a margin, or the client's default when it has none."""
        total = self.timeout if deadline is None else deadline + DEFAULT_TIMEOUT_MARGIN
        return aiohttp.ClientTimeout(total=total)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; create a new one")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    @contextmanager
    def _map_transport_errors(self, deadline: float | None) -> Iterator[None]:
        """Translate aiohttp/asyncio failures into the error tree, most specific first."""
        where = _display_url(self.url)
        try:
            yield
        except OrchestratorError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            waited = self.timeout if deadline is None else deadline + DEFAULT_TIMEOUT_MARGIN
            raise TimeoutExceededError(
                f"no answer from the orchestrator at {where} within {waited:g}s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectionFailedError(
                f"cannot reach the orchestrator at {where}: {_reason(exc.os_error)}"
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise ConnectionFailedError(
                f"cannot reach the orchestrator at {where}: not a valid URL"
            ) from exc
        except aiohttp.ClientError as exc:
            raise ConnectionFailedError(
                f"connection to the orchestrator at {where} failed: {exc}"
            ) from exc


def _reason(error: OSError) -> str:
    """``Connection refused`` rather than asyncio's ``Connect call failed ('127.0.0.1', 1)``."""
    if isinstance(error, socket.gaierror) or not error.errno:
        return error.strerror or str(error)
    return os.strerror(error.errno)


def _fanout_body(
    payload: Any,
    targets: TargetExpr,
    aggregate: bool | str,
    deadline: float | None,
    min_success: int | None,
    quorum: int | None,
    top_k: int | None,
    retry: int | None,
) -> dict[str, Any]:
    """The ``FanoutRequest`` body shared by :meth:`AsyncClient.fanout` and its stream."""
    return _body(
        targets=targets,
        payload={} if payload is None else payload,
        aggregate=aggregate,
        timeout=deadline,
        min_success=min_success,
        quorum=quorum,
        top_k=top_k,
        retry=retry,
    )


def _expect_object(data: Any, path: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise OrchestratorError(f"the orchestrator sent a non-object reply to {path}")
    return data


class Client:
    """Synchronous facade over :class:`AsyncClient`, driving it on a private event loop.

    Same methods and arguments; :meth:`fanout_stream` is a plain iterator. Not for use inside
    a running event loop (use :class:`AsyncClient` there).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        config: Path | None = None,
    ) -> None:
        self._client = AsyncClient(url, api_key, timeout=timeout, config=config)
        self._loop = asyncio.new_event_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={_display_url(self.url)!r}>"

    @property
    def url(self) -> str:
        """The orchestrator's base URL."""
        return self._client.url

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._loop.is_closed()

    def close(self) -> None:
        """Close the session and the private loop. Safe to call twice."""
        if self._loop.is_closed():
            return
        try:
            if self._client._session is None:  # nothing opened: no need to drive the loop
                self._client._closed = True
            else:
                self._run(self._client.aclose())
                self._run(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    def route(
        self,
        payload: Any = None,
        *,
        instances: TargetExpr | None = None,
        timeout: float | str | None = None,
        retry: int | None = None,
        policy: str | None = None,
        idempotency_key: str | None = None,
    ) -> RouteResult:
        """See :meth:`AsyncClient.route`."""
        return self._run(
            self._client.route(
                payload,
                instances=instances,
                timeout=timeout,
                retry=retry,
                policy=policy,
                idempotency_key=idempotency_key,
            )
        )

    def fanout(
        self,
        payload: Any = None,
        *,
        targets: TargetExpr = "all",
        aggregate: bool | str = True,
        timeout: float | str | None = None,
        min_success: int | None = None,
        quorum: int | None = None,
        top_k: int | None = None,
        retry: int | None = None,
        idempotency_key: str | None = None,
    ) -> FanoutResult:
        """See :meth:`AsyncClient.fanout`."""
        return self._run(
            self._client.fanout(
                payload,
                targets=targets,
                aggregate=aggregate,
                timeout=timeout,
                min_success=min_success,
                quorum=quorum,
                top_k=top_k,
                retry=retry,
                idempotency_key=idempotency_key,
            )
        )

    def fanout_stream(
        self,
        payload: Any = None,
        *,
        targets: TargetExpr = "all",
        aggregate: bool | str = True,
        timeout: float | str | None = None,
        min_success: int | None = None,
        quorum: int | None = None,
        top_k: int | None = None,
        retry: int | None = None,
        idempotency_key: str | None = None,
    ) -> Iterator[StreamItem]:
        """See :meth:`AsyncClient.fanout_stream`; each item is fetched as you iterate."""
        stream = self._client.fanout_stream(
            payload,
            targets=targets,
            aggregate=aggregate,
            timeout=timeout,
            min_success=min_success,
            quorum=quorum,
            top_k=top_k,
            retry=retry,
            idempotency_key=idempotency_key,
        )
        try:
            while True:
                try:
                    item = self._run(stream.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self._loop.is_closed():
                self._loop.run_until_complete(stream.aclose())

    def health(self, instances: TargetExpr | None = None) -> dict[str, str]:
        """See :meth:`AsyncClient.health`."""
        return self._run(self._client.health(instances))

    def health_detail(self, instances: TargetExpr | None = None) -> dict[str, HealthDetail]:
        """See :meth:`AsyncClient.health_detail`."""
        return self._run(self._client.health_detail(instances))

    def liveness(self) -> dict[str, Any]:
        """See :meth:`AsyncClient.liveness`."""
        return self._run(self._client.liveness())

    def register(
        self,
        name: str,
        url: str,
        *,
        driver: str = "worker",
        weight: float = 1.0,
        tags: tuple[str, ...] | list[str] = (),
        credentials: str | None = None,
        health_path: str | None = None,
        heartbeat_ttl: float | str | None = None,
    ) -> InstanceInfo:
        """See :meth:`AsyncClient.register`."""
        return self._run(
            self._client.register(
                name,
                url,
                driver=driver,
                weight=weight,
                tags=tags,
                credentials=credentials,
                health_path=health_path,
                heartbeat_ttl=heartbeat_ttl,
            )
        )

    def instances(self) -> list[InstanceInfo]:
        """See :meth:`AsyncClient.instances`."""
        return self._run(self._client.instances())

    def unregister(self, name: str) -> None:
        """See :meth:`AsyncClient.unregister`."""
        self._run(self._client.unregister(name))

    def _run(self, awaitable: Coroutine[Any, Any, T]) -> T:
        """Drive ``awaitable`` to completion on the private loop."""
        if self._loop.is_closed():
            awaitable.close()
            raise RuntimeError(f"{type(self).__name__} is closed; create a new one")
        if _in_running_loop():
            awaitable.close()
            raise RuntimeError(
                f"{type(self).__name__} cannot run inside an event loop; use AsyncClient"
            )
        return self._loop.run_until_complete(awaitable)


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
