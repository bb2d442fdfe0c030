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

Sessions live under ``client.sessions`` (:class:`AsyncSessions`): calls made there carry the
client's API key, while a handle (:class:`AsyncSession`) that holds a session token sends that
token instead, so a program given only a token needs no key. The sync :class:`Client`,
:class:`Sessions` and :class:`Session` drive the same objects on a private loop.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import re
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import BaseModel

from .__about__ import __version__
from .bodies import outgoing_body
from .domain.duration import parse_duration
from .errors import (
    ConnectionFailedError,
    InvalidRequestError,
    NotFoundError,
    OrchestratorError,
    SessionClosedError,
    TimeoutExceededError,
    UnauthorizedError,
    error_from_body,
)
from .models import (
    SESSION_ID_PATTERN,
    FailoverMode,
    FanoutEntry,
    FanoutResult,
    HealthDetail,
    HistoryEntry,
    HistoryPage,
    InstanceInfo,
    RouteResult,
    SendResult,
    SessionInfo,
    SessionList,
    SessionState,
    SpawnResult,
    TargetExpr,
)
from .replies import expect_object, parse_reply
from .settings import load_client_settings

__all__ = [
    "DEFAULT_HISTORY_PAGE",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TIMEOUT_MARGIN",
    "AsyncClient",
    "AsyncSession",
    "AsyncSessions",
    "Client",
    "Session",
    "Sessions",
]

DEFAULT_TIMEOUT = 60.0
"""Seconds a call without its own ``timeout`` may take (above the server's default of 30 s)."""
DEFAULT_TIMEOUT_MARGIN = 5.0
"""Seconds the client waits beyond a request's own ``timeout`` for the server's answer."""
DEFAULT_HISTORY_PAGE = 100
"""Entries per page of a session's history (the server takes 1 to 1000)."""

