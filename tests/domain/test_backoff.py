"""Retry decisions: the jittered backoff formula, retryability and the retry budget."""

from __future__ import annotations

import dataclasses
import random

import pytest

from openclaw_orchestrator.domain.backoff import (
    AttemptState,
    GiveUp,
    RetryAfter,
    RetryBudget,
    RetryPolicy,
    RetryRules,
    RetryScheduled,
    compute_backoff,
    is_retryable,
)
from openclaw_orchestrator.errors import (
    AggregationError,
    InstanceDownError,
    InstanceError,
    InstanceProtocolError,
    InstanceRejectedError,
    InvalidRequestError,
    NoHealthyInstanceError,
    OrchestratorError,
    TimeoutExceededError,
)

POLICY = RetryPolicy(base=0.05, cap=2.0, multiplier=2.0)


@pytest.mark.parametrize(
    ("retry", "ceiling"),
    [(1, 0.05), (2, 0.1), (3, 0.2), (5, 0.8), (6, 1.6), (7, 2.0), (50, 2.0), (100_000, 2.0)],
)
def test_backoff_is_full_jitter_under_the_capped_ceiling(retry: int, ceiling: float) -> None:
    """delay = uniform(0, min(cap, base * multiplier ** (retry - 1))), even past float range."""
    rng = random.Random(retry)
    delays = [compute_backoff(retry, POLICY, rng) for _ in range(500)]
    assert all(0.0 <= delay <= ceiling for delay in delays)
    assert max(delays) > ceiling * 0.9  # the jitter spans the whole range
    assert compute_backoff(retry, POLICY, random.Random(3)) == random.Random(3).uniform(0, ceiling)


@pytest.mark.parametrize(
    ("policy", "retry_after", "low", "high"),
    [
        (POLICY, 5.0, 5.0, 5.0),
        (POLICY, 0.01, 0.01, 0.05),
        (POLICY, -3.0, 0.0, 0.05),
        (RetryPolicy.no_wait(), 5.0, 0.0, 0.0),
        (RetryPolicy(base=0.0, cap=0.0), 1.5, 1.5, 1.5),
    ],
)
def test_retry_after_stretches_the_delay(
    policy: RetryPolicy, retry_after: float, low: float, high: float
) -> None:
    """A Retry-After is a floor on the delay (never negative); the testing mode ignores it."""
    delay = compute_backoff(1, policy, random.Random(0), retry_after=retry_after)
    assert low <= delay <= high


@pytest.mark.parametrize("retry", [1, 2, 10, 1000])
def test_no_wait_never_waits(retry: int) -> None:
    """The testing policy keeps the retry count and waits zero seconds."""
    policy = RetryPolicy.no_wait(max_retries=5)
    assert policy.max_retries == 5
    assert compute_backoff(retry, policy, random.Random(retry)) == 0.0


@pytest.mark.parametrize("retry", [0, -1])
def test_backoff_counts_retries_from_one(retry: int) -> None:
    """Retry 0 is the first attempt, which never waits; asking for it is a bug."""
    with pytest.raises(ValueError, match="retry counts from 1"):
        compute_backoff(retry, POLICY, random.Random(0))


@pytest.mark.parametrize(
    "knobs",
    [{"max_retries": -1}, {"base": -0.1}, {"cap": -1.0}, {"multiplier": 0.5}],
)
def test_policy_rejects_nonsense(knobs: dict[str, float]) -> None:
    """Negative counts or delays and shrinking multipliers are refused."""
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**knobs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("retry", "allowed"), [(0, False), (1, True), (3, True), (4, False)])
def test_can_retry_within_max_retries(retry: int, allowed: bool) -> None:
    """Retries are numbered 1..max_retries."""
    assert RetryPolicy(max_retries=3).can_retry(retry) is allowed


