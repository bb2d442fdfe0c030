"""The two :class:`~.base.InstanceTransport` implementations, one chosen at start-up
(``instances.transport``), the way uvicorn picks h11 or httptools behind one interface.

``AiohttpTransport`` sends every exchange through the process's shared aiohttp session.

``LeanTransport`` (the default) sends the protocol's hot request — a small JSON ``POST``
(a task, a session message) to a plain ``http://`` instance URL — through
:class:`~.lean.LeanHttp` (httptools, several times less CPU per request than aiohttp),
and hands everything else to the ``AiohttpTransport`` it is built with, as
:meth:`LeanTransport.lean_target` decides::

    POST, body under STREAM_FROM_BYTES, X-Deadline-Ms   \\
    http:// URL without userinfo, query or fragment      >-> LeanHttp
    Authorization and X-Request-ID sendable verbatim    /
    anything else (GET, PUT, DELETE, https://, big body) -> aiohttp

Both send the protocol's headers (JSON content type, ``X-Deadline-Ms``, ``X-Request-ID``,
the instance's bearer credential, a delivery's ``X-Orchestrator-Hops``, a fenced session
call's ``X-Session-Epoch`` and ``X-Session-Seq``, and with tracing on the W3C
``traceparent``/``tracestate`` of the attempt's span), report a fenced reply's
``X-Session-Replayed: true`` (``Reply.replayed``), check every connect against
``instances.allow``/``deny``, read a reply only up to ``max_reply`` bytes
(``reply_too_large`` past it) and translate transport failures into the same errors
(:func:`~.base.client_error`, :func:`~.lean.lean_error`). Every URL is the instance's URL
plus a path, built by :func:`~.base.request_url`, which cannot leave the instance's host
and port.

A streamed exchange (protocol v1.3) goes the same way: :meth:`LeanTransport.stream` where
the lean client can send it, else :meth:`AiohttpTransport.stream` (the relay of issue 12
reads every chunk through it, so it is a hot path too); with a caller that takes deltas at
once (:class:`~.base.DeltaNow`), the lean connection hands them on in its own callback
(:class:`~.event_tap.EventTap`). Any exchange whose
awaiting task is cancelled closes its connection (the lean client's too), never pooling it.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import aiohttp
from yarl import URL

from ...domain.addresses import AddressPolicy
from ...models import InstanceSpec
from ...sdk.bodies import STREAM_FROM_BYTES, outgoing_body
from ...settings import DEFAULT_MAX_CONNECTIONS
from ..delegation import HOPS_HEADER, MAX_HOPS_VALUE
from ..observability.tracing import TRACEPARENT, TRACESTATE, outgoing_trace
from .base import (
    REQUEST_ID_HEADER,
    Delta,
    DeltaError,
    Fence,
    InstanceRequest,
    InstanceTransport,
    Reply,
    map_client_errors,
    read_reply,
    read_stream,
    request_url,
    stream_error,
    stream_events,
)
from .event_tap import EventTap
from .lean import LeanHttp, Take, Target, lean_error

__all__ = [
    "DEADLINE_HEADER",
    "EPOCH_HEADER",
    "EVENT_STREAM",
    "REPLAYED_HEADER",
    "SEQ_HEADER",
    "SESSIONS_PATH",
    "TRANSPORTS",
    "AiohttpTransport",
    "LeanTransport",
    "TransportKind",
    "lean_base",
    "open_transport",
]

DEADLINE_HEADER = "X-Deadline-Ms"
EVENT_STREAM = "text/event-stream"
EPOCH_HEADER = "X-Session-Epoch"
SEQ_HEADER = "X-Session-Seq"
REPLAYED_HEADER = "X-Session-Replayed"
SESSIONS_PATH = "/api/instance/sessions"
TransportKind = Literal["lean", "aiohttp"]
TRANSPORTS: tuple[TransportKind, ...] = ("lean", "aiohttp")

_BASE_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_HOPS_TEXT = tuple(str(n) for n in range(MAX_HOPS_VALUE + 2))
"""Every count a delivery may send (one more than the largest accepted), as text: the
lookup costs a third of formatting it on every task."""
_HOPS_LINES = tuple(f"{HOPS_HEADER}: {n}\r\n" for n in _HOPS_TEXT)
_MAX_CACHED_URLS = 4096


def open_transport(
    kind: TransportKind,
    session: aiohttp.ClientSession,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    address_policy: AddressPolicy | None = None,
) -> InstanceTransport:
    """The ``kind`` transport over ``session`` (which the caller keeps and closes); the lean
    one opens its own connection pools, closed by its ``aclose()``."""
    aiohttp_transport = AiohttpTransport(session)
    if kind == "aiohttp":
        return aiohttp_transport
    if kind == "lean":
        lean = LeanHttp(max_connections=max_connections, address_policy=address_policy)
        return LeanTransport(lean, fallback=aiohttp_transport)
    raise ValueError(f"unknown instance transport {kind!r}; one of {', '.join(TRANSPORTS)}")


class AiohttpTransport:
    """Every exchange through a shared ``aiohttp.ClientSession`` it does not own."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._urls: dict[tuple[str, str], URL] = {}

    def __repr__(self) -> str:
        return f"<AiohttpTransport [urls cached: {len(self._urls)}]>"

    async def exchange(self, request: InstanceRequest) -> Reply:
        """One request; its reply read up to ``max_reply`` bytes (see the module docstring)."""
        instance, body = request.instance, request.body
        with map_client_errors(instance.name):
            async with self._session.request(
                request.method,
                self._url(instance, request.path),
                data=None if body is None else outgoing_body(body),
                headers=_headers(request),
                timeout=aiohttp.ClientTimeout(total=request.timeout),
                allow_redirects=False,
            ) as resp:
                try:
                    raw = await read_reply(resp, instance.name, request.max_reply)
                except asyncio.CancelledError:
                    resp.close()  # abandoned: never pooled with a reply still coming
                    raise
                replayed = request.fence is not None and _is_replayed(resp)
                return Reply(resp.status, resp.headers.get("Retry-After"), raw, replayed)

    async def stream(self, request: InstanceRequest, on_delta: Delta) -> Reply:
        """:meth:`exchange`, asking for a streamed reply (protocol v1.3): a 2xx
        ``text/event-stream`` is read by :func:`~.base.read_stream` (each delta awaited by
        ``on_delta``, the final event as the reply); any other reply as :meth:`exchange`
        reads it. Abandoned (cancelled), the connection is closed."""
        instance, body = request.instance, request.body
        headers = _headers(request)
        headers["Accept"] = EVENT_STREAM
        with map_client_errors(instance.name):
            async with self._session.request(
                request.method,
                self._url(instance, request.path),
                data=None if body is None else outgoing_body(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=request.timeout),
                allow_redirects=False,
            ) as resp:
                try:
                    return await _read_any(resp, request, on_delta)
                except BaseException:
                    resp.close()  # a broken, abandoned or unread stream is never pooled
                    raise

    def _url(self, instance: InstanceSpec, path: str) -> URL:
        """``path`` (percent-encoded) on ``instance``; a session path reuses the cached URL
        of the sessions prefix (ids are many, each used for a while)."""
        if path.startswith(SESSIONS_PATH + "/"):
            prefix = self._cached_url(instance, SESSIONS_PATH)
            return URL(f"{prefix}{path[len(SESSIONS_PATH) :]}", encoded=True)
        return self._cached_url(instance, path)

    def _cached_url(self, instance: InstanceSpec, path: str) -> URL:
        """:func:`~.base.request_url` (InstanceError when it cannot be built), cached:
        parsing costs more than the lookup."""
        key = (instance.url, path)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= _MAX_CACHED_URLS:  # instances come and go by registration
                self._urls.clear()
            url = self._urls[key] = request_url(instance, path)
        return url

    async def aclose(self) -> None:
        """Nothing to close: the session belongs to the caller."""


