"""Server-sent events, read with no I/O: a run's event stream as :class:`RunEvent` values,
and a streamed route or session send (:class:`OutputStreamReader`) as :class:`Delta` values
then its result.

The SDK reads ``text/event-stream`` itself rather than take a dependency for it (the SDK
installs with aiohttp, pydantic and orjson only). :class:`SseParser` follows the WHATWG
rules the server's stream needs: lines end with LF, CRLF or CR (even split across chunks);
``id``, ``event`` and ``data`` fields (``data`` lines joined with ``"\\n"``); a line
starting with ``:`` is a comment (the server's keep-alive ping); a blank line dispatches the
event, one without data being dropped; a last event not ended by a blank line is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from ..errors import OrchestratorError, error_from_body
from .replies import decode_json

__all__ = ["Delta", "OutputStreamReader", "RunEvent", "SseParser"]

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One event of a run: ``id`` numbers it from 1 (resume with ``after=id``), ``type`` is
    ``state``, ``attempt``, ``entry``, ``delta`` (output of a run submitted with
    ``stream=True``) or ``result`` (the last), ``data`` its JSON."""

    id: int | None
    type: str
    data: Any


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of an instance's output, relayed as it was produced: ``delta`` is the
    instance's JSON value (text output is ``{"text": "..."}``)."""

    instance: str
    delta: Any

    @property
    def text(self) -> str | None:
        """The piece's text when it is ``{"text": "..."}``, else None."""
        if isinstance(self.delta, dict) and isinstance(self.delta.get("text"), str):
            text: str = self.delta["text"]
            return text
        return None


class OutputStreamReader(Generic[R]):
    """Reads a streamed route or session send: feed it the body's chunks, get each
    ``delta`` event as a :class:`Delta` and the ``result`` event through ``parse``; an
    ``error`` event raises its typed error, and :meth:`end` raises if no result came."""

    def __init__(self, parse: Callable[[Any], R]) -> None:
        self._parser = SseParser()
        self._parse = parse
        self.finished = False

    def feed(self, chunk: bytes) -> Iterator[Delta | R]:
        """The deltas (and the result) ``chunk`` completes, as you iterate."""
        for event in self._parser.feed(chunk):
            data = event.data
            if event.type == "delta" and isinstance(data, dict):
                yield Delta(str(data.get("instance", "")), data.get("delta"))
            elif event.type == "result":
                self.finished = True
                yield self._parse(data)
            elif event.type == "error":
                status = data.get("status") if isinstance(data, dict) else None
                raise error_from_body(data, status=status if isinstance(status, int) else 200)

    def end(self) -> None:
        """Raise when the stream ended (a dropped connection) before its result."""
        if not self.finished:
            raise OrchestratorError("the stream ended before its result")


class SseParser:
    """Feed it the body's chunks as they arrive; it yields each complete event."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._type = ""
        self._last_id = ""
        self._after_cr = False

    @property
    def last_id(self) -> int | None:
        """The last event id seen, as a number (None before any, or when not a number)."""
        return int(self._last_id) if self._last_id.isdigit() else None

    def feed(self, chunk: bytes) -> Iterator[RunEvent]:
        """The events the lines completed by ``chunk`` dispatch, parsed as you iterate."""
        self._buffer.extend(chunk)
        while (line := self._next_line()) is not None:
            if (event := self._line(line)) is not None:
                yield event

    def _next_line(self) -> str | None:
        """The next whole line, without its ending; None until one is complete. A CR ends
        its line at once; an LF right after it, even in the next chunk, is that same end."""
        if self._after_cr and self._buffer:
            if self._buffer[0] == ord("\n"):
                del self._buffer[:1]
            self._after_cr = False
        ends = [i for i in (self._buffer.find(b"\n"), self._buffer.find(b"\r")) if i >= 0]
        if not ends:
            return None
        end = min(ends)
        self._after_cr = self._buffer[end] == ord("\r")
        line = bytes(self._buffer[:end]).decode("utf-8", "replace")
        del self._buffer[: end + 1]
        return line

    def _line(self, line: str) -> RunEvent | None:
        """Apply one line; a blank one dispatches the event gathered so far."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None  # "retry" and unknown fields are ignored, as the standard says

    def _dispatch(self) -> RunEvent | None:
        data, kind = self._data, self._type or "message"
        self._data, self._type = [], ""
        if not data:
            return None
        parsed = decode_json("\n".join(data).encode(), _not_json, kind)
        return RunEvent(self.last_id, kind, parsed)


def _not_json(exc: orjson.JSONDecodeError, kind: str) -> OrchestratorError:
    """The error for an event whose data is not JSON."""
    return OrchestratorError(
        f"the run's event stream sent a {kind!r} event that is not JSON: {exc}"
    )