def _instance_error(status: int | None) -> InstanceError:
    return InstanceError("upstream said no", instance="A", upstream_status=status)


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (InstanceDownError("refused", instance="A"), True),
        (TimeoutExceededError("too slow", instance="A"), True),
        (_instance_error(429), True),
        (_instance_error(502), True),
        (_instance_error(503), True),
        (_instance_error(504), True),
        (_instance_error(500), False),
        (_instance_error(400), False),
        (_instance_error(404), False),
        (_instance_error(None), False),
        (InstanceRejectedError("bad payload", instance="A", upstream_status=429), False),
        (InstanceProtocolError("not json", instance="A", upstream_status=502), False),
        (NoHealthyInstanceError("all down"), False),
        (AggregationError("cannot merge"), False),
        (InvalidRequestError("bad", field="targets"), False),
        (OrchestratorError("internal", upstream_status=503), False),
        (TimeoutError(), False),
        (ConnectionRefusedError(), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_is_retryable(exc: BaseException, retryable: bool) -> None:
    """Down, timeout and 429/502/503/504 replies retry; everything else is final."""
    assert is_retryable(exc) is retryable


def test_budget_floor_allows_min_retries_without_traffic() -> None:
    """min_retries lets a quiet service retry a few times."""
    budget = RetryBudget(ratio=0.0, min_retries=2)
    assert [budget.try_spend(1.0) for _ in range(3)] == [True, True, False]


def test_budget_grows_with_traffic() -> None:
    """ratio * requests more retries are allowed; a refusal records nothing."""
    budget = RetryBudget(ratio=0.5, min_retries=0)
    assert budget.try_spend(0.0) is False
    for _ in range(4):
        budget.record_request(0.0)
    assert [budget.try_spend(0.5) for _ in range(3)] == [True, True, False]
    budget.record_request(0.5)
    budget.record_request(0.5)
    assert budget.try_spend(0.5) is True


def test_budget_of_zero_never_allows() -> None:
    """ratio 0 and min_retries 0 turn retries off whatever the traffic."""
    budget = RetryBudget(ratio=0.0, min_retries=0)
    for _ in range(100):
        budget.record_request(0.0)
    assert budget.try_spend(0.0) is False


@pytest.mark.parametrize(
    ("later", "allowed"),
    [(0.5, False), (5.0, False), (9.99, False), (10.0, True), (25.0, True)],
)
def test_budget_retries_expire_with_the_window(later: float, allowed: bool) -> None:
    """Spent retries stop counting once their bucket leaves the window."""
    budget = RetryBudget(ratio=0.0, min_retries=1, window=10.0, buckets=10)
    assert budget.try_spend(0.0) is True
    assert budget.try_spend(later) is allowed


@pytest.mark.parametrize(
    ("later", "allowed"),
    [(9.5, True), (10.5, False)],
)
def test_budget_requests_expire_with_the_window(later: float, allowed: bool) -> None:
    """Old traffic stops earning retries once it leaves the window."""
    budget = RetryBudget(ratio=1.0, min_retries=0, window=10.0, buckets=10)
    budget.record_request(0.0)
    assert budget.try_spend(later) is allowed


def test_budget_stays_bounded_over_a_long_run() -> None:
    """Hours of traffic are counted in the same few buckets and only the window counts."""
    budget = RetryBudget(ratio=0.1, min_retries=0, window=10.0, buckets=5)
    spent = 0
    for step in range(36_000):
        now = step * 0.1
        budget.record_request(now)
        spent += budget.try_spend(now)
    assert spent == 3600  # one retry per ten requests, all run long
    assert repr(budget) == "<RetryBudget [retries: 10 | requests: 100] ratio=0.1 min_retries=0>"


def test_budget_repr_shows_the_window() -> None:
    """The repr shows retries and requests in the current window."""
    budget = RetryBudget()
    assert repr(budget) == "<RetryBudget [retries: 0 | requests: 0] ratio=0.2 min_retries=10>"
    for _ in range(3):
        budget.record_request(1.0)
    budget.try_spend(2.0)
    assert repr(budget) == "<RetryBudget [retries: 1 | requests: 3] ratio=0.2 min_retries=10>"


@pytest.mark.parametrize(
    "knobs",
    [{"ratio": -0.1}, {"min_retries": -1}, {"window": 0.0}, {"buckets": 0}],
)
def test_budget_rejects_nonsense(knobs: dict[str, float]) -> None:
    """Negative shares, empty windows and zero buckets are refused."""
    with pytest.raises(ValueError, match="need"):
        RetryBudget(**knobs)  # type: ignore[arg-type]


def test_retry_event_is_frozen() -> None:
    """Hooks receive an immutable event."""
    event = RetryScheduled("A", 1, 0.05, "instance_down")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.delay = 0.0  # type: ignore[misc]


def _state(**overrides: object) -> AttemptState:
    fields: dict[str, object] = {
        "retry": 1,
        "max_retries": 3,
        "deadline": 100.0,
        "failed_target": "A",
        "next_target": "A",
    }
    fields.update(overrides)
    return AttemptState(**fields)  # type: ignore[arg-type]


def _rules(*, min_retries: int = 10) -> RetryRules:
    budget = RetryBudget(ratio=0.0, window=10.0, min_retries=min_retries)
    return RetryRules(RetryPolicy(base=0.1, cap=1.0), budget, random.Random(3))


BUSY = InstanceError("busy", instance="A", upstream_status=503)


@pytest.mark.parametrize(
    ("state", "error", "cause", "reason"),
    [
        (_state(), InstanceRejectedError("no", instance="A"), "final", None),
        (_state(retry=4), BUSY, "exhausted", "gave up after 3 retries"),
        (_state(next_target=None), BUSY, "no_target", None),
        (_state(deadline=0.0), BUSY, "deadline", "deadline reached before the next retry"),
    ],
)
def test_decide_gives_up_with_its_cause(
    state: AttemptState, error: OrchestratorError, cause: str, reason: str | None
) -> None:
    """Each way of giving up is named, with the reason the error's details will carry."""
    decision = _rules().decide(state, error, now=0.0)
    assert decision == GiveUp(cause, reason)  # type: ignore[arg-type]


def test_decide_gives_up_when_the_budget_is_spent() -> None:
    """A retry the budget cannot pay for is not made; one it can is recorded as spent."""
    rules = _rules(min_retries=1)
    assert isinstance(rules.decide(_state(), BUSY, now=0.0), RetryAfter)
    assert rules.decide(_state(), BUSY, now=0.0) == GiveUp("over_budget", "retry budget exhausted")


def test_decide_waits_the_backoff_on_the_same_target() -> None:
    """The same target waits uniform(0, ceiling), stretched to a Retry-After."""
    decision = _rules().decide(_state(retry=2), BUSY, now=0.0)
    assert isinstance(decision, RetryAfter)
    assert 0.0 <= decision.delay <= 0.2
    assert decision.target == "A"
    slow = InstanceError("busy", instance="A", upstream_status=429, retry_after=5.0)
    assert _rules().decide(_state(), slow, now=0.0) == RetryAfter(5.0, "A")


@pytest.mark.parametrize(
    "error", [InstanceDownError("x", instance="A"), TimeoutExceededError("x", instance="A")]
)
def test_decide_fails_over_at_once_after_refusal_or_timeout(error: OrchestratorError) -> None:
    """Failing over from a refused or timed-out instance waits nothing."""
    decision = _rules().decide(_state(next_target="B"), error, now=0.0)
    assert decision == RetryAfter(0.0, "B")


def test_decide_ignores_retry_after_when_failing_over() -> None:
    """Another instance's Retry-After does not hold back a failover to B."""
    slow = InstanceError("busy", instance="A", upstream_status=503, retry_after=50.0)
    decision = _rules().decide(_state(next_target="B"), slow, now=0.0)
    assert isinstance(decision, RetryAfter)
    assert decision.delay <= 0.1
