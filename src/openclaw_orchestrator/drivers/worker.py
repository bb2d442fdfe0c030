"""The driver for our documented instance protocol (``docs/instance-protocol.md``).

It sits on every routed request, so the hot path is short: constant headers built once, the
body serialized by orjson straight to bytes, one ``ClientTimeout`` per call and the reply
read as bytes and parsed by orjson. Tasks and the session calls share one request function,
:meth:`WorkerDriver._exchange`, whose replies map to the error tree by status::

    2xx              -> the parsed body; tasks and session messages return body["result"]
                                                    (no "result": InstanceProtocolError)
    4xx but 429      -> InstanceRejectedError        the payload is wrong; never retried
    429, 5xx         -> InstanceError                upstream_status, retry_after
    anything else    -> InstanceProtocolError
    transport        -> map_client_errors()          refused: down, timeout, non-JSON

The two hot calls, a task and a session message, are small JSON POSTs; over ``http://``
they go through :class:`~.lean.LeanHttp` (a keep-alive HTTP/1.1 client on httptools, same
replies, same errors) instead of aiohttp, which costs several times the CPU per request.
Everything else — probes, restores, closes, large bodies, ``https://`` — goes through the
shared aiohttp session. Both clients check every connect against ``instances.allow`` and
``instances.deny`` (``address_not_allowed``), and every URL is the instance's URL plus a
path, built by :func:`~.base.request_url`, which cannot leave the instance's host and port.

Every reply, through either client, is read only up to the instance's ``max_reply_bytes``
(else the driver's default, ``instances.max_reply_bytes``): past it the connection is
dropped and the call fails with ``reply_too_large``.

A restore streams the history in pages of at most ``restore_page_bytes`` of JSON (a single
exchange larger than that goes alone): ``PUT`` with ``offset`` and ``final`` (protocol
v1.1, ``docs/instance-protocol.md``). A history that fits one page goes as one v1 ``PUT``,
so instances without paged restore still take it.

The bearer credential goes into a header and nowhere else: no message, log or repr.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from ..bodies import STREAM_FROM_BYTES, outgoing_body
from ..domain.addresses import AddressPolicy
from ..errors import (
    InstanceError,
    InstanceProtocolError,
    InstanceRejectedError,
    InvalidRequestError,
    TimeoutExceededError,
)
from ..models import InstanceSpec
from ..settings import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REPLY_BYTES
from .base import (
    REQUEST_ID_HEADER,
    History,
    ProbeResult,
    error_fields,
    exchanges,
    map_client_errors,
    read_reply,
    request_url,
)
from .lean import LeanHttp, Target, lean_error

__all__ = [
    "DEADLINE_HEADER",
    "DEFAULT_HEALTH_PATH",
    "DEFAULT_RESTORE_PAGE_BYTES",
    "SESSIONS_PATH",
    "TASK_PATH",
    "WorkerDriver",
    "encode_history",
    "encode_task",
    "parse_retry_after",
]

TASK_PATH = "/api/instance/task"
SESSIONS_PATH = "/api/instance/sessions"
DEFAULT_HEALTH_PATH = "/api/health/check"
DEADLINE_HEADER = "X-Deadline-Ms"
DEFAULT_RESTORE_PAGE_BYTES = 512 * 1024
"""JSON bytes of history per restore page: half the reference instance's 1 MiB body limit,
which the protocol asks every instance to accept at least."""

_BASE_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_MAX_CACHED_URLS = 4096


def encode_task(payload: Any) -> bytes:
    """The task body; a payload orjson cannot encode (an int over 64 bits) is the caller's."""
    try:
        return orjson.dumps({"payload": payload})
    except orjson.JSONEncodeError as exc:
        raise InvalidRequestError(
            f"payload: cannot encode as JSON: {exc}", field="payload"
        ) from exc


def encode_history(history: Sequence[tuple[Any, Any]]) -> bytes:
    """The body of a whole (v1) session restore: ``{"history": [{"payload", "result"}]}``."""
    return _restore_body([_encode_exchange(p, r) for p, r in history], 0, final=True)


def _encode_exchange(payload: Any, result: Any) -> bytes:
    """One history item, ``{"payload": ..., "result": ...}``, as JSON."""
    try:
        return orjson.dumps({"payload": payload, "result": result})
    except orjson.JSONEncodeError as exc:
        raise InvalidRequestError(
            f"history: cannot encode as JSON: {exc}", field="history"
        ) from exc


