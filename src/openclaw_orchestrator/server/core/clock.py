"""The time the core is given: a monotonic clock and a sleep, both injected, so tests run
the core on a fake clock with zero waits (stamina's testing mode)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = ["Clock", "Sleep", "ms"]

Clock = Callable[[], float]
"""Monotonic seconds."""
Sleep = Callable[[float], Awaitable[None]]
"""Wait this many seconds (``asyncio.sleep`` in production)."""


def ms(seconds: float) -> float:
    """Seconds as milliseconds, to the microsecond: how latencies go on the wire and in logs."""
    return round(seconds * 1000, 3)
