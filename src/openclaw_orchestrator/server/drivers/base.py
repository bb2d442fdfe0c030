"""The seam between the orchestrator and the instances it drives.

One driver per kind of instance implements :class:`InstanceDriver`. The worker driver
reaches its instances through an :class:`InstanceTransport` (aiohttp, or the lean httptools
client: :mod:`.instance_transport`), chosen at start-up. Drivers (and the SDK
client) are the only modules that import aiohttp; they translate every transport failure
into the error tree of :mod:`openclaw_orchestrator.errors` in one place,
:func:`map_client_errors`, so the service never sees an aiohttp exception.

Two failures are never the instance's: running out of a local resource while connecting
(file descriptors, socket buffers, memory: :data:`LOCAL_RESOURCE_ERRNOS`) is the
orchestrator's :class:`~openclaw_orchestrator.errors.OverloadedError`, so the instance keeps
its health state. And every reply is read through :func:`read_reply`, which stops at the
instance's byte limit (:class:`~openclaw_orchestrator.errors.ReplyTooLargeError`), a
streamed one (protocol v1.3, ``text/event-stream``) through :func:`read_stream`, which
decodes it with :class:`SseDecoder` and hands each delta to the caller's :data:`Delta`.
"""

from __future__ import annotations

import errno
import json
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import aiohttp
import orjson
from yarl import URL

from ...domain.addresses import AddressRefused
from ...errors import (
    AddressNotAllowedError,
    InstanceDownError,
    InstanceError,
    InstanceProtocolError,
    OrchestratorError,
    OverloadedError,
    ReplyTooLargeError,
    TimeoutExceededError,
)
from ...instance_url import join_path
from ...models import InstanceSpec
from ...sse import SseDecoder, SseEvent
from ..logs import get_logger

__all__ = [
    "LOCAL_RESOURCE_ERRNOS",
    "OVERLOADED_RETRY_AFTER",
    "Delta",
    "DeltaBatch",
    "DeltaError",
    "DeltaNow",
    "Fence",
    "History",
    "InstanceDriver",
    "InstanceRequest",
    "InstanceTransport",
    "ProbeResult",
    "Reply",
    "SseDecoder",
    "SseEvent",
    "address_not_allowed",
    "client_error",
    "delta_value",
    "error_fields",
    "exchanges",
    "is_local_exhaustion",
    "map_client_errors",
    "overloaded_error",
    "read_reply",
    "read_stream",
    "reply_too_large",
    "request_failed",
    "request_url",
    "stream_error",
    "stream_event",
    "stream_events",
    "translating_errors",
]

REQUEST_ID_HEADER = "X-Request-ID"
log = get_logger("drivers")
History = Iterable[tuple[Any, Any]] | AsyncIterable[tuple[Any, Any]]
"""A session's ``(payload, result)`` pairs, oldest first; async when read from a store."""
LOCAL_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""Errors of this process or machine, not of the instance being connected to."""
OVERLOADED_RETRY_AFTER = 1.0
"""Seconds an ``overloaded`` answer tells the caller to wait (``Retry-After``)."""
Delta = Callable[[Any], Awaitable[None]]
"""Receives one piece of an instance's streamed output (a JSON value), in order."""


class DeltaBatch(Protocol):
    """A :data:`Delta` that also takes several pieces at once, in order: the pieces one read
    of a stream brought (:func:`stream_events`), so a relay that fell behind writes them to
    its client in one go instead of one write each."""

    async def __call__(self, delta: Any) -> None: ...

    async def many(self, deltas: list[Any]) -> None: ...


