"""The time the core is given: a monotonic clock and a sleep, both injected, so tests run
the core on a fake clock with zero waits (stamina's testing mode); and how stored wall-clock
times are shown (:func:`moment`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

__all__ = ["Clock", "Sleep", "moment", "moment_or_none", "ms"]

Clock = Callable[[], float]
"""Monotonic seconds."""
Sleep = Callable[[float], Awaitable[None]]
"""Wait this many seconds (``asyncio.sleep`` in production)."""


def ms(seconds: float) -> float:
    """Seconds as milliseconds, to the microsecond: how latencies go on the wire and in logs."""
    return round(seconds * 1000, 3)


_EARLIEST = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_LATEST = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def moment(ts: float) -> datetime:
    """Epoch seconds as a UTC datetime, total: a stored time past the calendar's ends (a
    row written before durations were bounded, say) is clamped to them, never an error
    that would make the record unreadable."""
    if not ts >= _EARLIEST:  # NaN too
        ts = _EARLIEST
    return datetime.fromtimestamp(min(ts, _LATEST), UTC)


def moment_or_none(ts: float | None) -> datetime | None:
    return None if ts is None else moment(ts)
