"""A route or session send answered as server-sent events (``"stream": true`` or ``Accept:
text/event-stream``): the instance's output relayed as it is produced.

The work runs as its own task, its deltas handed over through a small bounded queue (a
slow reader slows the instance's stream down rather than filling memory). Until the first
attempt starts, nothing is sent: whatever fails before (an unknown instance or session, a
deadline over the maximum, every candidate down) is the ordinary JSON error reply. From
then on the reply is ``200 text/event-stream``::

    event: delta   data: {"instance": "A", "delta": <the instance's JSON value>}
    event: result  data: <RouteResult | SendResult>                    (last)
    event: error   data: {"error": {...}, "status": 502}               (last, instead)

with a keep-alive comment every :data:`PING_EVERY` seconds. A client that disconnects
cancels the work: the driver aborts its exchange and tells the instance.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from ...errors import OrchestratorError
from ..core.dispatcher import Streaming
from ..logs import get_logger

__all__ = [
    "EVENT_STREAM",
    "PING_EVERY",
    "QUEUED_DELTAS",
    "STREAM_REPLY",
    "event_stream",
    "wants_stream",
]

log = get_logger("api")

EVENT_STREAM = "text/event-stream"
PING_EVERY = 15.0
"""Seconds between keep-alive comments (as a run's event stream: proxies close idle ones)."""
QUEUED_DELTAS = 64
"""Deltas waiting for a slow reader, at most, before the instance's stream waits too."""
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

Work = Callable[[Streaming], Awaitable[BaseModel]]
_END = object()


def wants_stream(request: Request, asked: bool) -> bool:
    """Whether the caller asked for events: ``"stream": true`` or ``Accept:
    text/event-stream``."""
    return asked or EVENT_STREAM in request.headers.get("accept", "")


async def event_stream(work: Work) -> EventSourceResponse:
    """Start ``work`` with a :class:`~..core.dispatcher.Streaming` and answer with its
    events once its first attempt starts (or it ends first: its error raised here, its
    result as the only event)."""
    queue: asyncio.Queue[Any] = asyncio.Queue(QUEUED_DELTAS)
    begun = asyncio.get_running_loop().create_future()

    async def relay(instance: str, delta: Any) -> None:
        await queue.put(_event("delta", {"instance": instance, "delta": delta}))

    def begin() -> None:
        if not begun.done():
            begun.set_result(None)

    task = asyncio.create_task(_ended(work(Streaming(relay, begin)), queue))
    task.add_done_callback(_retrieve)
    try:
        await asyncio.wait((task, begun), return_when=asyncio.FIRST_COMPLETED)
        if not begun.done():
            task.result()  # an error before anything was sent: the JSON reply
    except BaseException:
        task.cancel()
        raise
    return EventSourceResponse(_frames(queue, task), ping=PING_EVERY)


async def _ended(work: Awaitable[BaseModel], queue: asyncio.Queue[Any]) -> BaseModel:
    """``work``'s result, the end marked in ``queue`` after its last delta (unless it was
    cancelled: then nobody reads the queue any more)."""
    try:
        result = await work
    except asyncio.CancelledError:
        raise
    except BaseException:
        await queue.put(_END)
        raise
    await queue.put(_END)
    return result


async def _frames(queue: asyncio.Queue[Any], task: asyncio.Task[BaseModel]) -> AsyncIterator[Any]:
    """The deltas as they come, then the result or error event; the work cancelled when
    the stream stops early (the client went away)."""
    try:
        while (item := await queue.get()) is not _END:
            yield item
        yield await _last(task)
    finally:
        task.cancel()  # a no-op once it has ended


async def _last(task: asyncio.Task[BaseModel]) -> ServerSentEvent:
    try:
        result = await task
    except OrchestratorError as exc:
        return _error(exc)
    except Exception as exc:  # a bug: the app's generic 500, details only in the log
        log.error("api.unexpected_error", exc_info=exc)
        return _error(OrchestratorError("internal error; see the orchestrator log"))
    return ServerSentEvent(result.model_dump_json(), event="result")


def _error(exc: OrchestratorError) -> ServerSentEvent:
    return _event("error", {**exc.to_dict(), "status": exc.status})


def _event(kind: str, data: Any) -> ServerSentEvent:
    return ServerSentEvent(orjson.dumps(data).decode(), event=kind)


def _retrieve(task: asyncio.Task[BaseModel]) -> None:
    """Mark an abandoned task's failure as seen (it is reported in the stream, or nobody
    is listening any more)."""
    if not task.cancelled():
        task.exception()