REQUEST_ID_HEADER = "X-Request-ID"
_USER_AGENT = f"openclaw-orchestrator-sdk/{__version__}"
_USERINFO = re.compile(r"//[^/@]*@")
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
SESSIONS_PATH = "/api/orchestrator/sessions"

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
        return parse_reply(FanoutEntry, event.get("entry"))
    if kind == "result":
        return parse_reply(FanoutResult, event.get("result"))
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
        self._sessions = AsyncSessions(self)

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

    @property
    def sessions(self) -> AsyncSessions:
        """Stateful conversations pinned to one instance: spawn, send, history, close."""
        return self._sessions

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
        attempt_timeout: float | str | None = None,
    ) -> RouteResult:
        """Run ``payload`` on one healthy instance among ``instances``, failing over on errors.

        ``attempt_timeout`` caps each attempt, so that a candidate that hangs is given up in
        time to try the next one within ``timeout``."""
        deadline = _seconds(timeout, "timeout")
        body = _body(
            instances=instances,
            payload={} if payload is None else payload,
            timeout=deadline,
            attempt_timeout=_seconds(attempt_timeout, "attempt_timeout"),
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
        return parse_reply(RouteResult, data)

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
        attempt_timeout: float | str | None = None,
    ) -> FanoutResult:
        """Run ``payload`` on every target and aggregate the results (``attempt_timeout``:
        see :meth:`route`; with ``retry`` it leaves time for a target's retry).

        Raises :class:`~.errors.TimeoutExceededError` when ``min_success`` is not met; its
        ``details["results"]`` holds the entries that did arrive.
        """
        deadline = _seconds(timeout, "timeout")
        body = _fanout_body(
            payload,
            targets,
            aggregate,
            deadline,
            min_success,
            quorum,
            top_k,
            retry,
            attempt_timeout,
        )
        data = await self._request(
            "POST",
            "/api/orchestrator/fanout",
            body=body,
            deadline=deadline,
            idempotency_key=idempotency_key,
        )
        return parse_reply(FanoutResult, data)

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
        attempt_timeout: float | str | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Like :meth:`fanout`, but yield each :class:`FanoutEntry` as it arrives, then the
        final :class:`FanoutResult`; an unmet ``min_success`` raises after the entries."""
        deadline = _seconds(timeout, "timeout")
        body = _fanout_body(
            payload,
            targets,
            aggregate,
            deadline,
            min_success,
            quorum,
            top_k,
            retry,
            attempt_timeout,
        )
        body["stream"] = True
        headers = self._request_headers(idempotency_key, has_body=True)
        session = self._ensure_session()
        finished = False
        with self._map_transport_errors(deadline):
            async with session.post(
                f"{self.url}/api/orchestrator/fanout",
                data=outgoing_body(orjson.dumps(body)),
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
        return {str(name): parse_reply(HealthDetail, value) for name, value in data.items()}

    async def liveness(self) -> dict[str, Any]:
        """``GET /api/health/check``: the orchestrator's own status, version and counts."""
        data = await self._request("GET", "/api/health/check")
        return expect_object(data, "/api/health/check")

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
        return parse_reply(InstanceInfo, data)

    async def instances(self) -> list[InstanceInfo]:
        """Every known instance, configured or registered, with its live state."""
        data = await self._request("GET", "/api/cluster/instances")
        items = expect_object(data, "/api/cluster/instances").get("instances")
        if not isinstance(items, list):
            raise OrchestratorError("the orchestrator sent an instance list without 'instances'")
        return [parse_reply(InstanceInfo, item) for item in items]

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
        return expect_object(data, "/api/orchestrator/health")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        deadline: float | None = None,
        idempotency_key: str | None = None,
        token: str | None = None,
    ) -> Any:
        """Send one request and return its decoded JSON; every failure is an OrchestratorError.

        ``token`` (a session token) replaces the client's API key for this request only.
        """
        session = self._ensure_session()
        headers = self._request_headers(idempotency_key, has_body=body is not None, token=token)
        with self._map_transport_errors(deadline):
            async with session.request(
                method,
                f"{self.url}{path}",
                data=None if body is None else outgoing_body(orjson.dumps(body)),
                params=params,
                headers=headers,
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

    def _request_headers(
        self, idempotency_key: str | None, *, has_body: bool, token: str | None = None
    ) -> dict[str, str]:
        headers = dict(self._headers)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
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
    attempt_timeout: float | str | None,
) -> dict[str, Any]:
    """The ``FanoutRequest`` body shared by :meth:`AsyncClient.fanout` and its stream."""
    return _body(
        targets=targets,
        payload={} if payload is None else payload,
        aggregate=aggregate,
        timeout=deadline,
        attempt_timeout=_seconds(attempt_timeout, "attempt_timeout"),
        min_success=min_success,
        quorum=quorum,
        top_k=top_k,
        retry=retry,
    )


def _session_path(session_id: str, *suffix: str) -> str:
    """``/api/orchestrator/sessions/<id>[/suffix]``; an id the server would refuse fails here."""
    if not isinstance(session_id, str) or not _SESSION_ID.match(session_id):
        raise InvalidRequestError(
            f"session_id: {session_id!r} is not a session id (letters, digits, '._:-', "
            "starting with a letter or digit, at most 128)",
            field="session_id",
        )
    return "/".join((SESSIONS_PATH, session_id, *suffix))


def _check_token(token: str | None) -> str | None:
    """A usable bearer value or None; the message never repeats the token."""
    if token is not None and (
        not isinstance(token, str) or not token or not token.isprintable() or " " in token
    ):
        raise ValueError("a session token must be a non-empty string without spaces")
    return token


def _public_info(info: SessionInfo) -> SessionInfo:
    """``info`` without the token a :class:`SpawnResult` carries (so its repr can be shown)."""
    if isinstance(info, SpawnResult):
        return SessionInfo.model_validate(info.model_dump(exclude={"token"}))
    return info


