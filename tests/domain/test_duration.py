"""Durations as users write them, and clear errors naming the field."""

from __future__ import annotations

import pytest

from openclaw_orchestrator.domain.duration import parse_duration
from openclaw_orchestrator.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (10, 10.0),
        (2.5, 2.5),
        ("10", 10.0),
        ("10s", 10.0),
        ("500ms", 0.5),
        (" 1.5 m ", 90.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        (".5s", 0.5),
    ],
)
def test_valid(text: object, seconds: float) -> None:
    """Numbers are seconds; ms, s, m, h and d units scale them."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "soon", "10 parsecs", "-1", 0, -3, True, None, "1e3", float("inf")]
)
def test_invalid_names_the_field(text: object) -> None:
    """Anything else is an InvalidRequestError naming the field."""
    with pytest.raises(InvalidRequestError) as info:
        parse_duration(text, field="ttl")
    assert info.value.field == "ttl"
    assert info.value.message.startswith("ttl:")
