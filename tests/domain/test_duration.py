"""Durations as users write them, and clear errors naming the field."""

from __future__ import annotations

import pytest

from openclaw_orchestrator.domain.duration import describe_duration, parse_duration
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


@pytest.mark.parametrize(
    "text", ["99999999999d", "1" * 400 + "d", 1e308, 10**400, 3650 * 86400 + 1, float("inf")]
)
def test_past_the_maximum_is_refused(text: object) -> None:
    """No duration may exceed ten years, however it is written (an overflow included)."""
    with pytest.raises(InvalidRequestError, match=r"^ttl: over the maximum of 3650d$"):
        parse_duration(text, field="ttl")


def test_a_field_may_have_a_lower_maximum() -> None:
    """A field's own maximum is inclusive, and the message says it in a readable unit."""
    assert parse_duration("30d", field="ttl", maximum=30 * 86400) == 30 * 86400
    with pytest.raises(InvalidRequestError, match=r"^ttl: over the maximum of 30d$"):
        parse_duration("721h", field="ttl", maximum=30 * 86400)


def test_a_long_bad_value_is_not_echoed_whole() -> None:
    """A rejected value is quoted back cut short: the error stays small."""
    with pytest.raises(InvalidRequestError) as info:
        parse_duration("x" * 100_000, field="ttl")
    assert len(info.value.message) < 120


@pytest.mark.parametrize(
    ("seconds", "text"), [(2_592_000, "30d"), (7200, "2h"), (300, "5m"), (90, "90s"), (0.5, "0.5s")]
)
def test_describe(seconds: float, text: str) -> None:
    """Maxima are shown in the largest whole unit."""
    assert describe_duration(seconds) == text
