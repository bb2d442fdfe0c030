"""Durations as users write them: ``10``, ``2.5``, ``"10s"``, ``"500ms"``, ``"1m"``, ``"1h"``,
``"7d"``."""

from __future__ import annotations

import math
import re

from ..errors import InvalidRequestError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object, *, field: str = "timeout") -> float:
    """Seconds as a positive float; a bare number is seconds. Raises with ``field`` named."""
    if isinstance(value, bool):
        raise InvalidRequestError(f"{field}: expected a duration, got a boolean", field=field)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise InvalidRequestError(
            f"{field}: {value!r} is not a duration (try 10, '10s', '500ms', '1m')", field=field
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequestError(f"{field}: must be greater than zero", field=field)
    return seconds
