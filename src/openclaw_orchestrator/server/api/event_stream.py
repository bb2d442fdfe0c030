"""A route or session send answered as server-sent events (``"stream": true`` or ``Accept:
text/event-stream``): the instance's output relayed as it is produced.

The work runs as its own task. Until its first attempt starts, nothing is sent: whatever
fails before (an unknown instance or session, a deadline over the maximum, every candidate
down) is the ordinary JSON error reply. From then on the reply is ``200
text/event-stream``::

    event: delta   data: {"instance": "A", "delta": <the instance's JSON value>}
    event: result  data: <RouteResult | SendResult>                    (last)
    event: error   data: {"error": {...}, "status": 502}               (last, instead)

with a keep-alive comment every :data:`PING_EVERY` seconds. A client that disconnects
cancels the work: the driver aborts its exchange and tells the instance.

This is the relay's hot loop (issue 12: 100 streams of 50 chunks/s), so the reply is an
ASGI response of our own rather than sse_starlette's (a task group of four tasks a stream,
a cancel scope and a lock around every send): the deltas of one read of the instance's
connection are written to the client in one chunk, by the connection's own callback
through the server's :class:`~..direct_body.DirectBody` while the client takes them at
once, else by the driver's read loop through the ASGI ``send`` (:class:`_Relay`), no queue
between them either way: the ASGI ``send``'s own flow control is the back-pressure (a slow
reader slows the instance's stream down rather than filling memory); one task per stream
watches for the client's disconnect and sends the keep-alive comments. The same response serves
both sides of the seam: the FastAPI routes return it and the fast path
(:mod:`.fastpath_stream`) calls it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ...errors import OrchestratorError
from ..core.dispatcher import Streaming
from ..direct_body import DirectBody, direct_body
from ..logs import get_logger

__all__ = [
    "EVENT_STREAM",
    "PING_EVERY",
    "STREAM_REPLY",
    "EventStream",
    "event_stream",
    "wants_stream",
]

log = get_logger("api")

EVENT_STREAM = "text/event-stream"
PING_EVERY = 15.0
"""Seconds between keep-alive comments (as a run's event stream: proxies close idle ones)."""
STREAM_REPLY: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'The result; with `"stream": true` or `Accept: text/event-stream`, '
        "server-sent events: `delta` events (`{instance, delta}`) as the instance produces "
        "its output, then one `result` event with this same body, or an `error` event "
        "(`{error, status}`) when it fails after the stream began.",
        "content": {EVENT_STREAM: {}},
    }
}
"""The OpenAPI 200 reply of an endpoint that can stream."""

