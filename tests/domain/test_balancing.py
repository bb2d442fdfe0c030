"""Balancer plans (tiers, policies, rotation) and the failover choice of select_next."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from openclaw_orchestrator.domain.balancing import (
    Balancer,
    Candidate,
    Plan,
    Policy,
    Skip,
    select_next,
)
from openclaw_orchestrator.domain.health import HealthState

H, U, G, D = HealthState.HEALTHY, HealthState.UNKNOWN, HealthState.DEGRADED, HealthState.DOWN


def healthy(*names: str) -> list[Candidate]:
    return [Candidate(name, 1.0, H) for name in names]


@pytest.mark.parametrize("policy", list(Policy))
def test_tiers_healthy_unknown_degraded_and_skips_down(policy: Policy) -> None:
    """Whatever the policy, healthy comes before unknown before degraded, and down is skipped."""
    candidates = [
        Candidate("A", 1.0, G),
        Candidate("B", 1.0, D),
        Candidate("C", 5.0, U),
        Candidate("D", 1.0, H),
        Candidate("E", 1.0, D),
    ]
    plan = Balancer(policy, rng=random.Random(1)).plan(candidates)
    assert plan == Plan(("D", "C", "A"), (Skip("B", "down"), Skip("E", "down")))
    assert plan.choice == "D"


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        ([], Plan((), ())),
        ([Candidate("A", 1.0, D)], Plan((), (Skip("A", "down"),))),
    ],
)
def test_nothing_routable(candidates: list[Candidate], expected: Plan) -> None:
    """No candidates, or only down ones, give an empty order and no choice."""
    plan = Balancer().plan(candidates)
    assert plan == expected
    assert plan.choice is None


def test_round_robin_rotates_once_per_plan() -> None:
    """Each plan starts one candidate further along and wraps around."""
    balancer = Balancer(Policy.ROUND_ROBIN)
    orders = [balancer.plan(healthy("A", "B", "C")).order for _ in range(4)]
    assert orders == [("A", "B", "C"), ("B", "C", "A"), ("C", "A", "B"), ("A", "B", "C")]


def test_round_robin_is_fair_within_a_tier() -> None:
    """A degraded instance in the list does not make one healthy instance lead twice as often."""
    balancer = Balancer()
    candidates = [Candidate("A", 1.0, H), Candidate("B", 1.0, G), Candidate("C", 1.0, H)]
    firsts = Counter(balancer.plan(candidates).choice for _ in range(100))
    assert firsts == {"A": 50, "C": 50}


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        ([("A", 1.0, 4), ("B", 1.0, 2), ("C", 4.0, 4)], ("C", "B", "A")),
        ([("A", 2.0, 2), ("B", 1.0, 3), ("C", 1.0, 0)], ("C", "A", "B")),
        ([("A", 1.0, 0), ("B", 1.0, 0), ("C", 1.0, 9)], ("A", "B", "C")),
    ],
)
def test_least_outstanding_orders_by_load_per_weight(
    load: list[tuple[str, float, int]], expected: tuple[str, ...]
) -> None:
    """Lowest outstanding / weight goes first."""
    candidates = [Candidate(name, weight, H, outstanding) for name, weight, outstanding in load]
    assert Balancer(Policy.LEAST_OUTSTANDING).plan(candidates).order == expected


def test_least_outstanding_breaks_ties_by_rotation() -> None:
    """Equally loaded instances take turns leading instead of the first always winning."""
    balancer = Balancer(Policy.LEAST_OUTSTANDING)
    candidates = [Candidate("A", 1.0, H), Candidate("B", 1.0, H), Candidate("C", 1.0, H, 5)]
    orders = [balancer.plan(candidates).order for _ in range(3)]
    assert orders == [("A", "B", "C"), ("B", "A", "C"), ("A", "B", "C")]


def test_weighted_random_prefers_heavier_in_proportion() -> None:
    """Weight 3 is picked first about three times as often as weight 1 (seeded, 8000 plans)."""
    balancer = Balancer(Policy.WEIGHTED_RANDOM, rng=random.Random(2024))
    candidates = [Candidate("light", 1.0, H), Candidate("heavy", 3.0, H)]
    firsts = Counter(balancer.plan(candidates).choice for _ in range(8000))
    assert 2.7 < firsts["heavy"] / firsts["light"] < 3.3


def test_weighted_random_is_reproducible_and_complete() -> None:
    """The same seed gives the same orders, and every order holds every live candidate."""
    candidates = [
        Candidate(name, weight, H) for name, weight in zip("ABCD", (1, 2, 3, 4), strict=True)
    ]

    def orders(seed: int) -> list[tuple[str, ...]]:
        balancer = Balancer(Policy.WEIGHTED_RANDOM, rng=random.Random(seed))
        return [balancer.plan(candidates).order for _ in range(20)]

    assert orders(7) == orders(7)
    assert len(set(orders(7))) > 1
    assert all(sorted(order) == ["A", "B", "C", "D"] for order in orders(7))


def test_per_call_policy_overrides_the_default() -> None:
    """A request may ask for another policy without changing the balancer's default."""
    balancer = Balancer(Policy.ROUND_ROBIN)
    candidates = [Candidate("A", 1.0, H, 3), Candidate("B", 1.0, H, 0)]
    assert balancer.plan(candidates, policy=Policy.LEAST_OUTSTANDING).order == ("B", "A")
    assert balancer.plan(candidates).order == ("B", "A")  # round robin, cursor 1
    assert balancer.policy is Policy.ROUND_ROBIN


