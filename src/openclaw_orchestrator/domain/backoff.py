"""Retry decisions: the policy value object, the backoff formula, what is retryable, a budget,
and the one decision every retrying loop obeys.

Everything here decides and nothing waits. After a failed attempt a loop (route failing over
to the next candidate, fanout retrying the same target) describes where it stands as an
:class:`AttemptState` and asks :meth:`RetryRules.decide` for ``(state, error, now)`` ->
:class:`RetryAfter` ``d`` | :class:`GiveUp`; the core then emits :class:`RetryScheduled` to
its hooks and sleeps ``d`` itself (an injected sleep: zero waits in tests, like stamina's
testing mode).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from ..errors import (
    InstanceDownError,
    InstanceError,
    InstanceProtocolError,
    InstanceRejectedError,
    OrchestratorError,
    TimeoutExceededError,
)

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_CAP",
    "DEFAULT_BACKOFF_MULTIPLIER",
    "DEFAULT_MAX_RETRIES",
    "RETRYABLE_UPSTREAM_STATUSES",
    "AttemptState",
    "FleetCounts",
    "GiveUp",
    "GiveUpCause",
    "RetryAfter",
    "RetryBudget",
    "RetryPolicy",
    "RetryRules",
    "RetryScheduled",
    "compute_backoff",
    "is_retryable",
]

DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_BASE = 0.05
DEFAULT_BACKOFF_CAP = 2.0
DEFAULT_BACKOFF_MULTIPLIER = 2.0
RETRYABLE_UPSTREAM_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How many retries and how long between them (seconds).

    ``honor_retry_after`` lets a 429/503 ``Retry-After`` stretch the delay; the zero-wait
    testing policy turns it off so tests never sleep.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    base: float = DEFAULT_BACKOFF_BASE
    cap: float = DEFAULT_BACKOFF_CAP
    multiplier: float = DEFAULT_BACKOFF_MULTIPLIER
    honor_retry_after: bool = True

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.base < 0 or self.cap < 0:
            raise ValueError("max_retries, base and cap must be >= 0")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")

    @classmethod
    def no_wait(cls, max_retries: int = DEFAULT_MAX_RETRIES) -> RetryPolicy:
        """Testing mode: same retry count, zero backoff, ``Retry-After`` ignored."""
        return cls(max_retries=max_retries, base=0.0, cap=0.0, honor_retry_after=False)

    def can_retry(self, retry: int) -> bool:
        """Whether retry number ``retry`` (1 for the first retry) is within ``max_retries``."""
        return 1 <= retry <= self.max_retries


def compute_backoff(
    retry: int, policy: RetryPolicy, rng: random.Random, *, retry_after: float | None = None
) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    Full jitter, so that clients retrying together spread out::

        delay = uniform(0, min(cap, base * multiplier ** (retry - 1)))
        delay = max(delay, retry_after)        # only with a Retry-After and honor_retry_after

    The result is never negative.
    """
    if retry < 1:
        raise ValueError(f"retry counts from 1, got {retry}")
    delay = rng.uniform(0.0, _ceiling(retry, policy))
    if retry_after is not None and policy.honor_retry_after:
        delay = max(delay, retry_after)
    return max(delay, 0.0)