Work = Callable[[Streaming], Coroutine[Any, Any, BaseModel]]
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
"""What sse_starlette sent, kept: no caching, and no buffering by a proxy (nginx)."""
_PING: Message = {"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True}


def wants_stream(request: Request, asked: bool) -> bool:
    """Whether the caller asked for events: ``"stream": true`` or ``Accept:
    text/event-stream``."""
    return asked or EVENT_STREAM in request.headers.get("accept", "")


async def event_stream(work: Work) -> EventStream:
    """Start ``work`` with a :class:`~..core.dispatcher.Streaming` and answer with its
    events once its first attempt starts (or it ends first: its error raised here, its
    result as the only event)."""
    loop = asyncio.get_running_loop()
    relay = _Relay(loop)
    begun = loop.create_future()

    def begin() -> None:
        if not begun.done():
            begun.set_result(None)

    task: asyncio.Task[BaseModel] = loop.create_task(
        work(Streaming(relay.delta, begin, relay.deltas, relay.now))
    )
    task.add_done_callback(_retrieve)
    try:
        await asyncio.wait((task, begun), return_when=asyncio.FIRST_COMPLETED)
        if not begun.done():
            task.result()  # an error before anything was sent: the JSON reply
    except BaseException:
        task.cancel()
        raise
    return EventStream(task, relay)


class _Relay:
    """Writes each delta to the client: in the instance connection's own callback through
    the request's :class:`~..direct_body.DirectBody` when the server offers one and the
    client can take it at once (:meth:`now`), else through the ASGI ``send`` from the
    driver's read loop, once the reply has begun (a delta that comes before waits for it)."""

    __slots__ = ("_attached", "_direct", "_prefixes", "_send")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._send: Send | None = None
        self._direct: DirectBody | None = None
        self._attached: asyncio.Future[Send] = loop.create_future()
        self._prefixes: dict[str, bytes] = {}

    def attach(self, send: Send, direct: DirectBody | None = None) -> None:
        """The reply began: deltas go to ``send`` (or ``direct``) from now on."""
        self._send = send
        self._direct = direct
        if not self._attached.done():
            self._attached.set_result(send)

    async def delta(self, instance: str, value: Any) -> None:
        """``event: delta`` with ``{"instance": ..., "delta": value}``, the prefix encoded
        once per instance."""
        await self._write(self._frames(instance, [value]))

    async def deltas(self, instance: str, values: list[Any]) -> None:
        """Several ``delta`` events that arrived together, written in one ``send``."""
        await self._write(self._frames(instance, values))

    def now(self, instance: str, values: list[Any]) -> bool:
        """Write ``values``' delta events at once, in one chunk, and return True; or write
        nothing and return False (no direct writer, or the client cannot take them now:
        the caller awaits :meth:`deltas` instead, which waits for it).

        Called only while the driver's read loop waits for the instance (the tap's
        contract), so none of this stream's awaited writes is pending: a direct write never
        overtakes one. (A keep-alive comment may be; it is a chunk of its own.)"""
        direct = self._direct
        return direct is not None and direct.write(self._frames(instance, values))

    def _frames(self, instance: str, values: list[Any]) -> bytes:
        prefix = self._prefix(instance)
        if len(values) == 1:
            return b"%s%s}\r\n\r\n" % (prefix, orjson.dumps(values[0]))
        return b"".join(b"%s%s}\r\n\r\n" % (prefix, orjson.dumps(v)) for v in values)

    def _prefix(self, instance: str) -> bytes:
        prefix = self._prefixes.get(instance)
        if prefix is None:
            name = orjson.dumps(instance)
            prefix = self._prefixes[instance] = (
                b'event: delta\r\ndata: {"instance":%s,"delta":' % name
            )
        return prefix

    async def _write(self, frames: bytes) -> None:
        send = self._send
        if send is None:
            send = await self._attached
        await send({"type": "http.response.body", "body": frames, "more_body": True})


class EventStream(Response):
    """The ``200 text/event-stream`` reply of work whose first attempt has started: its
    deltas as the driver reads them, then its ``result`` or ``error`` event (module
    docstring). Awaited by the app (a FastAPI route returns it) or by the fast path."""

    media_type = EVENT_STREAM

    def __init__(self, task: asyncio.Task[BaseModel], relay: _Relay) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)
        self._task = task
        self._relay = relay

    def __repr__(self) -> str:
        return f"<EventStream done={self._task.done()}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the head, let the relay write the deltas, then the last event; a client
        that leaves first cancels the work (and nothing more is sent)."""
        task = self._task
        watcher: asyncio.Task[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            watcher = asyncio.create_task(_watch(receive, send, task))
            self._relay.attach(send, direct_body(scope))
            await asyncio.wait((task,))
            watcher.cancel()
            if not task.cancelled():
                await send({"type": "http.response.body", "body": _last(task)})
        finally:
            task.cancel()  # a no-op once it has ended
            if watcher is not None:
                watcher.cancel()


async def _watch(receive: Receive, send: Send, task: asyncio.Task[BaseModel]) -> None:
    """Cancel ``task`` when the client disconnects; a keep-alive comment every
    :data:`PING_EVERY` seconds meanwhile."""
    try:
        while True:
            try:
                async with asyncio.timeout(PING_EVERY):
                    message = await receive()
            except TimeoutError:
                await send(_PING)
                continue
            if message["type"] == "http.disconnect":
                break
    except Exception as exc:  # the connection broke under a ping: the same as a disconnect
        log.debug("api.stream_ping_failed", error=type(exc).__name__)
    task.cancel()


def _last(task: asyncio.Task[BaseModel]) -> bytes:
    """The ``result`` or ``error`` event of the ended ``task``."""
    try:
        result = task.result()
    except OrchestratorError as exc:
        return _error(exc)
    except Exception as exc:  # a bug: the app's generic 500, details only in the log
        log.error("api.unexpected_error", exc_info=exc)
        return _error(OrchestratorError("internal error; see the orchestrator log"))
    data = result.__pydantic_serializer__.to_json(result)
    return b"event: result\r\ndata: %s\r\n\r\n" % data


def _error(exc: OrchestratorError) -> bytes:
    data = orjson.dumps({**exc.to_dict(), "status": exc.status})
    return b"event: error\r\ndata: %s\r\n\r\n" % data


def _retrieve(task: asyncio.Task[BaseModel]) -> None:
    """Mark an abandoned task's failure as seen (it is reported in the stream, or nobody
    is listening any more)."""
    if not task.cancelled():
        task.exception()