def test_repr_shows_policy_and_cursor() -> None:
    """The repr carries the live rotation state."""
    balancer = Balancer(Policy.LEAST_OUTSTANDING)
    assert repr(balancer) == "<Balancer least_outstanding cursor=0>"
    balancer.plan(healthy("A"))
    balancer.plan([])
    assert repr(balancer) == "<Balancer least_outstanding cursor=2>"


@pytest.mark.parametrize(
    ("weight", "outstanding"),
    [(0.0, 0), (-1.0, 0), (float("nan"), 0), (float("inf"), 0), (1.0, -1)],
)
def test_candidate_rejects_bad_numbers(weight: float, outstanding: int) -> None:
    """A weight must be finite and positive and load cannot be negative."""
    with pytest.raises(ValueError, match="must be"):
        Candidate("A", weight, H, outstanding)


def test_decisions_are_frozen() -> None:
    """Plans and skips handed to the service cannot be changed under it."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        Skip("A", "down").reason = "deadline"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("tried", "down", "expected", "skips"),
    [
        (set(), set(), "A", []),
        ({"A"}, set(), "B", [Skip("A", "already_tried")]),
        ({"A"}, {"B"}, "C", [Skip("A", "already_tried"), Skip("B", "down")]),
        ({"A", "B"}, {"A"}, "C", [Skip("A", "down"), Skip("B", "already_tried")]),
        ({"A", "B", "C"}, set(), "A", [Skip("B", "already_tried"), Skip("C", "already_tried")]),
        ({"B", "C"}, {"A"}, "B", [Skip("A", "down"), Skip("C", "already_tried")]),
        ({"A"}, {"B", "C"}, "A", [Skip("B", "down"), Skip("C", "down")]),
        (set(), {"A", "B", "C"}, None, [Skip("A", "down"), Skip("B", "down"), Skip("C", "down")]),
    ],
)
def test_select_next(
    tried: set[str], down: set[str], expected: str | None, skips: list[Skip]
) -> None:
    """Next is the first untried live one, else the first live one again, else None."""
    assert select_next(("A", "B", "C"), tried, down.__contains__) == (expected, skips)


def test_select_next_with_empty_order() -> None:
    """Nothing to choose from means no choice and nothing skipped."""
    assert select_next((), set(), lambda name: False) == (None, [])