def _ceiling(retry: int, policy: RetryPolicy) -> float:
    """``min(cap, base * multiplier ** (retry - 1))``, without overflowing on huge retries."""
    try:
        return min(policy.cap, policy.base * policy.multiplier ** (retry - 1))
    except OverflowError:
        return policy.cap


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt (perhaps on another instance) might succeed.

    Unreachable and timed-out instances are retryable, and so are instance replies of 429,
    502, 503 and 504. A refused payload (4xx), an unparseable reply, a 500 and anything that
    is not an instance error (``NoHealthyInstanceError`` included) are final.
    """
    if isinstance(exc, InstanceDownError | TimeoutExceededError):
        return True
    if isinstance(exc, InstanceRejectedError | InstanceProtocolError):
        return False
    return isinstance(exc, InstanceError) and exc.upstream_status in RETRYABLE_UPSTREAM_STATUSES


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """A retry the core is about to wait for, handed to every retry hook; a route's is
    logged as ``orchestrator.retry_scheduled``."""

    instance: str
    retry: int
    delay: float
    error_code: str
    request_id: str = ""
    operation: Literal["route", "fanout"] = "route"


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetCounts:
    """What the other replicas counted over the window, as last read from the database
    they share: their first attempts and retries, how many replicas are counting (this one
    included), this replica's ``rank`` among them (0-based, the same order on every
    replica), a ``turn`` that every replica agrees on (the database's time bucket), the
    retries the others were ``granted`` and may still spend (counted in nobody's
    ``retries`` yet) and how many replicas are ``sharing`` the headroom: those that want
    retries (None: all; 0: this one does not want any, and ``rank`` is among the sharing)."""

    requests: int
    retries: int
    replicas: int = 1
    rank: int = 0
    turn: int = 0
    granted: int = 0
    sharing: int | None = None


class RetryBudget:
    """Caps retries to a share of recent traffic so retries cannot amplify an outage.

    A retry is allowed while ``retries < min_retries + ratio * requests``, both counted over
    a sliding ``window`` of seconds kept as ``buckets`` fixed-width time buckets (memory is
    O(buckets); the window is exact to one bucket width). Only first attempts are passed to
    :meth:`record_request`; :meth:`try_spend` records the retries it allows.

    **A fleet.** Replicas sharing one budget each keep their own counts; a syncer publishes
    them (:attr:`counted`) and hands back the others' with :meth:`observe_fleet`. The check
    then adds the others' counts, and, since theirs are a little stale, each replica may
    spend only the units it was granted at its last sync (:meth:`deal`)::

        headroom = min_retries + ratio * fleet_requests - fleet_retries   (at the sync)
        units    = ceil(headroom), dealt round-robin from ``turn`` over the replicas
                   that want retries (spent or were refused some lately)
        grant    = min(my_units, floor(headroom - what the others hold granted))
        allowed  = spent_since_sync + 1 <= grant + ratio * my_requests_since_sync

    The syncer deals and records grants one replica at a time (the database serializes
    them), and a replica's grant is replaced only at its own sync, which publishes what it
    spent from it: so the grants held at any moment never add up to more than the fleet's
    headroom, however stale each replica's view. A view older than the window is ignored
    (the syncer stopped): the budget is local again.
    """

    __slots__ = (
        "_epochs",
        "_fleet",
        "_latest",
        "_mark",
        "_requests",
        "_retries",
        "_seen_at",
        "_share",
        "_tight",
        "_totals_ever",
        "_width",
        "min_retries",
        "ratio",
    )

    def __init__(
        self, *, ratio: float = 0.2, window: float = 10.0, min_retries: int = 10, buckets: int = 10
    ) -> None:
        if ratio < 0 or min_retries < 0 or not window > 0 or buckets < 1:
            raise ValueError("need ratio >= 0, min_retries >= 0, window > 0 and buckets >= 1")
        self.ratio = ratio
        self.min_retries = min_retries
        self._width = window / buckets
        self._epochs: list[int | None] = [None] * buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._latest: int | None = None  # newest bucket seen, for __repr__
        self._totals_ever = [0, 0, 0]  # first attempts, retries, share refusals: ever
        self._fleet: FleetCounts | None = None
        self._seen_at = 0.0
        self._mark = (0, 0)  # _totals_ever at the last sync
        self._share = 0
        self._tight = False

    @property
    def width(self) -> float:
        """Seconds per bucket."""
        return self._width

    @property
    def buckets(self) -> int:
        """Buckets in the window."""
        return len(self._epochs)

    @property
    def counted(self) -> tuple[int, int]:
        """``(first attempts, retries)`` counted here since creation: a syncer publishes
        the difference since its last publication."""
        return self._totals_ever[0], self._totals_ever[1]

    @property
    def share_refusals(self) -> int:
        """Retries refused only because this replica's share was spent (the fleet had
        headroom): a syncer syncs early when it grows, to be dealt a new share."""
        return self._totals_ever[2]

    @property
    def is_tight(self) -> bool:
        """Whether the fleet's headroom at the last sync was under two retries per replica:
        then every first attempt is news worth syncing soon (it earns the fleet a share)."""
        return self._fleet is not None and self._tight

    def record_request(self, now: float) -> None:
        """Count one first attempt at ``now``."""
        self._requests[self._slot(now)] += 1
        self._totals_ever[0] += 1

    def deal(self, fleet: FleetCounts, now: float) -> int:
        """The retries this replica may be granted at ``now``, given the others' counts and
        grants: its round-robin units of the fleet's headroom, no more than what the
        others' grants leave (class docstring)."""
        sharing = fleet.replicas if fleet.sharing is None else fleet.sharing
        if sharing < 1:
            return 0
        units = self._units(fleet, now)
        first = (fleet.rank - fleet.turn) % sharing  # the first unit dealt to this replica
        mine = 0 if first >= units else (units - 1 - first) // sharing + 1
        free = math.floor(self._headroom(fleet, now) - fleet.granted)
        return max(0, min(mine, free))

    def observe_fleet(self, fleet: FleetCounts, now: float, *, granted: int | None = None) -> None:
        """The other replicas' counts as of ``now`` and the retries this replica was
        ``granted`` (:meth:`deal` when not given); what is counted from now on is spent
        from, and earns into, that grant. The syncer calls it with the counts it publishes
        in the same step, so nothing spent falls between the grant and the counts."""
        units = self._units(fleet, now)
        replicas = max(fleet.replicas, 1)
        self._share = self.deal(fleet, now) if granted is None else granted
        self._tight = replicas > 1 and units < 2 * replicas
        self._fleet, self._seen_at, self._mark = fleet, now, self.counted

    def withdraw_grant(self) -> None:
        """Spend nothing more from the grant (its record may not have been written): only
        what first attempts counted from now on earn, until the next sync."""
        self._share, self._mark = 0, self.counted

    def _headroom(self, fleet: FleetCounts, now: float) -> float:
        requests, retries = self._totals(self._epoch(now))
        headroom = self.min_retries + self.ratio * (requests + fleet.requests)
        return headroom - (retries + fleet.retries)

    def _units(self, fleet: FleetCounts, now: float) -> int:
        headroom = self._headroom(fleet, now)
        return math.ceil(headroom) if headroom > 0 else 0

    def try_spend(self, now: float) -> bool:
        """Record one retry and return True if the budget allows it; else record nothing."""
        requests, retries = self._totals(self._epoch(now))
        fleet = self._fleet
        if fleet is not None and now - self._seen_at > self._width * len(self._epochs):
            fleet = self._fleet = None  # stale: the syncer stopped
        if fleet is not None:
            requests, retries = requests + fleet.requests, retries + fleet.retries
        if retries >= self.min_retries + self.ratio * requests:
            return False
        if fleet is not None and fleet.replicas > 1 and not self._within_share():
            self._totals_ever[2] += 1
            return False
        self._retries[self._slot(now)] += 1
        self._totals_ever[1] += 1
        return True

    def _within_share(self) -> bool:
        """Whether one more retry stays within this replica's share since the last sync."""
        spent = self._totals_ever[1] - self._mark[1]
        earned = self.ratio * (self._totals_ever[0] - self._mark[0])
        return spent + 1 <= self._share + earned

    def _slot(self, now: float) -> int:
        """The bucket for ``now``, emptied first when it still holds an expired epoch."""
        epoch = self._epoch(now)
        slot = epoch % len(self._epochs)
        if self._epochs[slot] != epoch:
            self._epochs[slot], self._requests[slot], self._retries[slot] = epoch, 0, 0
        self._latest = epoch if self._latest is None else max(self._latest, epoch)
        return slot

    def _totals(self, epoch: int) -> tuple[int, int]:
        """(requests, retries) in the buckets of the window ending in bucket ``epoch``."""
        size = len(self._epochs)
        live = [i for i, e in enumerate(self._epochs) if e is not None and 0 <= epoch - e < size]
        return sum(self._requests[i] for i in live), sum(self._retries[i] for i in live)

    def _epoch(self, now: float) -> int:
        return math.floor(now / self._width)

    def __repr__(self) -> str:
        latest = self._latest
        requests, retries = (0, 0) if latest is None else self._totals(latest)
        fleet = self._fleet
        others = "" if fleet is None else f" fleet: +{fleet.retries}/+{fleet.requests}"
        return (
            f"<RetryBudget [retries: {retries} | requests: {requests}]{others}"
            f" ratio={self.ratio} min_retries={self.min_retries}>"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptState:
    """Where a retrying operation stands right after a failed attempt.

    ``retry`` is the number the next try would have (the failed attempts so far: 1 after
    the first). ``next_target`` is where it would go (None: nowhere left); when it is not
    ``failed_target`` the retry is a failover.
    """

    retry: int
    max_retries: int
    deadline: float
    failed_target: str
    next_target: str | None

    @property
    def is_failover(self) -> bool:
        """Whether the retry goes to another instance than the one that just failed."""
        return self.next_target != self.failed_target


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Retry on ``target`` after waiting ``delay`` seconds."""

    delay: float
    target: str


GiveUpCause = Literal["final", "exhausted", "no_target", "over_budget", "deadline"]


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop retrying; the last error passes through. ``reason`` is what the error's details
    say about it (None: the error speaks for itself)."""

    cause: GiveUpCause
    reason: str | None = None


class RetryRules:
    """The one retry decision: policy, budget and jitter, over ``(state, error, now)``.

    Checked in this order, the first that applies giving up::

        not is_retryable(error)         -> final
        state.retry > max_retries       -> exhausted   "gave up after N retries"
        no next target                  -> no_target
        budget cannot spend one retry   -> over_budget "retry budget exhausted"
        delay = compute_backoff(retry)  (Retry-After only on the same target;
                                         0 when failing over from refused / timed out)
        now + delay >= deadline         -> deadline    "deadline reached before the next retry"
        else                            -> RetryAfter(delay, next target)

    A refused or timed-out attempt failing over waits nothing: nothing was delivered, and
    the next instance is not the one in trouble.
    """

    __slots__ = ("_rng", "budget", "policy")

    def __init__(self, policy: RetryPolicy, budget: RetryBudget, rng: random.Random) -> None:
        self.policy = policy
        self.budget = budget
        self._rng = rng

    def record_request(self, now: float) -> None:
        """Count a first attempt toward the budget (retries spend it)."""
        self.budget.record_request(now)

    def decide(
        self, state: AttemptState, error: OrchestratorError, now: float
    ) -> RetryAfter | GiveUp:
        """Retry after ``d`` seconds, or give up; spends one retry from the budget when
        it passes that check."""
        if not is_retryable(error):
            return GiveUp("final")
        if state.retry > state.max_retries:
            return GiveUp("exhausted", f"gave up after {state.max_retries} retries")
        target = state.next_target
        if target is None:
            return GiveUp("no_target")
        if not self.budget.try_spend(now):
            return GiveUp("over_budget", "retry budget exhausted")
        failover = state.is_failover
        retry_after = None if failover else error.retry_after
        delay = compute_backoff(state.retry, self.policy, self._rng, retry_after=retry_after)
        if failover and isinstance(error, InstanceDownError | TimeoutExceededError):
            delay = 0.0
        if now + delay >= state.deadline:
            return GiveUp("deadline", "deadline reached before the next retry")
        return RetryAfter(delay, target)

    def __repr__(self) -> str:
        return f"<RetryRules {self.policy!r} {self.budget!r}>"
