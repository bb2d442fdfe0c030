"""A streamed reply's events, handed on in the connection's own callback while they can be.

The relay of issue 12 used to pass every chunk from the lean client's connection to the
driver's read loop (a task wake-up through a dozen coroutines) and from there to the client
through an awaited ASGI ``send``. With a caller that can take deltas without an await
(:class:`~.base.DeltaNow`, the API's relay writing through the server's
:class:`~..direct_body.DirectBody`), the lean connection gives the body bytes that arrive
while the read loop waits to an :class:`EventTap` instead: it decodes them and hands their
deltas on there and then, and the read loop sleeps on.

Whatever the tap cannot hand on at once it leaves, in order, for the read loop, which then
takes them through the ordinary awaited path (:func:`~.base.stream_events`): the final
``result`` or ``error`` event, an event of a kind we do not know, a broken ``delta`` (the
deltas before it go first, as :func:`~.base.stream_events` does), and any deltas the caller
could not take at once (its client is slow: the awaited ``send`` waits for it, and the
instance's connection is paused meanwhile, so back-pressure is what it was). One decoder
serves both, so nothing is decoded twice and no event is skipped or reordered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import InstanceProtocolError
from ...sse import SseDecoder, SseEvent
from ..logs import get_logger
from .base import delta_value

__all__ = ["EventTap"]

log = get_logger("drivers")


class EventTap:
    """One streamed reply's decoder, fed by the connection while the read loop waits
    (``tap(data)``) and by the read loop itself (:meth:`events`); ``now`` takes deltas at
    once or refuses them (:meth:`~.base.DeltaNow.now`)."""

    __slots__ = ("_decoder", "_instance", "_left", "_now")

    def __init__(self, instance: str, now: Callable[[list[Any]], bool] | None) -> None:
        self._decoder = SseDecoder()
        self._instance = instance
        self._now = now
        self._left: list[SseEvent] = []

    def __repr__(self) -> str:
        return f"<EventTap {self._instance} left={len(self._left)} now={self._now is not None}>"

    def __call__(self, data: bytes) -> bool:
        """Decode ``data`` and hand its deltas on at once: True when nothing is left for the
        read loop; False when some events are (wake it: :meth:`events` gives them)."""
        events = self._decoder.feed(data)
        if not events:
            return not self._left
        if self._left or self._now is None:
            self._left += events
            return False
        values: list[Any] = []
        taken = 0
        for event in events:
            if event.event != "delta":
                break
            try:
                values.append(delta_value(event, self._instance))
            except InstanceProtocolError:
                break  # the read loop raises it, after the deltas before it
            taken += 1
        if values and not self._hand_on(self._now, values):
            taken = 0
        if taken < len(events):
            self._left = events[taken:]
            return False
        return True

    def events(self, data: bytes) -> list[SseEvent]:
        """The read loop's events: those the tap left, then those ``data`` completes."""
        left = self._left
        events = self._decoder.feed(data) if data else []
        if not left:
            return events
        self._left = []
        return left + events

    def _hand_on(self, now: Callable[[list[Any]], bool], values: list[Any]) -> bool:
        """``now(values)``; a ``now`` that raises is not asked again (a bug, logged): the
        read loop hands those deltas on the awaited way."""
        try:
            return now(values)
        except Exception as exc:
            log.error("drivers.stream_tap_failed", instance=self._instance, exc_info=exc)
            self._now = None
            return False
