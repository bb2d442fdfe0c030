"""Choose an instance and the failover order from candidates, their health and in-flight load.

The balancer decides synchronously and the service awaits (httpcore's pool does the same):
:meth:`Balancer.plan` returns the whole failover order at once, and when an attempt fails the
service asks :func:`select_next` which instance to try next, given what it already tried and
what is down by now.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from .health import HealthState

__all__ = [
    "DEFAULT_POLICY",
    "Balancer",
    "Candidate",
    "Plan",
    "Policy",
    "Skip",
    "SkipReason",
    "select_next",
]


class Policy(StrEnum):
    """How instances of equal health are ordered."""

    ROUND_ROBIN = "round_robin"
    LEAST_OUTSTANDING = "least_outstanding"
    WEIGHTED_RANDOM = "weighted_random"


DEFAULT_POLICY = Policy.ROUND_ROBIN

# Health tiers in preference order; DOWN is never routed to.
_TIERS = (HealthState.HEALTHY, HealthState.UNKNOWN, HealthState.DEGRADED)
_DOWN = HealthState.DOWN
_WEIGHTED_RANDOM = Policy.WEIGHTED_RANDOM  # module constants: an enum member lookup per
_LEAST_OUTSTANDING = Policy.LEAST_OUTSTANDING  # call is measurable on the route path


@dataclass(frozen=True, slots=True)
class Candidate:
    """One routable instance as the service sees it right now."""

    name: str
    weight: float
    state: HealthState
    outstanding: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"{self.name}: weight must be a finite number > 0")
        if self.outstanding < 0:
            raise ValueError(f"{self.name}: outstanding must be >= 0")


SkipReason = Literal["down", "already_tried", "over_budget", "deadline"]


@dataclass(frozen=True, slots=True)
class Skip:
    """An instance passed over, and why (reported in the response and the logs)."""

    instance: str
    reason: SkipReason


@dataclass(frozen=True, slots=True)
class Plan:
    """The failover order (first is the choice) and the candidates left out of it."""

    order: tuple[str, ...]
    skipped: tuple[Skip, ...]

    @property
    def choice(self) -> str | None:
        """The instance to try first, or None when every candidate is down."""
        return self.order[0] if self.order else None


class Balancer:
    """Orders candidates: healthy, then unknown, then degraded; the policy orders each tier."""

    __slots__ = ("_cursor", "_rng", "policy")

    def __init__(
        self, policy: Policy = DEFAULT_POLICY, *, rng: random.Random | None = None
    ) -> None:
        self.policy = Policy(policy)
        # Load spreading, not cryptography: a seeded Random makes tests deterministic.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._cursor = 0

    def plan(self, candidates: Sequence[Candidate], *, policy: Policy | None = None) -> Plan:
        """The failover order of every non-down candidate; the rotation advances per call."""
        chosen = Policy(policy) if policy is not None else self.policy
        cursor, self._cursor = self._cursor, self._cursor + 1
        order: list[str] = []
        for tier in _TIERS:
            members = [c for c in candidates if c.state is tier]
            if members:
                order += self._order(members, chosen, cursor)
        down = tuple(Skip(c.name, "down") for c in candidates if c.state is _DOWN)
        return Plan(tuple(order), down)

    def _order(self, tier: list[Candidate], policy: Policy, cursor: int) -> list[str]:
        """One tier in policy order; ties in load fall back to the round-robin rotation."""
        if policy is _WEIGHTED_RANDOM:
            # Efraimidis-Spirakis: key u ** (1 / w), largest first, picks w=3 first ~3x as often.
            ranked = sorted(tier, key=lambda c: self._rng.random() ** (1 / c.weight), reverse=True)
            return [c.name for c in ranked]
        rotated = _rotate(tier, cursor)
        if policy is _LEAST_OUTSTANDING:
            rotated.sort(key=lambda c: c.outstanding / c.weight)
        return [c.name for c in rotated]

    def __repr__(self) -> str:
        return f"<Balancer {self.policy} cursor={self._cursor}>"


def _rotate(items: list[Candidate], cursor: int) -> list[Candidate]:
    """``items`` rotated left by ``cursor``, so each call starts one further along."""
    if not items:
        return items
    shift = cursor % len(items)
    return items[shift:] + items[:shift]


def select_next(
    order: Sequence[str], tried: Collection[str], is_down: Callable[[str], bool]
) -> tuple[str | None, list[Skip]]:
    """The next instance to try after a failure, and the instances passed over on the way.

    The first instance of ``order`` that is neither tried nor down (health is asked again:
    it may have changed mid-request). When every live instance was tried, the first live one
    is tried again; when all are down, ``None``.
    """
    skips: list[Skip] = []
    fallback: str | None = None
    for name in order:
        if is_down(name):
            skips.append(Skip(name, "down"))
        elif name not in tried:
            return name, skips
        else:
            fallback = name if fallback is None else fallback
            skips.append(Skip(name, "already_tried"))
    return fallback, [skip for skip in skips if skip.instance != fallback]
