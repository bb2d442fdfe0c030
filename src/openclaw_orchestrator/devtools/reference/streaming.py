"""Streamed replies of the reference instance (instance protocol v1.3).

A task or session message asked for with ``Accept: text/event-stream`` is answered by a
:class:`StreamedReply`: it runs the request with an ``emit`` function for the handler
(``HandlerContext.emit``). The reply turns into ``200 text/event-stream`` at the first delta
emitted, each delta an event ``delta`` with data ``{"delta": value}``, and ends with one
``result`` event (the JSON reply's body) or, for a failure after the stream started, one
``error`` event ``{"error": {"code", "message"}, "status": N}``. A request that never
emits (every handler but ``stream``, faults, errors before the first delta, a replayed
session message) is answered exactly as without the header: plain JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ...server.logs import get_logger
from .handlers import Emit, HandlerError

__all__ = ["EVENT_STREAM", "StreamedReply", "wants_stream"]

EVENT_STREAM = "text/event-stream"
Run = Callable[[Emit], Awaitable[Response]]
"""Runs the request with an ``emit`` for its handler; the reply it would send unstreamed."""

_START_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_log = get_logger("reference.streaming")


def wants_stream(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for a streamed reply."""
    return accept is not None and EVENT_STREAM in accept


class StreamedReply(Response):
    """A reply that becomes an event stream at the handler's first delta (module docstring).

    An error before that is raised, so the app's error envelope answers it as usual."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        events = _EventSender(send)
        try:
            reply = await self._run(events.delta)
        except HandlerError as exc:
            if not events.started:
                raise
            await events.finish(b"error", _error_event(exc.status, exc.code, exc.message))
            return
        except Exception:
            if not events.started:
                raise
            _log.exception("instance.stream_failed", path=scope["path"])
            await events.finish(b"error", _error_event(500, "internal_error", "internal error"))
            return
        if events.started:
            await events.finish(b"result", bytes(reply.body))
        else:
            await reply(scope, receive, send)


def _error_event(status: int, code: str, message: str) -> bytes:
    """The data of an ``error`` event."""
    return orjson.dumps({"error": {"code": code, "message": message}, "status": status})


class _EventSender:
    """Writes events to ``send``, starting the ``200 text/event-stream`` reply first."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def delta(self, value: Any) -> None:
        """One ``delta`` event; a value that is not JSON is the handler's 500."""
        try:
            data = orjson.dumps({"delta": value})
        except orjson.JSONEncodeError as exc:
            raise HandlerError(500, "handler_error", f"delta is not JSON: {exc}") from exc
        await self._event(b"delta", data, more=True)

    async def finish(self, name: bytes, data: bytes) -> None:
        """The last event (``result`` or ``error``), ending the reply."""
        await self._event(name, data, more=False)

    async def _event(self, name: bytes, data: bytes, *, more: bool) -> None:
        """``data`` is one line of JSON (orjson never writes a raw newline)."""
        if not self.started:
            self.started = True
            start = {"type": "http.response.start", "status": 200, "headers": _START_HEADERS}
            await self._send(start)
        body = b"event: " + name + b"\ndata: " + data + b"\n\n"
        await self._send({"type": "http.response.body", "body": body, "more_body": more})
