"""The driver for our documented instance protocol (``docs/instance-protocol.md``).

It sits on every routed request, so the hot path is short: constant headers built once, the
body serialized by orjson straight to bytes, one ``ClientTimeout`` per call and the reply
read as bytes and parsed by orjson. Tasks and the session calls share one request function,
:meth:`WorkerDriver._exchange`, whose replies map to the error tree by status::

    2xx              -> the parsed body; tasks and session messages return body["result"]
                                                    (no "result": InstanceProtocolError)
    409 stale_epoch  -> StaleEpochError              a fenced session call (v1.2) from a
    409 stale_seq    -> StaleSeqError                sender behind the session's fence
    4xx but 429      -> InstanceRejectedError        the payload is wrong; never retried
    429, 5xx         -> InstanceError                upstream_status, retry_after
    anything else    -> InstanceProtocolError
    transport        -> the transport's translation  refused: down, timeout, overloaded
    a 2xx not JSON   -> InstanceProtocolError

Every exchange goes through the driver's :class:`~.base.InstanceTransport`, chosen at
start-up (``instances.transport``, :mod:`.instance_transport`): the lean httptools client for the
hot calls (a task, a session message) with aiohttp for the rest, or aiohttp for all. Both
check every connect against ``instances.allow`` and ``instances.deny``
(``address_not_allowed``), and every URL is the instance's URL plus a path, which cannot
leave the instance's host and port.

Every reply, through either transport, is read only up to the instance's
``max_reply_bytes`` (else the driver's default, ``instances.max_reply_bytes``): past it the
connection is dropped and the call fails with ``reply_too_large``.

A restore streams the history in pages of at most ``restore_page_bytes`` of JSON (a single
exchange larger than that goes alone): ``PUT`` with ``offset`` and ``final`` (protocol
v1.1, ``docs/instance-protocol.md``). A history that fits one page goes as one v1 ``PUT``,
so instances without paged restore still take it.

Tasks, session messages, restores and cancels carry ``X-Orchestrator-Hops``: one more than
the call being served came with (the loop guard, :mod:`..delegation`); probes and closes,
which run no agent, carry none.

A session call given a :class:`~.base.Fence` carries it as ``X-Session-Epoch`` and
``X-Session-Seq`` (protocol v1.2). A message the instance answers from its memory of an
earlier delivery of the same seq (``X-Session-Replayed: true``: the orchestrator died
between delivering and recording it) returns that result like any other, and is logged as
``drivers.session_replayed``.

A task or session message given ``on_delta`` asks for a streamed reply (protocol v1.3,
``Accept: text/event-stream``, through the transport's lean client when it has one and can
send the request, else aiohttp): each ``delta`` event is awaited by
``on_delta``, and the final ``result`` or ``error`` event maps exactly as the JSON reply
would; an instance that answers JSON simply gives no delta. A task or message whose
awaiting task is cancelled closes its connection and fires
``POST /api/instance/tasks/{request_id}/cancel`` (bounded by :data:`CANCEL_TIMEOUT`, never
awaited by the cancelled call, logged at debug when it fails).

The bearer credential goes into a header and nowhere else: no message, log or repr.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp
import orjson

from ...domain.addresses import AddressPolicy
from ...errors import (
    InstanceError,
    InstanceProtocolError,
    InstanceRejectedError,
    InvalidRequestError,
    StaleEpochError,
    StaleSeqError,
    TimeoutExceededError,
)
from ...models import InstanceSpec
from ...sdk.closing import AsyncClosesOnExit
from ...sdk.replies import decode_json
from ...settings import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REPLY_BYTES
from ..delegation import outgoing_hops
from ..logs import get_logger
from .base import (
    Delta,
    DeltaError,
    Fence,
    History,
    InstanceRequest,
    InstanceTransport,
    ProbeResult,
    Reply,
    error_fields,
    exchanges,
)
from .instance_transport import (
    DEADLINE_HEADER,
    SESSIONS_PATH,
    AiohttpTransport,
    LeanTransport,
    TransportKind,
    open_transport,
)

__all__ = [
    "CANCEL_TIMEOUT",
    "DEADLINE_HEADER",
    "DEFAULT_HEALTH_PATH",
    "DEFAULT_RESTORE_PAGE_BYTES",
    "SESSIONS_PATH",
    "TASKS_PATH",
    "TASK_PATH",
    "WorkerDriver",
    "encode_history",
    "encode_task",
    "parse_retry_after",
]

TASK_PATH = "/api/instance/task"
TASKS_PATH = "/api/instance/tasks"
"""Where a task in flight is cancelled: ``{TASKS_PATH}/{request_id}/cancel`` (v1.3)."""
CANCEL_TIMEOUT = 2.0
"""Seconds a cancel call (v1.3) may take; it is fire-and-forget, so nobody waits on it."""
_CANCEL_REPLY_BYTES = 64 * 1024
DEFAULT_HEALTH_PATH = "/api/health/check"
DEFAULT_RESTORE_PAGE_BYTES = 512 * 1024
"""JSON bytes of history per restore page: half the reference instance's 1 MiB body limit,
which the protocol asks every instance to accept at least."""

_log = get_logger("drivers.worker")
_FENCE_ERRORS: dict[str | None, type[InstanceError]] = {
    StaleEpochError.code: StaleEpochError,
    StaleSeqError.code: StaleSeqError,
}
"""The 409 codes of a fenced session call refused (protocol v1.2), by their own class."""


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
    if status == 409 and code in _FENCE_ERRORS:
        fenced = _FENCE_ERRORS[code]
        return fenced(text, instance=name, upstream_status=status, details=details)
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


def _segment(value: str) -> str:
    """``value`` percent-encoded as one path segment."""
    segment = quote(value, safe=":")
    if segment in (".", ".."):  # a dot segment would be resolved away, not sent
        segment = segment.replace(".", "%2E")
    return segment


def _session_path(session_id: str) -> str:
    """``/api/instance/sessions/{id}`` with the id percent-encoded as one path segment."""
    return f"{SESSIONS_PATH}/{_segment(session_id)}"


def _result(name: str, reply: Any) -> Any:
    """The ``result`` of a task or session message reply."""
    if not isinstance(reply, dict) or "result" not in reply:
        raise InstanceProtocolError(f"{name}: reply has no 'result' field", instance=name)
    return reply["result"]


def _reply_body(name: str, reply: Reply) -> Any:
    """The parsed body of instance ``name``'s 2xx ``reply``; any other raises its error."""
    if not 200 <= reply.status < 300:
        raise _reply_error(name, reply.status, reply.body, reply.retry_after)
    return decode_json(reply.body, _not_json, name)


