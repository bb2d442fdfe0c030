"""The loop guard for callers that cannot pass ``X-Orchestrator-Hops`` on (an OpenClaw
gateway's MCP client sends static headers): the ledger of deliveries in flight per
instance, and a call naming itself in ``X-Orchestrator-Caller`` counted as the deepest
delivery in flight to it (docs/api.md, "Delegation loops"). No sockets, no event loop."""

from __future__ import annotations

import pytest

from openclaw_orchestrator.errors import InvalidRequestError
from openclaw_orchestrator.server.delegation import (
    CALLER_HEADER,
    HOPS_HEADER,
    DeliveryLedger,
    incoming_hops,
    parse_caller,
)


def test_an_instance_with_nothing_in_flight_is_owed_nothing() -> None:
    """No delivery in flight: a caller's count is 0, and the repr is empty."""
    ledger = DeliveryLedger()
    assert ledger.highest("G1") == 0
    assert repr(ledger) == "<DeliveryLedger []>"


def test_the_deepest_delivery_in_flight_counts_until_it_ends() -> None:
    """Counts are per instance and per hop value; each leaves when its delivery ends."""
    ledger = DeliveryLedger()
    with ledger.delivering("G1", 1):
        with ledger.delivering("G1", 3), ledger.delivering("G2", 2):
            assert (ledger.highest("G1"), ledger.highest("G2")) == (3, 2)
            with ledger.delivering("G1", 3):
                assert repr(ledger) == "<DeliveryLedger [G1: 1x1 3x2, G2: 2x1]>"
            assert repr(ledger) == "<DeliveryLedger [G1: 1x1 3x1, G2: 2x1]>"
        assert (ledger.highest("G1"), ledger.highest("G2")) == (1, 0)
    assert repr(ledger) == "<DeliveryLedger []>"


def test_a_failed_delivery_leaves_nothing_behind() -> None:
    """An exception (a cancelled or failed call) still removes its entry."""
    ledger = DeliveryLedger()
    seen: list[int] = []

    def fail() -> None:
        with ledger.delivering("G1", 2):
            seen.append(ledger.highest("G1"))
            raise RuntimeError("the gateway went away")

    with pytest.raises(RuntimeError):
        fail()
    assert seen == [2]
    assert ledger.highest("G1") == 0
    assert repr(ledger) == "<DeliveryLedger []>"


@pytest.mark.parametrize(
    ("hops", "caller", "expected"),
    [
        (None, None, None),  # no claim: the call counts as 0
        (b"1", None, 1),
        (None, b"G1", 2),  # the deepest delivery in flight to G1
        (None, b"G2", 0),  # nothing in flight to G2
        (b"0", b"G1", 0),  # a caller that passes the count on is believed
        (None, " G1 ", 2),
    ],
)
def test_a_caller_without_a_count_is_owed_its_deliveries_count(
    hops: bytes | None, caller: bytes | str | None, expected: int | None
) -> None:
    """``X-Orchestrator-Hops`` wins; without it ``X-Orchestrator-Caller`` reads the ledger."""
    ledger = DeliveryLedger()
    with ledger.delivering("G1", 2), ledger.delivering("G1", 1):
        assert incoming_hops(hops, caller, ledger=ledger) == expected


@pytest.mark.parametrize(
    "value", [b"", b"-G1", b"G 1", b"G1/x", b"\xd9\xa3", b"a" * 65, "G1;drop", b"all,G2"]
)
def test_a_caller_that_is_not_an_instance_name_is_a_400_naming_the_header(
    value: bytes | str,
) -> None:
    """A bad name is refused even with a good hop count beside it."""
    for hops in (None, b"1"):
        with pytest.raises(InvalidRequestError) as caught:
            incoming_hops(hops, value, ledger=DeliveryLedger())
        assert caught.value.field == CALLER_HEADER


def test_names_up_to_64_characters_are_callers() -> None:
    """The instance-name shape: letters, digits, ``_.:``, first a letter or digit."""
    assert parse_caller(b"G1") == "G1"
    assert parse_caller("gw_2.eu:a") == "gw_2.eu:a"
    assert parse_caller(b"a" * 64) == "a" * 64


def test_a_bad_hop_count_beside_a_caller_names_the_hop_header() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        incoming_hops(b"x", b"G1", ledger=DeliveryLedger())
    assert caught.value.field == HOPS_HEADER
