"""Durations as users write them: ``10``, ``2.5``, ``"10s"``, ``"500ms"``, ``"1m"``, ``"1h"``,
``"7d"``.

Every duration is bounded: :data:`MAX_DURATION` for any field, less where a field says so
(a session's ``ttl``). A value past it is refused here, at the edge, with the field named,
so that no absurd number (``"99999999999d"``, ``1e308``, an overflow to infinity) is ever
stored or added to a timestamp.
"""

from __future__ import annotations

import math
import re

from ..errors import InvalidRequestError

__all__ = ["MAX_DURATION", "describe_duration", "parse_duration"]

MAX_DURATION = 10 * 365 * 86400.0
"""Ten years: the longest any duration may be. Past it a value is a mistake or an attack,
and ``now + duration`` could leave the range of a calendar date."""

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_SHOWN = 40  # characters of a rejected value quoted back in the message


def parse_duration(
    value: object, *, field: str = "timeout", maximum: float = MAX_DURATION
) -> float:
    """Seconds as a float in ``(0, maximum]``; a bare number is seconds. Raises
    :class:`InvalidRequestError` naming ``field`` otherwise."""
    seconds = _seconds(value, field)
    if math.isnan(seconds):
        raise _not_a_duration(value, field)
    if seconds > maximum:  # infinity included
        raise InvalidRequestError(
            f"{field}: over the maximum of {describe_duration(maximum)}", field=field
        )
    if seconds <= 0:
        raise InvalidRequestError(f"{field}: must be greater than zero", field=field)
    return seconds


def describe_duration(seconds: float) -> str:
    """``seconds`` in the largest whole unit: ``"30d"``, ``"5m"``, ``"300s"``, ``"0.5s"``."""
    for unit in ("d", "h", "m"):
        count = seconds / _UNITS[unit]
        if count >= 1 and count.is_integer():
            return f"{count:.0f}{unit}"
    return f"{seconds:g}s"


def _seconds(value: object, field: str) -> float:
    if isinstance(value, bool):
        raise InvalidRequestError(f"{field}: expected a duration, got a boolean", field=field)
    if isinstance(value, int | float):
        return _as_float(value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    raise _not_a_duration(value, field)


def _as_float(value: int | float) -> float:
    """``float(value)``, with an integer too large for a float as infinity (over any
    maximum) instead of an OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _not_a_duration(value: object, field: str) -> InvalidRequestError:
    shown = repr(value)
    if len(shown) > _SHOWN:
        shown = shown[:_SHOWN] + "…"
    return InvalidRequestError(
        f"{field}: {shown} is not a duration (try 10, '10s', '500ms', '1m')", field=field
    )