class LeanTransport:
    """The hot POSTs through :class:`~.lean.LeanHttp`, the rest through ``fallback`` (see
    the module docstring); owns and closes ``lean``, not ``fallback``."""

    def __init__(self, lean: LeanHttp, *, fallback: InstanceTransport) -> None:
        self._lean = lean
        self._fallback = fallback
        self._bases: dict[str, tuple[str, int, bytes, bytes] | None] = {}
        self._targets: dict[tuple[str, str], Target | None] = {}

    def __repr__(self) -> str:
        return f"<LeanTransport {self._lean!r} fallback={self._fallback!r}>"

    def lean_target(self, request: InstanceRequest) -> Target | None:
        """Where the lean client sends ``request``; None when the fallback must (anything
        but a small POST with a deadline to a plain ``http://`` URL). Cached per URL and
        path: a fanout sends the same task path to every instance."""
        body = request.body
        if request.method != "POST" or body is None or len(body) >= STREAM_FROM_BYTES:
            return None
        if not request.deadline:
            return None
        base, path = request.instance.url, request.path
        key = (base, path)
        if key in self._targets:
            return self._targets[key]
        if base not in self._bases:
            if len(self._bases) >= _MAX_CACHED_URLS:
                self._bases.clear()
            self._bases[base] = lean_base(base)
        parts = self._bases[base]
        target: Target | None = None
        if parts is not None:
            host, port, authority, prefix = parts
            target = Target(host, port, prefix + path.encode(), authority)
        if len(self._targets) >= _MAX_CACHED_URLS:  # session paths are many
            self._targets.clear()
        self._targets[key] = target
        return target

    async def exchange(self, request: InstanceRequest) -> Reply:
        """Through the lean client when :meth:`lean_target` and the headers allow, else
        through the fallback."""
        target = self.lean_target(request)
        body = request.body
        if target is not None and body is not None:
            headers = _header_lines(request)
            if headers is not None:
                try:
                    return await self._lean.post(
                        target,
                        headers,
                        body,
                        timeout=request.timeout,
                        max_reply=request.max_reply,
                    )
                except Exception as exc:
                    translated = lean_error(exc, request.instance.name)
                    if translated is exc:
                        raise
                    raise translated from exc
        return await self._fallback.exchange(request)

    async def stream(self, request: InstanceRequest, on_delta: Delta) -> Reply | None:
        """:meth:`AiohttpTransport.stream` through the lean client; None when the lean
        client cannot send ``request`` (:meth:`lean_target`): the caller's aiohttp sends it."""
        target = self.lean_target(request)
        headers = None if target is None else _header_lines(request)
        if target is None or headers is None or request.body is None:
            return None
        name = request.instance.name
        now = getattr(on_delta, "now", None)  # a DeltaNow: deltas handed on by the tap
        tap = EventTap(name, now)

        async def read(take: Take) -> Reply:
            while (chunk := await take()) is not None:
                final = await stream_events(tap.events(chunk), name, on_delta)
                if final is not None:
                    return final
            raise stream_error(name, "the stream ended without a result or error event")

        try:
            return await self._lean.stream(
                target,
                headers,
                request.body,
                timeout=request.timeout,
                max_reply=request.max_reply,
                read=read,
                tap=None if now is None else tap,
            )
        except DeltaError:
            raise  # the caller's failure, not the instance's
        except Exception as exc:
            translated = lean_error(exc, name)
            if translated is exc:
                raise
            raise translated from exc

    async def aclose(self) -> None:
        """Close the lean pools; the fallback's session belongs to the caller."""
        await self._lean.aclose()
        await self._fallback.aclose()