def _restore_body(items: list[bytes], offset: int, *, final: bool) -> bytes:
    """A restore page: v1's ``{"history": [...]}`` when it is the whole history, else with
    its ``offset`` (items staged before it) and whether it is the ``final`` one."""
    history = b"[" + b",".join(items) + b"]"
    if offset == 0 and final:
        return b'{"history":' + history + b"}"
    tail = b"true" if final else b"false"
    return b'{"history":%s,"offset":%d,"final":%s}' % (history, offset, tail)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (decimals allowed); None for an HTTP-date or garbage."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _reply_error(name: str, status: int, raw: bytes, retry_after: str | None) -> InstanceError:
    """The error for a non-2xx reply: rejected (4xx), retryable-looking (429/5xx) or protocol."""
    code, message = error_fields(raw)
    text = f"{name}: {message or f'HTTP {status}'}"
    details = {"upstream_code": code} if code else None
    if 400 <= status < 500 and status != 429:
        return InstanceRejectedError(text, instance=name, upstream_status=status, details=details)
    if status == 429 or 500 <= status < 600:
        return InstanceError(
            text,
            instance=name,
            upstream_status=status,
            retry_after=parse_retry_after(retry_after),
            details=details,
        )
    return InstanceProtocolError(
        f"{name}: unexpected HTTP {status}", instance=name, upstream_status=status
    )


def _segment(session_id: str) -> str:
    """A session id percent-encoded as one path segment."""
    segment = quote(session_id, safe=":")
    if segment in (".", ".."):  # a dot segment would be resolved away, not sent
        segment = segment.replace(".", "%2E")
    return segment


def _result(name: str, reply: Any) -> Any:
    """The ``result`` of a task or session message reply."""
    if not isinstance(reply, dict) or "result" not in reply:
        raise InstanceProtocolError(f"{name}: reply has no 'result' field", instance=name)
    return reply["result"]


def _lean_base(base: str) -> tuple[str, int, bytes, bytes] | None:
    """``(host, port, Host header, path prefix)`` of a plain ``http://`` base URL, else None
    (https, userinfo, a query: aiohttp handles those)."""
    try:
        url = URL(base.rstrip("/"))
    except ValueError:  # never valid (instance_url checks it): aiohttp's path reports it
        return None
    if url.scheme != "http" or url.user or url.password or url.query_string or url.fragment:
        return None
    host, port = url.raw_host, url.port
    if not host or port is None or not url.raw_path.isascii():
        return None
    authority = f"[{host}]" if ":" in host else host
    if url.explicit_port is not None:
        authority += f":{port}"
    return host, port, authority.encode(), url.raw_path.rstrip("/").encode()


def _verbatim(value: str) -> bool:
    """Whether ``value`` can go out as a header value byte for byte."""
    return value.isascii() and "\r" not in value and "\n" not in value


def _auth_line(instance: InstanceSpec) -> bytes | None:
    """The ``Authorization`` header line for ``instance`` (``b""`` without credentials),
    or None when the credentials could not go out verbatim."""
    if instance.credentials is None:
        return b""
    value = f"Bearer {instance.credentials.get_secret_value()}"
    return f"Authorization: {value}\r\n".encode() if _verbatim(value) else None


