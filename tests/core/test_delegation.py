"""The loop guard's pieces: the header's bounds, the setting's bounds and environment
variable, the refusal, and the SDK raising the same class from the JSON code."""

from __future__ import annotations

import pytest

import openclaw_orchestrator
from openclaw_orchestrator.errors import (
    DelegationLoopError,
    InvalidRequestError,
    error_from_body,
)
from openclaw_orchestrator.server.delegation import (
    HOPS_HEADER,
    bind_hops,
    check_hops,
    current_hops,
    outgoing_hops,
    parse_hops,
    reset_hops,
)
from openclaw_orchestrator.settings import Settings, load_settings


@pytest.mark.parametrize(("value", "hops"), [(b"0", 0), (b"3", 3), (b" 7 ", 7), ("255", 255)])
def test_parses_counts_from_0_to_255(value: bytes | str, hops: int) -> None:
    assert parse_hops(value) == hops


@pytest.mark.parametrize("value", [b"", b"-1", b"256", b"1e2", b"0x1", b"\xd9\xa3", b"12345"])
def test_anything_else_is_a_400_naming_the_header(value: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_hops(value)
    assert caught.value.field == HOPS_HEADER


def test_the_count_is_bound_per_call_and_deliveries_send_one_more() -> None:
    assert (current_hops(), outgoing_hops()) == (0, 1)
    token = bind_hops(2)
    try:
        assert (current_hops(), outgoing_hops()) == (2, 3)
        check_hops(3)
        with pytest.raises(DelegationLoopError) as caught:
            check_hops(2)
    finally:
        reset_hops(token)
    assert current_hops() == 0
    error = caught.value
    assert (error.code, error.status) == ("delegation_loop", 508)
    assert error.details == {"hops": 2, "max_hops": 2}


def test_the_sdk_raises_the_same_class_from_the_code() -> None:
    body = DelegationLoopError("loop", details={"hops": 3, "max_hops": 3}).to_dict()
    again = error_from_body(body, status=508)
    assert type(again) is DelegationLoopError
    assert again.details == {"hops": 3, "max_hops": 3}
    assert openclaw_orchestrator.DelegationLoopError is DelegationLoopError


def test_max_hops_defaults_to_3_within_1_to_32(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().delegation.max_hops == 3
    for bad in (0, 33):
        with pytest.raises(ValueError, match="max_hops"):
            Settings(delegation={"max_hops": bad})
    monkeypatch.setenv("ORCHESTRATOR_DELEGATION__MAX_HOPS", "5")
    assert load_settings().delegation.max_hops == 5