class DeltaNow(DeltaBatch, Protocol):
    """A :class:`DeltaBatch` that can also take pieces without an await: :meth:`now` takes
    them all and returns True, or takes none and returns False (the caller then awaits
    :meth:`many`). The lean client hands a stream's deltas on in its connection's own
    callback through it (:class:`~.event_tap.EventTap`)."""

    def now(self, deltas: list[Any]) -> bool: ...


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one health probe saw. ``degraded`` means alive but not fully able to serve."""

    latency_s: float
    degraded: bool = False
    detail: str | None = None


class Fence(NamedTuple):
    """What fences a session call off from a stale sender (instance protocol v1.2).

    ``epoch`` is the session's lease epoch, which the orchestrator bumps whenever a replica
    takes the lease and on migration and close: an instance refuses a call below the highest
    it has seen (:class:`~openclaw_orchestrator.errors.StaleEpochError`). ``seq`` is a
    message's position in the session's history (on a restore: where the history ends): a
    message sent again at the last position run is answered from the reply the instance
    kept, not run twice; one behind it is refused
    (:class:`~openclaw_orchestrator.errors.StaleSeqError`). None: no position sent.

    (A named tuple, as :class:`Reply`: made per call.)"""

    epoch: int
    seq: int | None = None


class InstanceDriver(Protocol):
    """Talks to one kind of instance. Implementations never raise anything but
    :class:`~openclaw_orchestrator.errors.OrchestratorError` subclasses.

    The ``session_*`` methods drive a conversation the instance remembers between requests;
    they raise what :meth:`invoke` raises, for the same reasons. Their ``fence`` (None: the
    call is not fenced, as before v1.2) is the session's :class:`Fence`; a driver whose
    instances cannot enforce it accepts it and says so.

    ``on_delta`` (:meth:`invoke`, :meth:`session_send`; None: exactly the plain call) asks
    the instance to stream its output: each piece is awaited in order (backpressure) before
    the call returns the same final result it would have returned without streaming. An
    instance that does not stream gives no delta, just the result.

    A call whose awaiting task is cancelled aborts its exchange (the connection is closed,
    never pooled) and tells the instance to stop where its kind allows, without delaying
    the cancellation.
    """

    kind: str
    fences_sessions: bool
    """Whether its instances enforce a :class:`Fence` (protocol v1.2): a redelivered
    message is answered from their memory, never run twice. Without it, a message whose
    sender died before recording it cannot be redelivered safely: it is recorded as
    interrupted instead."""

    async def invoke(
        self,
        instance: InstanceSpec,
        payload: Any,
        *,
        timeout: float,
        request_id: str,
        on_delta: Delta | None = None,
    ) -> Any:
        """Run ``payload`` on ``instance`` and return its result (any JSON value), handing
        each streamed piece of it to ``on_delta`` first when given."""
        ...

    async def session_send(
        self,
        instance: InstanceSpec,
        session_id: str,
        payload: Any,
        *,
        timeout: float,
        request_id: str,
        fence: Fence | None = None,
        on_delta: Delta | None = None,
    ) -> Any:
        """Send one message of session ``session_id`` (the instance creates the session on its
        first message) and return the result, streamed to ``on_delta`` like :meth:`invoke`."""
        ...

    async def session_restore(
        self,
        instance: InstanceSpec,
        session_id: str,
        history: History,
        *,
        timeout: float,
        request_id: str,
        fence: Fence | None = None,
    ) -> None:
        """Replace ``instance``'s state of the session with ``history``, ``(payload, result)``
        pairs oldest first, without re-running them (how a session migrates). ``history``
        is consumed as it is sent, so a long one is never held in memory whole."""
        ...

    async def session_close(
        self,
        instance: InstanceSpec,
        session_id: str,
        *,
        timeout: float,
        fence: Fence | None = None,
    ) -> None:
        """Make ``instance`` forget the session; closing an unknown session succeeds."""
        ...

    async def probe(self, instance: InstanceSpec, *, timeout: float) -> ProbeResult:
        """Check ``instance``'s health; raise ``InstanceDownError``/``TimeoutExceededError``
        /``InstanceError`` when it fails."""
        ...

    async def aclose(self) -> None:
        """Release what the driver owns (not the shared ``aiohttp.ClientSession``)."""
        ...


class Reply(NamedTuple):
    """A complete reply: status, ``Retry-After`` (as sent), the body, and whether it came
    with ``X-Session-Replayed: true`` (a session message answered from the instance's memory
    of an earlier delivery, protocol v1.2).

    (A named tuple: made per request, and a frozen dataclass costs three times as much.)"""

    status: int
    retry_after: str | None
    body: bytes
    replayed: bool = False


@dataclass(slots=True)
class InstanceRequest:
    """One exchange with an instance, built once per call and handed whole to the
    :class:`InstanceTransport` (as httpx hands its transports a ``Request``): ``body`` to
    ``instance``'s URL plus ``path``, within ``timeout`` seconds (sent as ``X-Deadline-Ms``
    when ``deadline``), tagged ``request_id``, its reply read up to ``max_reply`` bytes,
    fenced by ``fence`` (a session call's ``X-Session-Epoch``/``X-Session-Seq``) when given,
    and sent with ``X-Orchestrator-Hops: hops`` when given (a delivery: the loop guard of
    :mod:`..delegation`; probes and closes carry none).

    Anything more that should travel to the instance with every request is a field here,
    sent by each transport's header builder. Treat it as immutable; it is not frozen
    because it is made per request: a frozen dataclass costs six times as much to build,
    and a named tuple's fields read four times slower."""

    method: str
    instance: InstanceSpec
    path: str
    body: bytes | None
    timeout: float
    request_id: str | None
    max_reply: int
    deadline: bool = True
    fence: Fence | None = None
    hops: int | None = None


class InstanceTransport(Protocol):
    """How a driver's HTTP exchanges reach an instance (implementations:
    :mod:`.instance_transport`).

    An exchange sends an :class:`InstanceRequest`'s ``body`` to ``instance.url`` plus
    ``path`` (percent-encoded) with the instance protocol's headers (``X-Deadline-Ms`` when
    ``deadline``, ``X-Request-ID`` and ``X-Orchestrator-Hops`` when given, the instance's
    bearer credential), and returns
    the reply whatever its status, its body read up to ``max_reply`` bytes. Failures are
    the error tree's already: a refused connect is ``InstanceDownError``, the deadline
    ``TimeoutExceededError``, a refused address ``AddressNotAllowedError``, a long reply
    ``ReplyTooLargeError``, our own exhaustion ``OverloadedError`` (:func:`client_error`
    gives the whole table).
    """

    async def exchange(self, request: InstanceRequest) -> Reply:
        """One request and its reply, within ``request.timeout`` seconds all told."""
        ...

    async def aclose(self) -> None:
        """Release what the transport owns (not the shared ``aiohttp.ClientSession``)."""
        ...


async def exchanges(history: History) -> AsyncIterator[tuple[Any, Any]]:
    """``history``'s pairs one at a time, whichever kind of iterable it is."""
    if isinstance(history, AsyncIterable):
        async for pair in history:
            yield pair
    else:
        for pair in history:
            yield pair


def is_local_exhaustion(exc: BaseException) -> bool:
    """Whether ``exc`` says this process ran out of something (:data:`LOCAL_RESOURCE_ERRNOS`,
    or memory), rather than that the far end failed."""
    if isinstance(exc, OSError):
        return exc.errno in LOCAL_RESOURCE_ERRNOS
    return isinstance(exc, MemoryError)


def overloaded_error(exc: OSError | MemoryError, instance: str) -> OverloadedError:
    """The error for a local resource running out (:func:`is_local_exhaustion`) while
    reaching ``instance``: ours, retry later."""
    if isinstance(exc, OSError):
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    else:
        reason = "out of memory"
    return OverloadedError(
        f"the orchestrator is out of a local resource ({reason}) and could not reach "
        f"instance {instance}; retry later",
        instance=instance,
        retry_after=OVERLOADED_RETRY_AFTER,
    )


def reply_too_large(instance: str, limit: int) -> ReplyTooLargeError:
    """The error for a reply of ``instance`` over ``limit`` bytes (read no further)."""
    return ReplyTooLargeError(
        f"instance {instance} sent a reply over its limit of {limit} bytes (max_reply_bytes); "
        "reading stopped there",
        instance=instance,
        details={"max_reply_bytes": limit},
    )


async def read_reply(resp: aiohttp.ClientResponse, instance: str, limit: int) -> bytes:
    """The body of ``resp``, at most ``limit`` bytes: a declared ``Content-Length`` over it
    fails before anything is read, an undeclared body as soon as it passes it. Either way
    the connection is closed (never pooled with an unread body behind it)."""
    declared = resp.content_length
    if declared is not None:
        if declared > limit:
            resp.close()
            raise reply_too_large(instance, limit)
        return await resp.read()
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > limit:
            resp.close()
            raise reply_too_large(instance, limit)
    return bytes(body)


class DeltaError(Exception):
    """``on_delta`` raised ``error``: carried through a transport's error translation
    untouched (it is the caller's failure, not the instance's), and raised as it is."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"on_delta failed: {error!r}")
        self.error = error


async def read_stream(
    resp: aiohttp.ClientResponse, instance: str, limit: int, on_delta: Delta
) -> Reply:
    """A streamed reply (instance protocol v1.3): each ``delta`` event's value awaited by
    ``on_delta`` in order, then the final ``result`` event as a 200 :class:`Reply` holding
    its data (the JSON reply's body), or an ``error`` event as a reply of its ``status``.
    Over ``limit`` bytes all told is ``reply_too_large``; a stream that ends without either
    is ``instance_protocol``. The connection is closed unless the stream ended cleanly."""
    decoder, total = SseDecoder(), 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
        if total > limit:
            resp.close()
            raise reply_too_large(instance, limit)
        final = await stream_events(decoder.feed(chunk), instance, on_delta)
        if final is not None:
            return final
    raise stream_error(instance, "the stream ended without a result or error event")


async def stream_events(events: list[SseEvent], instance: str, on_delta: Delta) -> Reply | None:
    """The events one read completed, as :func:`stream_event` takes them; consecutive
    deltas go to ``on_delta.many`` together when it has one (:class:`DeltaBatch`: a relay
    that fell behind writes them to its client at once), every delta before a broken one
    handed on first. The final reply, if one of them was the last."""
    many = getattr(on_delta, "many", None)
    if many is None or len(events) < 2:
        for event in events:
            final = await stream_event(event, instance, on_delta)
            if final is not None:
                return final
        return None
    batch: list[Any] = []
    for event in events:
        if event.event == "delta":
            try:
                batch.append(delta_value(event, instance))
            except InstanceProtocolError:
                await _hand_on(many, batch)
                raise
            continue
        await _hand_on(many, batch)
        batch = []
        final = await stream_event(event, instance, on_delta)
        if final is not None:
            return final
    await _hand_on(many, batch)
    return None


async def _hand_on(many: Callable[[list[Any]], Awaitable[None]], batch: list[Any]) -> None:
    """``many(batch)`` unless it is empty; its failure is the caller's (DeltaError)."""
    if batch:
        try:
            await many(batch)
        except Exception as exc:
            raise DeltaError(exc) from exc


async def stream_event(event: SseEvent, instance: str, on_delta: Delta) -> Reply | None:
    """Hand a ``delta`` to ``on_delta``; the final reply a ``result`` or ``error`` makes;
    None for a delta or an event of a kind we do not know (later versions may add some)."""
    if event.event == "delta":
        value = delta_value(event, instance)
        try:
            await on_delta(value)
        except Exception as exc:
            raise DeltaError(exc) from exc
        return None
    if event.event == "result":
        return Reply(200, None, event.data)
    if event.event == "error":
        status = _event_object(event, instance).get("status")
        if type(status) is not int or not 400 <= status <= 599:
            raise stream_error(instance, "an error event has no 'status' from 400 to 599")
        return Reply(status, None, event.data)
    return None


def delta_value(event: SseEvent, instance: str) -> Any:
    """The value a ``delta`` event carries (``instance_protocol`` if it carries none)."""
    body = _event_object(event, instance)
    if "delta" not in body:
        raise stream_error(instance, "a delta event has no 'delta' field")
    return body["delta"]


def _event_object(event: SseEvent, instance: str) -> dict[str, Any]:
    """The JSON object an event's data must be."""
    try:
        body = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise stream_error(instance, f"a {event.event} event's data is not a JSON object")
    return body


def stream_error(instance: str, problem: str) -> InstanceProtocolError:
    """The error for a streamed reply that breaks the protocol."""
    return InstanceProtocolError(
        f"instance {instance} sent a broken stream: {problem}", instance=instance
    )


@contextmanager
def translating_errors(
    translate: Callable[[Exception, str], Exception], instance: str
) -> Iterator[None]:
    """Raise what ``translate`` makes of a failure, chained to it; the failure itself when
    ``translate`` gives it back (already ours, or not the transport's)."""
    try:
        yield
    except Exception as exc:
        translated = translate(exc, instance)
        if translated is exc:
            raise
        raise translated from exc


def map_client_errors(instance: str) -> AbstractContextManager[None]:
    """Translate aiohttp/asyncio failures into the orchestrator's errors (:func:`client_error`)."""
    return translating_errors(client_error, instance)


def client_error(exc: Exception, instance: str) -> Exception:
    """What :func:`map_client_errors` raises for ``exc``, most specific first; ``exc`` itself
    when it is already ours (or the caller's: :class:`DeltaError`), and
    :func:`request_failed` for what no rule names."""
    if isinstance(exc, OrchestratorError | DeltaError):
        return exc
    if isinstance(exc, OSError | MemoryError) and is_local_exhaustion(exc):
        return overloaded_error(exc, instance)  # ClientOSError and its kin are OSErrors
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return TimeoutExceededError(
            f"instance {instance} did not answer in time", instance=instance
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return InstanceDownError(
            f"cannot connect to instance {instance}: {exc.os_error.strerror or exc}",
            instance=instance,
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return InstanceDownError(
            f"connection to instance {instance} failed: {exc}", instance=instance
        )
    if isinstance(exc, AddressRefused):
        return address_not_allowed(exc, instance)
    if isinstance(exc, aiohttp.ContentTypeError | json.JSONDecodeError):
        return InstanceProtocolError(
            f"instance {instance} sent a reply that is not JSON: {exc}", instance=instance
        )
    if isinstance(exc, aiohttp.ClientError):
        return InstanceError(f"instance {instance} failed: {exc}", instance=instance)
    return request_failed(exc, instance)


def address_not_allowed(exc: AddressRefused, instance: str) -> AddressNotAllowedError:
    """The error for a connect that ``instances.allow``/``instances.deny`` refused."""
    return AddressNotAllowedError(
        f"instance {instance} is at an address the orchestrator may not connect to: {exc}",
        instance=instance,
    )


def request_failed(exc: Exception, instance: str) -> InstanceError:
    """The error for anything else that went wrong reaching ``instance`` (a request that
    could not even be built, say): that instance's failure, never the caller's 500. Logged
    with its type, since it may be a defect of ours."""
    log.warning(
        "drivers.request_failed", instance=instance, error=type(exc).__name__, detail=str(exc)
    )
    return InstanceError(
        f"could not send a request to instance {instance}: {type(exc).__name__}: {exc}",
        instance=instance,
    )


def request_url(instance: InstanceSpec, path: str) -> URL:
    """``instance.url`` with ``path`` (percent-encoded) appended, never leaving the
    instance's host and port (:func:`~openclaw_orchestrator.instance_url.join_path`); a URL
    that cannot be built is the instance's failure, an InstanceError."""
    try:
        return join_path(instance.url, path)
    except ValueError as exc:
        raise InstanceError(
            f"cannot build a request to instance {instance.name}: {exc}", instance=instance.name
        ) from exc


def error_fields(raw: bytes, kind_key: str = "code") -> tuple[str | None, str | None]:
    """``(kind, message)`` of an ``{"error": {kind_key: ..., "message": ...}}`` reply body;
    Nones for whatever is missing, not a string, or not JSON at all."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None, None
    kind, message = err.get(kind_key), err.get("message")
    return (kind if isinstance(kind, str) else None, message if isinstance(message, str) else None)