def _not_json(exc: orjson.JSONDecodeError, name: str) -> InstanceProtocolError:
    """The error for a 2xx reply of instance ``name`` whose body is not JSON."""
    return InstanceProtocolError(
        f"instance {name} sent a reply that is not JSON: {exc}", instance=name
    )


def _log_replayed(name: str, path: str, request_id: str, fence: Fence | None) -> None:
    """Note a message the instance answered from its memory of an earlier delivery."""
    seq = None if fence is None else fence.seq
    _log.info("drivers.session_replayed", instance=name, path=path, seq=seq, request_id=request_id)


class _RestoreTarget(NamedTuple):
    """What every page of one restore shares: where it goes, by when, tagged and fenced how."""

    instance: InstanceSpec
    path: str
    deadline: float
    request_id: str
    fence: Fence | None


class WorkerDriver(AsyncClosesOnExit):
    """Talks instance protocol v1 through an :class:`~.base.InstanceTransport`: ``transport``
    names the kind to open over the shared ``aiohttp.ClientSession`` (which the driver does
    not own; the transport it opens it does), or is one already open (the caller's)."""

    kind = "worker"
    fences_sessions = True  # protocol v1.2 (docs/instance-protocol.md, "Fencing")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        transport: TransportKind | InstanceTransport = "lean",
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        restore_page_bytes: int = DEFAULT_RESTORE_PAGE_BYTES,
        address_policy: AddressPolicy | None = None,
    ) -> None:
        self._owns_transport = isinstance(transport, str)
        if isinstance(transport, str):
            transport = open_transport(
                transport,
                session,
                max_connections=max_connections,
                address_policy=address_policy,
            )
        self._transport = transport
        self._streams = AiohttpTransport(session)
        self._max_reply_bytes = max_reply_bytes
        self._restore_page_bytes = restore_page_bytes
        self._cancels: set[asyncio.Task[None]] = set()
        """Cancel calls in flight, held so they are not garbage-collected mid-call."""

    def _reply_limit(self, instance: InstanceSpec) -> int:
        """The most bytes of a reply read from ``instance``: its own limit, else ours."""
        return instance.max_reply_bytes or self._max_reply_bytes

    async def _exchange(self, request: InstanceRequest) -> Any:
        """One call through the transport; the parsed 2xx body.

        ``request.timeout`` bounds the call and goes out as ``X-Deadline-Ms``; any non-2xx
        reply or transport failure is raised as the error tree says (module docstring).
        """
        return _reply_body(request.instance.name, await self._transport.exchange(request))

    async def _run_task(
        self,
        instance: InstanceSpec,
        path: str,
        payload: Any,
        timeout: float,
        request_id: str,
        fence: Fence | None = None,
        on_delta: Delta | None = None,
    ) -> Any:
        """``POST`` ``{"payload": ...}`` to ``path``; the instance's ``result`` (a task or a
        session message: the protocol's hot request, so the transport is awaited here, not
        through :meth:`_exchange`, one coroutine fewer), streamed to ``on_delta`` when
        given. Abandoned (cancelled, or ``on_delta`` failed), the instance is told to stop
        (:meth:`_tell_cancelled`) and the cancellation goes on at once."""
        body = encode_task(payload)
        limit = self._reply_limit(instance)
        request = InstanceRequest(
            "POST", instance, path, body, timeout, request_id, limit, True, fence, outgoing_hops()
        )
        try:
            if on_delta is None:
                reply = await self._transport.exchange(request)
            else:
                reply = await self._stream(request, on_delta)
        except asyncio.CancelledError:
            self._tell_cancelled(instance, request_id)
            raise
        except DeltaError as exc:
            self._tell_cancelled(instance, request_id)
            raise exc.error from None
        if reply.replayed:
            _log_replayed(instance.name, path, request_id, fence)
        return _result(instance.name, _reply_body(instance.name, reply))

    async def _stream(self, request: InstanceRequest, on_delta: Delta) -> Reply:
        """A streamed exchange through the lean client when the transport is the lean one
        and can send it, else through aiohttp."""
        transport = self._transport
        if isinstance(transport, LeanTransport):
            reply = await transport.stream(request, on_delta)
            if reply is not None:
                return reply
        return await self._streams.stream(request, on_delta)

    async def invoke(
        self,
        instance: InstanceSpec,
        payload: Any,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
        request_id: str,
        on_delta: Delta | None = None,
    ) -> Any:
        """``POST /api/instance/task`` with ``{"payload": ...}``; the instance's ``result``
        (streamed, ``Accept: text/event-stream``, when ``on_delta`` is given)."""
        return await self._run_task(
            instance, TASK_PATH, payload, timeout, request_id, None, on_delta
        )

    async def session_send(
        self,
        instance: InstanceSpec,
        session_id: str,
        payload: Any,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
        request_id: str,
        fence: Fence | None = None,
        on_delta: Delta | None = None,
    ) -> Any:
        """``POST /api/instance/sessions/{id}/messages``; the instance's ``result`` (also
        when it answered from its memory of the same ``fence.seq``: module docstring),
        streamed to ``on_delta`` like :meth:`invoke`."""
        path = f"{_session_path(session_id)}/messages"
        return await self._run_task(instance, path, payload, timeout, request_id, fence, on_delta)

    def _tell_cancelled(self, instance: InstanceSpec, request_id: str) -> None:
        """Start the protocol's cancel call (v1.3) for the abandoned exchange ``request_id``;
        never awaited here, so the cancellation that caused it is not delayed."""
        task = asyncio.get_running_loop().create_task(self._cancel(instance, request_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel(self, instance: InstanceSpec, request_id: str) -> None:
        """``POST /api/instance/tasks/{request_id}/cancel`` within :data:`CANCEL_TIMEOUT`;
        a failure (an instance without the call answers 404) is only logged: the
        instance's own deadline ends the task anyway."""
        path = f"{TASKS_PATH}/{_segment(request_id)}/cancel"
        request = InstanceRequest(
            "POST",
            instance,
            path,
            None,
            CANCEL_TIMEOUT,
            request_id,
            _CANCEL_REPLY_BYTES,
            False,
            hops=outgoing_hops(),  # started from the abandoned call: its count
        )
        try:
            reply = await self._transport.exchange(request)
        except Exception as exc:
            _log.debug(
                "drivers.cancel_failed",
                instance=instance.name,
                request_id=request_id,
                error=type(exc).__name__,
            )
            return
        _log.debug(
            "drivers.cancel_sent",
            instance=instance.name,
            request_id=request_id,
            status=reply.status,
        )

    async def session_restore(
        self,
        instance: InstanceSpec,
        session_id: str,
        history: History,
        *,
        timeout: float,  # InstanceDriver's signature; bounds every page together
        request_id: str,
        fence: Fence | None = None,
    ) -> None:
        """``PUT /api/instance/sessions/{id}`` with the ``(payload, result)`` pairs to replay,
        in pages of at most ``restore_page_bytes`` (module docstring); only one page is held
        in memory at a time. Every page carries ``fence``."""
        path = _session_path(session_id)
        deadline = asyncio.get_running_loop().time() + timeout
        send = _RestoreTarget(instance, path, deadline, request_id, fence)
        page: list[bytes] = []
        size = offset = 0
        async for payload, result in exchanges(history):
            item = _encode_exchange(payload, result)
            if page and size + len(item) > self._restore_page_bytes:
                await self._restore_page(send, page, offset)
                offset += len(page)
                page, size = [], 0
            page.append(item)
            size += len(item) + 1
        await self._restore_page(send, page, offset, final=True)

    async def _restore_page(
        self, target: _RestoreTarget, page: list[bytes], offset: int, *, final: bool = False
    ) -> None:
        """One restore ``PUT``; a non-final page must be acknowledged as staged, which an
        instance without paged restore (it would have kept just this page) does not do."""
        instance, path = target.instance, target.path
        left = target.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutExceededError(
                f"instance {instance.name} did not take the restore in time",
                instance=instance.name,
            )
        body = _restore_body(page, offset, final=final)
        limit = self._reply_limit(instance)
        reply = await self._exchange(
            InstanceRequest(
                "PUT",
                instance,
                path,
                body,
                left,
                target.request_id,
                limit,
                fence=target.fence,
                hops=outgoing_hops(),
            )
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
        fence: Fence | None = None,
    ) -> None:
        """``DELETE /api/instance/sessions/{id}``; an id the instance never saw is fine too.
        With ``fence`` the instance keeps later stale calls of the session out."""
        path = _session_path(session_id)
        limit = self._reply_limit(instance)
        await self._exchange(
            InstanceRequest("DELETE", instance, path, None, timeout, None, limit, fence=fence)
        )

    async def probe(
        self,
        instance: InstanceSpec,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
    ) -> ProbeResult:
        """``GET`` the health path; a 2xx is alive, ``"status": "degraded"`` marks degraded."""
        path = instance.health_path or DEFAULT_HEALTH_PATH
        started = time.perf_counter()
        limit = self._reply_limit(instance)
        request = InstanceRequest("GET", instance, path, None, timeout, None, limit, deadline=False)
        reply = await self._transport.exchange(request)
        if not 200 <= reply.status < 300:
            raise InstanceError(
                f"{instance.name}: health check answered HTTP {reply.status}",
                instance=instance.name,
                upstream_status=reply.status,
            )
        body = decode_json(reply.body, _not_json, instance.name)
        latency = time.perf_counter() - started
        status = body.get("status") if isinstance(body, dict) else None
        degraded = status == "degraded"
        return ProbeResult(
            latency_s=latency, degraded=degraded, detail=status if degraded else None
        )

    async def aclose(self) -> None:
        """Let cancel calls in flight finish (within their bound; the rest are cancelled),
        then close the transport if this driver opened it; the session is the caller's."""
        if self._cancels:
            pending = set(self._cancels)
            _, late = await asyncio.wait(pending, timeout=CANCEL_TIMEOUT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._owns_transport:
            await self._transport.aclose()

    def __repr__(self) -> str:
        return f"<WorkerDriver kind={self.kind} transport={self._transport!r}>"