class AsyncSessions:
    """``client.sessions``: sessions are conversations pinned to one instance, durable in the
    orchestrator. Calls here use the client's API key; the :class:`AsyncSession` handles that
    :meth:`spawn` and :meth:`session` return use their session token when they hold one."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={_display_url(self._client.url)!r}>"

    async def spawn(
        self,
        session_id: str | None = None,
        *,
        instance: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | str | None = None,
        failover: FailoverMode = "none",
        policy: str | None = None,
    ) -> AsyncSession:
        """Create a session (id generated when None) and return its handle, holding the token
        the server shows this once; :class:`~.errors.SessionExistsError` if the id is taken."""
        if session_id is not None:
            _session_path(session_id)
        body = _body(
            sessionId=session_id,
            instance=instance,
            metadata=None if metadata is None else dict(metadata),
            ttl=_seconds(ttl, "ttl"),
            failover=failover,
            policy=policy,
        )
        data = await self._client._request("POST", f"{SESSIONS_PATH}/spawn", body=body)
        spawned = parse_reply(SpawnResult, data)
        return AsyncSession(self, spawned.session_id, token=spawned.token, info=spawned)

    async def send(
        self,
        session_id: str,
        data: Any = None,
        *,
        timeout: float | str | None = None,  # server-side deadline
        idempotency_key: str | None = None,
    ) -> SendResult:
        """Deliver ``data`` (``None`` sends ``{}``) to the session's instance, in order; the
        reply comes back once it is durably recorded."""
        return await self._send(session_id, data, timeout, idempotency_key, token=None)

    async def history(
        self, session_id: str, *, offset: int = 0, limit: int = DEFAULT_HISTORY_PAGE
    ) -> HistoryPage:
        """One page of the session's history, oldest first; ``next_offset`` is None at the end."""
        return await self._history(session_id, offset, limit, token=None)

    def iter_history(
        self, session_id: str, *, offset: int = 0, page_size: int = DEFAULT_HISTORY_PAGE
    ) -> AsyncGenerator[HistoryEntry, None]:
        """Every history entry from ``offset`` on, fetching pages of ``page_size`` as needed."""
        return self._iter_history(session_id, offset, page_size, token=None)

    async def list(
        self,
        *,
        instance: str | None = None,
        state: SessionState | None = None,
        active_within: float | None = None,  # minutes
    ) -> builtins.list[SessionInfo]:
        """Sessions, filtered by instance, state and activity within the last N minutes."""
        params = _body(
            instance=instance,
            state=state,
            active_within=None if active_within is None else f"{active_within:g}",
        )
        data = await self._client._request("GET", SESSIONS_PATH, params=params)
        return parse_reply(SessionList, data).sessions

    async def get(self, session_id: str) -> SessionInfo:
        """One session's state; :class:`~.errors.NotFoundError` when it is unknown."""
        return await self._get(session_id, token=None)

    async def close(self, session_id: str) -> SessionInfo:
        """Close the session (after any send in flight); closing it again is harmless."""
        return await self._close(session_id, token=None)

    def session(self, session_id: str, token: str | None = None) -> AsyncSession:
        """A handle to an existing session, without a request; with ``token`` its calls send
        that token instead of the client's API key."""
        _session_path(session_id)
        return AsyncSession(self, session_id, token=_check_token(token))

    # -- shared by the namespace (API key) and the handles (their token) -------------------

    async def _send(
        self,
        session_id: str,
        data: Any,
        timeout: float | str | None,
        idempotency_key: str | None,
        *,
        token: str | None,
    ) -> SendResult:
        deadline = _seconds(timeout, "timeout")
        reply = await self._client._request(
            "POST",
            _session_path(session_id, "send"),
            body=_body(data={} if data is None else data, timeout=deadline),
            deadline=deadline,
            idempotency_key=idempotency_key,
            token=token,
        )
        return parse_reply(SendResult, reply)

    async def _history(
        self, session_id: str, offset: int, limit: int, *, token: str | None
    ) -> HistoryPage:
        path = _session_path(session_id, "history")
        params = {"offset": str(offset), "limit": str(limit)}
        data = await self._client._request("GET", path, params=params, token=token)
        return parse_reply(HistoryPage, data)

    async def _iter_history(
        self, session_id: str, offset: int, page_size: int, *, token: str | None
    ) -> AsyncGenerator[HistoryEntry, None]:
        next_offset: int | None = offset
        while next_offset is not None:
            page = await self._history(session_id, next_offset, page_size, token=token)
            for entry in page.messages:
                yield entry
            if page.next_offset is not None and page.next_offset <= next_offset:
                raise OrchestratorError(
                    "the orchestrator sent a history page that does not advance"
                )
            next_offset = page.next_offset

    async def _get(self, session_id: str, *, token: str | None) -> SessionInfo:
        data = await self._client._request("GET", _session_path(session_id), token=token)
        return parse_reply(SessionInfo, data)

    async def _close(self, session_id: str, *, token: str | None) -> SessionInfo:
        path = _session_path(session_id, "close")
        data = await self._client._request("POST", path, token=token)
        return parse_reply(SessionInfo, data)


