"""Server-sent events, read with no I/O: a run's event stream as :class:`RunEvent` values,
and a streamed route or session send (:class:`OutputStreamReader`) as :class:`Delta` values
then its result.

The framing is :mod:`openclaw_orchestrator.sse`'s (the drivers read instances' streams
with the same decoder); this module gives the events their meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from ..errors import OrchestratorError, error_from_body
from ..sse import SseDecoder
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
    """A run's event stream: feed it the body's chunks as they arrive; it yields each
    complete event as a :class:`RunEvent`, its data parsed as JSON
    (:class:`~openclaw_orchestrator.sse.SseDecoder` does the framing)."""

    def __init__(self) -> None:
        self._decoder = SseDecoder()

    @property
    def last_id(self) -> int | None:
        """The last event id seen, as a number (None before any, or when not a number)."""
        last = self._decoder.last_id
        return int(last) if last.isdigit() else None

    def feed(self, chunk: bytes) -> Iterator[RunEvent]:
        """The events ``chunk`` completes, parsed as you iterate."""
        for event in self._decoder.feed(chunk):
            parsed = decode_json(event.data, _not_json, event.event)
            yield RunEvent(int(event.id) if event.id.isdigit() else None, event.event, parsed)


def _not_json(exc: orjson.JSONDecodeError, kind: str) -> OrchestratorError:
    """The error for an event whose data is not JSON."""
    return OrchestratorError(
        f"the run's event stream sent a {kind!r} event that is not JSON: {exc}"
    )
