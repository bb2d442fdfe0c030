"""``text/event-stream`` framing, read incrementally with no I/O: bytes in, whole events out.

One decoder for every stream we read — an instance's streamed reply (instance protocol
v1.3, in the drivers), an OpenClaw gateway's chat completion chunks, and the orchestrator's
own streams in the SDK — so the WHATWG rules are kept in one place. We read it ourselves
rather than take a dependency: the SDK installs with aiohttp, pydantic and orjson only, and
the rules we need are these: lines end in CRLF, LF or CR (also split across chunks); a line
starting with ``:`` is a comment (a keep-alive); one space after a field's colon is
dropped; ``data`` lines of one event are joined by ``\n``; ``event`` names it (``message``
when unnamed); ``id`` sets the last event id (kept across events, as the standard says);
a blank line dispatches the event, one without data being dropped; ``retry`` and unknown
fields are ignored, and so is an event the stream ends inside. A UTF-8 byte order mark at
the very start is skipped.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SseDecoder", "SseEvent"]


class SseEvent(NamedTuple):
    """One server-sent event: its type (``message`` when unnamed), its data lines joined by
    ``\n``, and the last event id the stream had set by then (``""`` when none)."""

    event: str
    data: bytes
    id: str = ""


class SseDecoder:
    """Feed it the body's chunks as they arrive; :meth:`feed` returns the events each
    completes (module docstring for the rules)."""

    __slots__ = ("_after_cr", "_buffer", "_data", "_event", "_last_id", "_started")

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[bytes] = []
        self._last_id = ""
        self._started = False
        self._after_cr = False

    @property
    def last_id(self) -> str:
        """The last event id the stream set (``""`` before any)."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that ``chunk`` completes, in order."""
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the other half of a CRLF whose CR ended the last chunk
        self._after_cr = False
        if self._started and b"\n" not in chunk and b"\r" not in chunk:
            self._buffer += chunk  # the middle of a long line
            return []
        buffer = self._buffer + chunk
        if not self._started and len(buffer) >= 3:
            self._started = True
            buffer = buffer.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
        self._after_cr = buffer.endswith(b"\r")  # it ends its line now, not at the next byte
        lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop()
        events = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: bytes) -> SseEvent | None:
        """Take one line; the event it ends, if it is the blank line ending one."""
        if not line:
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            return SseEvent(event, b"\n".join(data), self._last_id) if data else None
        field, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        elif field == b"id" and b"\0" not in value:
            self._last_id = value.decode("utf-8", "replace")
        return None  # a comment (empty field), retry or an unknown field