class AsyncSession:
    """A handle to one session: ``send``, ``history``, ``close``; ``async with`` closes it.

    ``token`` is the session token (None for a handle opened by id with the API key); when
    set, every call sends it instead of the client's key. It never appears in the repr.
    ``info`` is the last :class:`SessionInfo` seen (from spawn, :meth:`get` or :meth:`close`),
    without the token.
    """

    def __init__(
        self,
        sessions: AsyncSessions,
        session_id: str,
        *,
        token: str | None = None,
        info: SessionInfo | None = None,
    ) -> None:
        self._sessions = sessions
        self._id = session_id
        self._token = token
        self.info = None if info is None else _public_info(info)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self._id!r}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the session unless it is known closed; already closed or gone is fine."""
        if self.is_closed:
            return
        with suppress(SessionClosedError, NotFoundError, *self._token_refusals()):
            await self.close()

    @property
    def id(self) -> str:
        """The session id."""
        return self._id

    @property
    def token(self) -> str | None:
        """The session token, or None when this handle uses the client's API key."""
        return self._token

    @property
    def is_closed(self) -> bool:
        """Whether the last state seen is ``closed`` or ``expired``."""
        return self.info is not None and self.info.state != "open"

    async def send(
        self,
        data: Any = None,
        *,
        timeout: float | str | None = None,  # server-side deadline
        idempotency_key: str | None = None,
    ) -> SendResult:
        """See :meth:`AsyncSessions.send`."""
        return await self._sessions._send(
            self._id, data, timeout, idempotency_key, token=self._token
        )

    async def history(self, *, offset: int = 0, limit: int = DEFAULT_HISTORY_PAGE) -> HistoryPage:
        """See :meth:`AsyncSessions.history`."""
        return await self._sessions._history(self._id, offset, limit, token=self._token)

    def iter_history(
        self, *, offset: int = 0, page_size: int = DEFAULT_HISTORY_PAGE
    ) -> AsyncGenerator[HistoryEntry, None]:
        """See :meth:`AsyncSessions.iter_history`."""
        return self._sessions._iter_history(self._id, offset, page_size, token=self._token)

    async def get(self) -> SessionInfo:
        """The session's current state (also kept in :attr:`info`)."""
        self.info = await self._sessions._get(self._id, token=self._token)
        return self.info

    async def close(self) -> SessionInfo:
        """Close the session; the closed :class:`SessionInfo` is kept in :attr:`info`."""
        self.info = await self._sessions._close(self._id, token=self._token)
        return self.info

    def _token_refusals(self) -> tuple[type[OrchestratorError], ...]:
        """A token stops granting anything once its session is closed or expired (401)."""
        return (UnauthorizedError,) if self._token is not None else ()


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
        self._sessions = Sessions(self)

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

    @property
    def sessions(self) -> Sessions:
        """See :attr:`AsyncClient.sessions`; the same calls, synchronous."""
        return self._sessions

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
        attempt_timeout: float | str | None = None,
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
                attempt_timeout=attempt_timeout,
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
        attempt_timeout: float | str | None = None,
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
                attempt_timeout=attempt_timeout,
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
        attempt_timeout: float | str | None = None,
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
            attempt_timeout=attempt_timeout,
        )
        return self._iterate(stream)

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

    def _iterate(self, stream: AsyncGenerator[T, None]) -> Iterator[T]:
        """Drive ``stream`` one item per ``next()`` on the private loop; closed when done."""
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
        task = self._loop.create_task(awaitable)
        try:
            return self._loop.run_until_complete(task)
        except BaseException:  # Ctrl-C stops the loop mid-call: unwind the call, then raise
            if not task.done():
                task.cancel()
                try:
                    self._loop.run_until_complete(task)
                except BaseException:  # noqa: S110  # its cancellation, or a second Ctrl-C
                    pass
            raise


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Sessions:
    """``Client.sessions``: :class:`AsyncSessions` driven on the client's private loop."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={_display_url(self._client.url)!r}>"

    @property
    def _async(self) -> AsyncSessions:
        return self._client._client.sessions

    def spawn(
        self,
        session_id: str | None = None,
        *,
        instance: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | str | None = None,
        failover: FailoverMode = "none",
        policy: str | None = None,
    ) -> Session:
        """See :meth:`AsyncSessions.spawn`."""
        handle = self._client._run(
            self._async.spawn(
                session_id,
                instance=instance,
                metadata=metadata,
                ttl=ttl,
                failover=failover,
                policy=policy,
            )
        )
        return Session(self._client, handle)

    def send(
        self,
        session_id: str,
        data: Any = None,
        *,
        timeout: float | str | None = None,
        idempotency_key: str | None = None,
    ) -> SendResult:
        """See :meth:`AsyncSessions.send`."""
        return self._client._run(
            self._async.send(session_id, data, timeout=timeout, idempotency_key=idempotency_key)
        )

    def history(
        self, session_id: str, *, offset: int = 0, limit: int = DEFAULT_HISTORY_PAGE
    ) -> HistoryPage:
        """See :meth:`AsyncSessions.history`."""
        return self._client._run(self._async.history(session_id, offset=offset, limit=limit))

    def iter_history(
        self, session_id: str, *, offset: int = 0, page_size: int = DEFAULT_HISTORY_PAGE
    ) -> Iterator[HistoryEntry]:
        """See :meth:`AsyncSessions.iter_history`; pages are fetched as you iterate."""
        stream = self._async.iter_history(session_id, offset=offset, page_size=page_size)
        return self._client._iterate(stream)

    def list(
        self,
        *,
        instance: str | None = None,
        state: SessionState | None = None,
        active_within: float | None = None,
    ) -> builtins.list[SessionInfo]:
        """See :meth:`AsyncSessions.list`."""
        return self._client._run(
            self._async.list(instance=instance, state=state, active_within=active_within)
        )

    def get(self, session_id: str) -> SessionInfo:
        """See :meth:`AsyncSessions.get`."""
        return self._client._run(self._async.get(session_id))

    def close(self, session_id: str) -> SessionInfo:
        """See :meth:`AsyncSessions.close`."""
        return self._client._run(self._async.close(session_id))

    def session(self, session_id: str, token: str | None = None) -> Session:
        """See :meth:`AsyncSessions.session`."""
        return Session(self._client, self._async.session(session_id, token))


class Session:
    """A handle to one session (see :class:`AsyncSession`); ``with`` closes it on exit."""

    def __init__(self, client: Client, handle: AsyncSession) -> None:
        self._client = client
        self._handle = handle

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client._run(self._handle.__aexit__(exc_type, exc, tb))

    @property
    def id(self) -> str:
        """The session id."""
        return self._handle.id

    @property
    def token(self) -> str | None:
        """The session token, or None when this handle uses the client's API key."""
        return self._handle.token

    @property
    def info(self) -> SessionInfo | None:
        """The last :class:`SessionInfo` seen, without the token."""
        return self._handle.info

    @property
    def is_closed(self) -> bool:
        """Whether the last state seen is ``closed`` or ``expired``."""
        return self._handle.is_closed

    def send(
        self,
        data: Any = None,
        *,
        timeout: float | str | None = None,
        idempotency_key: str | None = None,
    ) -> SendResult:
        """See :meth:`AsyncSessions.send`."""
        return self._client._run(
            self._handle.send(data, timeout=timeout, idempotency_key=idempotency_key)
        )

    def history(self, *, offset: int = 0, limit: int = DEFAULT_HISTORY_PAGE) -> HistoryPage:
        """See :meth:`AsyncSessions.history`."""
        return self._client._run(self._handle.history(offset=offset, limit=limit))

    def iter_history(
        self, *, offset: int = 0, page_size: int = DEFAULT_HISTORY_PAGE
    ) -> Iterator[HistoryEntry]:
        """See :meth:`AsyncSessions.iter_history`; pages are fetched as you iterate."""
        return self._client._iterate(self._handle.iter_history(offset=offset, page_size=page_size))

    def get(self) -> SessionInfo:
        """See :meth:`AsyncSession.get`."""
        return self._client._run(self._handle.get())

    def close(self) -> SessionInfo:
        """See :meth:`AsyncSession.close`."""
        return self._client._run(self._handle.close())