def lean_base(base: str) -> tuple[str, int, bytes, bytes] | None:
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


async def _read_any(
    resp: aiohttp.ClientResponse, request: InstanceRequest, on_delta: Delta
) -> Reply:
    """A reply to a request that asked for a stream: streamed when it is a 2xx event
    stream, else whole, as :meth:`AiohttpTransport.exchange` reads it."""
    name, limit = request.instance.name, request.max_reply
    if 200 <= resp.status < 300 and resp.content_type == EVENT_STREAM:
        return await read_stream(resp, name, limit, on_delta)
    raw = await read_reply(resp, name, limit)
    replayed = request.fence is not None and _is_replayed(resp)
    return Reply(resp.status, resp.headers.get("Retry-After"), raw, replayed)


def _verbatim(value: str) -> bool:
    """Whether ``value`` can go out as a header value byte for byte."""
    return value.isascii() and "\r" not in value and "\n" not in value


def _is_replayed(resp: aiohttp.ClientResponse) -> bool:
    """Whether the instance answered from its memory of an earlier delivery (v1.2)."""
    return resp.headers.get(REPLAYED_HEADER, "").lower() == "true"


def _fence_lines(fence: Fence) -> str:
    """A fenced session call's ``X-Session-Epoch`` (and ``X-Session-Seq``) header lines."""
    lines = f"{EPOCH_HEADER}: {fence.epoch}\r\n"
    if fence.seq is not None:
        lines += f"{SEQ_HEADER}: {fence.seq}\r\n"
    return lines


def _headers(request: InstanceRequest) -> dict[str, str]:
    """The protocol's headers for aiohttp (which encodes them)."""
    headers = dict(_BASE_HEADERS)
    if request.deadline:
        headers[DEADLINE_HEADER] = str(int(request.timeout * 1000))
    if request.request_id is not None:
        headers[REQUEST_ID_HEADER] = request.request_id
    if request.hops is not None:
        headers[HOPS_HEADER] = _HOPS_TEXT[request.hops]
    fence = request.fence
    if fence is not None:
        headers[EPOCH_HEADER] = str(fence.epoch)
        if fence.seq is not None:
            headers[SEQ_HEADER] = str(fence.seq)
    credentials = request.instance.credentials
    if credentials is not None:
        headers["Authorization"] = f"Bearer {credentials.get_secret_value()}"
    trace = outgoing_trace()  # the attempt's span, when tracing is on
    if trace is not None:
        headers[TRACEPARENT] = trace[0]
        if trace[1] is not None:
            headers[TRACESTATE] = trace[1]
    return headers


def _header_lines(request: InstanceRequest) -> bytes | None:
    """The protocol's header lines for the lean client (which sends only requests with a
    deadline), or None when one of them could not go out verbatim (aiohttp then sends, and
    encodes, the request)."""
    lines = f"{DEADLINE_HEADER}: {int(request.timeout * 1000)}\r\n"
    request_id = request.request_id
    if request_id is not None:
        if not _verbatim(request_id):
            return None
        lines += f"{REQUEST_ID_HEADER}: {request_id}\r\n"
    hops = request.hops
    if hops is not None:
        lines += _HOPS_LINES[hops]
    credentials = request.instance.credentials
    if credentials is not None:
        value = f"Bearer {credentials.get_secret_value()}"
        if not _verbatim(value):
            return None
        lines += f"Authorization: {value}\r\n"
    if request.fence is not None:
        lines += _fence_lines(request.fence)
    trace = outgoing_trace()  # the attempt's span, when tracing is on
    if trace is not None:
        lines += f"{TRACEPARENT}: {trace[0]}\r\n"
        if trace[1] is not None and _verbatim(trace[1]):
            lines += f"{TRACESTATE}: {trace[1]}\r\n"
    return lines.encode()