class WorkerDriver:
    """Talks instance protocol v1 over a shared ``aiohttp.ClientSession`` it does not own,
    and its own :class:`~.lean.LeanHttp` pool for tasks and session messages."""

    kind = "worker"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        lean: LeanHttp | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        restore_page_bytes: int = DEFAULT_RESTORE_PAGE_BYTES,
        address_policy: AddressPolicy | None = None,
    ) -> None:
        self._session = session
        self._urls: dict[tuple[str, str], URL] = {}
        self._owns_lean = lean is None
        if lean is None:
            lean = LeanHttp(max_connections=max_connections, address_policy=address_policy)
        self._lean = lean
        self._max_reply_bytes = max_reply_bytes
        self._restore_page_bytes = restore_page_bytes
        self._bases: dict[str, tuple[str, int, bytes, bytes] | None] = {}
        self._targets: dict[tuple[str, str], Target | None] = {}

    def _reply_limit(self, instance: InstanceSpec) -> int:
        """The most bytes of a reply read from ``instance``: its own limit, else ours."""
        return instance.max_reply_bytes or self._max_reply_bytes

    def _lean_target(self, base: str, path: str) -> Target | None:
        """Where the lean client sends ``base + path``; None when aiohttp must. Cached:
        a fanout sends the same task path to every instance."""
        key = (base, path)
        if key in self._targets:
            return self._targets[key]
        if base not in self._bases:
            if len(self._bases) >= _MAX_CACHED_URLS:
                self._bases.clear()
            self._bases[base] = _lean_base(base)
        parts = self._bases[base]
        target: Target | None = None
        if parts is not None:
            host, port, authority, prefix = parts
            target = Target(host, port, prefix + path.encode(), authority)
        if len(self._targets) >= _MAX_CACHED_URLS:  # session paths are many
            self._targets.clear()
        self._targets[key] = target
        return target

    async def _post_lean(
        self, instance: InstanceSpec, target: Target, body: bytes, timeout: float, request_id: str
    ) -> Any | None:
        """The parsed 2xx body of a POST through the lean client, like :meth:`_exchange`;
        None (nothing sent) when a header cannot go out verbatim."""
        auth = _auth_line(instance)
        if auth is None or not _verbatim(request_id):
            return None
        headers = (
            f"{DEADLINE_HEADER}: {int(timeout * 1000)}\r\n{REQUEST_ID_HEADER}: {request_id}\r\n"
        ).encode() + auth
        try:
            reply = await self._lean.post(
                target, headers, body, timeout=timeout, max_reply=self._reply_limit(instance)
            )
            if not 200 <= reply.status < 300:
                raise _reply_error(instance.name, reply.status, reply.body, reply.retry_after)
            return orjson.loads(reply.body)
        except Exception as exc:
            translated = lean_error(exc, instance.name)
            if translated is exc:
                raise
            raise translated from exc

    async def _post(
        self,
        instance: InstanceSpec,
        path: str,
        body: bytes,
        *,
        timeout: float,
        request_id: str,
    ) -> Any:
        """A protocol POST of ``body`` to ``instance.url + path`` (``path`` already encoded):
        lean when it can be, else aiohttp; the parsed 2xx body either way."""
        target = self._lean_target(instance.url, path) if len(body) < STREAM_FROM_BYTES else None
        if target is not None:
            reply = await self._post_lean(instance, target, body, timeout, request_id)
            if reply is not None:
                return reply
        if path.startswith(SESSIONS_PATH):  # as _session_url builds it
            url = URL(
                f"{self._url(instance, SESSIONS_PATH)}{path[len(SESSIONS_PATH) :]}",
                encoded=True,
            )
        else:
            url = self._url(instance, path)
        return await self._exchange(
            "POST", instance, url, body, timeout=timeout, request_id=request_id
        )

    def _url(self, instance: InstanceSpec, path: str) -> URL:
        """The URL of ``path`` on ``instance`` (:func:`~.base.request_url`: InstanceError
        when it cannot be built), cached: parsing costs more than the lookup."""
        key = (instance.url, path)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= _MAX_CACHED_URLS:  # instances come and go by registration
                self._urls.clear()
            url = self._urls[key] = request_url(instance, path)
        return url

    def _session_url(self, instance: InstanceSpec, session_id: str, suffix: str = "") -> URL:
        """``{url}/api/instance/sessions/{id}{suffix}`` with the id percent-encoded as one
        segment; only the prefix is cached (ids are many, each used for a while)."""
        segment = _segment(session_id)
        return URL(f"{self._url(instance, SESSIONS_PATH)}/{segment}{suffix}", encoded=True)

    @staticmethod
    def _headers(instance: InstanceSpec, extra: dict[str, str]) -> dict[str, str]:
        headers = {**_BASE_HEADERS, **extra}
        if instance.credentials is not None:
            headers["Authorization"] = f"Bearer {instance.credentials.get_secret_value()}"
        return headers

    async def _exchange(
        self,
        method: str,
        instance: InstanceSpec,
        url: URL,
        body: bytes | None,
        *,
        timeout: float,
        request_id: str | None,
    ) -> Any:
        """One call to ``instance`` with the protocol's headers; the parsed 2xx body.

        ``timeout`` bounds the call and goes out as ``X-Deadline-Ms``; any non-2xx reply or
        transport failure is raised as the error tree says (module docstring).
        """
        extra = {DEADLINE_HEADER: str(int(timeout * 1000))}
        if request_id is not None:
            extra[REQUEST_ID_HEADER] = request_id
        with map_client_errors(instance.name):
            async with self._session.request(
                method,
                url,
                data=None if body is None else outgoing_body(body),
                headers=self._headers(instance, extra),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                raw = await read_reply(resp, instance.name, self._reply_limit(instance))
                if not 200 <= resp.status < 300:
                    raise _reply_error(
                        instance.name, resp.status, raw, resp.headers.get("Retry-After")
                    )
            return orjson.loads(raw)

    async def invoke(
        self,
        instance: InstanceSpec,
        payload: Any,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
        request_id: str,
    ) -> Any:
        """``POST /api/instance/task`` with ``{"payload": ...}``; the instance's ``result``."""
        body = encode_task(payload)
        reply = await self._post(instance, TASK_PATH, body, timeout=timeout, request_id=request_id)
        return _result(instance.name, reply)

    async def session_send(
        self,
        instance: InstanceSpec,
        session_id: str,
        payload: Any,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
        request_id: str,
    ) -> Any:
        """``POST /api/instance/sessions/{id}/messages``; the instance's ``result``."""
        path = f"{SESSIONS_PATH}/{_segment(session_id)}/messages"
        body = encode_task(payload)
        reply = await self._post(instance, path, body, timeout=timeout, request_id=request_id)
        return _result(instance.name, reply)

    async def session_restore(
        self,
        instance: InstanceSpec,
        session_id: str,
        history: History,
        *,
        timeout: float,  # InstanceDriver's signature; bounds every page together
        request_id: str,
    ) -> None:
        """``PUT /api/instance/sessions/{id}`` with the ``(payload, result)`` pairs to replay,
        in pages of at most ``restore_page_bytes`` (module docstring); only one page is held
        in memory at a time."""
        url = self._session_url(instance, session_id)
        deadline = asyncio.get_running_loop().time() + timeout
        page: list[bytes] = []
        size = offset = 0
        async for payload, result in exchanges(history):
            item = _encode_exchange(payload, result)
            if page and size + len(item) > self._restore_page_bytes:
                await self._restore_page(instance, url, page, offset, deadline, request_id)
                offset += len(page)
                page, size = [], 0
            page.append(item)
            size += len(item) + 1
        await self._restore_page(instance, url, page, offset, deadline, request_id, final=True)

    async def _restore_page(
        self,
        instance: InstanceSpec,
        url: URL,
        page: list[bytes],
        offset: int,
        deadline: float,
        request_id: str,
        *,
        final: bool = False,
    ) -> None:
        """One restore ``PUT``; a non-final page must be acknowledged as staged, which an
        instance without paged restore (it would have kept just this page) does not do."""
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutExceededError(
                f"instance {instance.name} did not take the restore in time",
                instance=instance.name,
            )
        body = _restore_body(page, offset, final=final)
        reply = await self._exchange(
            "PUT", instance, url, body, timeout=left, request_id=request_id
        )
        staged = reply.get("staged") if isinstance(reply, dict) else None
        if not final and staged != offset + len(page):
            raise InstanceProtocolError(
                f"{instance.name}: the history needs a paged restore (instance protocol v1.1) "
                f"and the instance did not stage page {offset}..{offset + len(page)}",
                instance=instance.name,
            )

    async def session_close(
        self,
        instance: InstanceSpec,
        session_id: str,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
    ) -> None:
        """``DELETE /api/instance/sessions/{id}``; an id the instance never saw is fine too."""
        url = self._session_url(instance, session_id)
        await self._exchange("DELETE", instance, url, None, timeout=timeout, request_id=None)

    async def probe(
        self,
        instance: InstanceSpec,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
    ) -> ProbeResult:
        """``GET`` the health path; a 2xx is alive, ``"status": "degraded"`` marks degraded."""
        url = self._url(instance, instance.health_path or DEFAULT_HEALTH_PATH)
        headers = self._headers(instance, {})
        started = time.perf_counter()
        with map_client_errors(instance.name):
            async with self._session.get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                raw = await read_reply(resp, instance.name, self._reply_limit(instance))
                if not 200 <= resp.status < 300:
                    raise InstanceError(
                        f"{instance.name}: health check answered HTTP {resp.status}",
                        instance=instance.name,
                        upstream_status=resp.status,
                    )
            body = orjson.loads(raw)
        latency = time.perf_counter() - started
        status = body.get("status") if isinstance(body, dict) else None
        degraded = status == "degraded"
        return ProbeResult(
            latency_s=latency, degraded=degraded, detail=status if degraded else None
        )

    async def aclose(self) -> None:
        """Close the lean pool if this driver made it; the session belongs to the caller."""
        if self._owns_lean:
            await self._lean.aclose()

    async def __aenter__(self) -> WorkerDriver:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<WorkerDriver kind={self.kind} urls_cached={len(self._urls)} lean={self._lean!r}>"
