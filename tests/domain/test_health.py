"""The health state machine: probes, live requests, re-probe scheduling and events."""

from __future__ import annotations

import dataclasses

import pytest

from openclaw_orchestrator.domain.health import (
    FailureKind,
    HealthChanged,
    HealthPolicy,
    HealthState,
    InstanceHealth,
)

H, U, G, D = HealthState.HEALTHY, HealthState.UNKNOWN, HealthState.DEGRADED, HealthState.DOWN
REFUSED, TIMEOUT, ERROR = FailureKind.REFUSED, FailureKind.TIMEOUT, FailureKind.ERROR
POLICY = HealthPolicy(interval=60.0, degraded_latency=1.0, failure_threshold=3, down_backoff=1.0)


def health_in(state: HealthState) -> InstanceHealth:
    """A record brought into ``state`` the way production would, at time 0."""
    health = InstanceHealth("A", POLICY)
    if state is H:
        health.record_probe_success(0.1, 0.0)
    elif state is G:
        health.record_probe_success(0.1, 0.0, degraded=True)
    elif state is D:
        health.record_probe_failure(REFUSED, "refused", 0.0)
    assert health.state is state
    return health


def test_starts_unknown_and_due() -> None:
    """A new record is unknown and wants a probe at once."""
    health = InstanceHealth("A", POLICY)
    assert (health.state, health.next_probe_at, health.is_due(0.0)) == (U, 0.0, True)
    assert (health.last_check, health.last_latency, health.last_error, health.last_change) == (
        None,
        None,
        None,
        None,
    )
    assert repr(health) == "<InstanceHealth A unknown failures=0>"


@pytest.mark.parametrize(
    ("start", "latency", "degraded", "expected"),
    [
        (U, 0.1, False, H),
        (U, 1.0, False, H),
        (U, 1.5, False, G),
        (U, 0.1, True, G),
        (D, 0.1, False, H),
        (D, 2.0, False, G),
        (G, 0.1, False, H),
        (H, 3.0, False, G),
    ],
)
def test_probe_success(
    start: HealthState, latency: float, degraded: bool, expected: HealthState
) -> None:
    """A passing probe restores any state: healthy, or degraded when slow or self-reported."""
    health = health_in(start)
    event = health.record_probe_success(latency, 10.0, degraded=degraded)
    assert health.state is expected
    assert (event is None) == (start is expected)
    assert (health.consecutive_failures, health.last_error) == (0, None)
    assert (health.last_check, health.last_latency, health.next_probe_at) == (10.0, latency, 70.0)


@pytest.mark.parametrize(
    ("degraded", "detail", "last_error", "reason"),
    [
        (
            True,
            "misconfigured: token",
            "misconfigured: token",
            "probe reported degraded: misconfigured: token",
        ),
        (True, None, None, "probe reported degraded"),
        (False, "ignored when healthy", None, "probe ok in 0.100s"),
    ],
)
def test_probe_success_detail(
    degraded: bool, detail: str | None, last_error: str | None, reason: str
) -> None:
    """A degraded probe's detail becomes last_error and the reason; a healthy one clears it."""
    health = health_in(D)
    event = health.record_probe_success(0.1, 10.0, degraded=degraded, detail=detail)
    assert event is not None
    assert (health.last_error, event.reason) == (last_error, reason)


@pytest.mark.parametrize(
    ("kinds", "states"),
    [
        ([REFUSED], [D]),
        ([TIMEOUT, ERROR, TIMEOUT], [G, G, D]),
        ([ERROR, REFUSED], [G, D]),
        ([REFUSED, ERROR, TIMEOUT], [D, D, D]),
    ],
)
def test_probe_failures(kinds: list[FailureKind], states: list[HealthState]) -> None:
    """Refused is down at once; timeouts and errors degrade until the threshold; down stays down."""
    health = InstanceHealth("A", POLICY)
    seen = []
    for n, kind in enumerate(kinds, start=1):
        health.record_probe_failure(kind, f"boom {n}", float(n))
        seen.append(health.state)
    assert seen == states
    assert health.consecutive_failures == len(kinds)
    assert (health.last_error, health.last_check) == (f"boom {len(kinds)}", float(len(kinds)))


def test_success_resets_the_failure_count() -> None:
    """Failures must be consecutive to take an instance down."""
    health = InstanceHealth("A", POLICY)
    for now in (1.0, 2.0):
        health.record_probe_failure(TIMEOUT, "slow", now)
    health.record_probe_success(0.1, 3.0)
    health.record_probe_failure(TIMEOUT, "slow", 4.0)
    assert (health.state, health.consecutive_failures) == (G, 1)


def test_down_instances_are_reprobed_with_capped_exponential_backoff() -> None:
    """Re-probe delays go 1, 2, 4, ... after going down and never exceed the interval."""
    health = InstanceHealth("A", POLICY)
    delays = []
    now = 0.0
    for _ in range(10):
        health.record_probe_failure(TIMEOUT, "no answer", now)
        delays.append(health.next_probe_at - now)
        now = health.next_probe_at
    assert delays == [60.0, 60.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_recovery_restarts_the_backoff() -> None:
    """After coming back, the next outage starts again at down_backoff."""
    health = health_in(D)
    for now in (1.0, 2.0):
        health.record_probe_failure(REFUSED, "refused", now)
    health.record_probe_success(0.1, 3.0)
    health.record_probe_failure(REFUSED, "refused", 4.0)
    assert health.next_probe_at == 5.0


@pytest.mark.parametrize(
    ("start", "kind", "expected"),
    [
        (H, REFUSED, D),
        (H, TIMEOUT, D),
        (H, ERROR, H),
        (U, TIMEOUT, D),
        (G, REFUSED, D),
        (G, ERROR, G),
    ],
)
def test_request_failure(start: HealthState, kind: FailureKind, expected: HealthState) -> None:
    """A refused or timed-out live request marks down at once; an error reply does not."""
    health = health_in(start)
    before = health.next_probe_at
    event = health.record_request_failure(kind, "live", 5.0)
    assert health.state is expected
    if expected is D:
        assert event == HealthChanged("A", start, D, f"request {kind}: live", 5.0)
        assert (health.next_probe_at, health.last_error) == (6.0, "live")
    else:
        assert (event, health.next_probe_at) == (None, before)


def test_request_failure_when_already_down_changes_nothing() -> None:
    """A late failure report keeps the backoff schedule the probes set."""
    health = health_in(D)
    assert health.record_request_failure(TIMEOUT, "late", 0.5) is None
    assert health.next_probe_at == 1.0


def test_probe_after_passive_down_continues_the_backoff() -> None:
    """The first re-probe after a live failure is at down_backoff, the next at twice that."""
    health = health_in(H)
    health.record_request_failure(REFUSED, "refused", 10.0)
    assert health.next_probe_at == 11.0
    health.record_probe_failure(REFUSED, "refused", 11.0)
    assert health.next_probe_at == 13.0


def test_a_probe_sent_before_a_passive_down_does_not_bring_it_back() -> None:
    """A probe sent at 10.0 that answers at 10.3, after a request timed out at 10.2: stale,
    the instance stays down until its re-probe; a probe sent after the verdict counts."""
    health = health_in(H)
    health.record_request_failure(TIMEOUT, "hung", 10.2)
    assert health.record_probe_success(0.3, 10.3) is None
    assert (health.state, health.next_probe_at) == (D, 11.2)
    event = health.record_probe_success(0.1, 11.3)
    assert event is not None
    assert health.state is H


@pytest.mark.parametrize(
    ("start", "expected"),
    [(U, H), (H, H), (G, G), (D, D)],
)
def test_request_success(start: HealthState, expected: HealthState) -> None:
    """A live success only settles UNKNOWN; probes own recovery from degraded and down."""
    health = health_in(start)
    event = health.record_request_success(0.2, 5.0)
    assert health.state is expected
    assert (event is None) == (start is expected)


def test_transitions_return_events_and_stamp_last_change() -> None:
    """Each change returns one event with old, new, reason and time; no change returns None."""
    health = InstanceHealth("A", POLICY)
    first = health.record_probe_success(0.25, 1.0)
    assert first == HealthChanged("A", U, H, "probe ok in 0.250s", 1.0)
    assert health.record_probe_success(0.25, 2.0) is None
    assert health.last_change == 1.0
    slow = health.record_probe_success(1.5, 3.0)
    assert slow == HealthChanged("A", H, G, "probe slow: 1.500s > 1.000s", 3.0)
    down = health.record_probe_failure(REFUSED, "connection refused", 4.0)
    assert down == HealthChanged("A", G, D, "probe refused: connection refused", 4.0)
    assert health.last_change == 4.0


def test_failure_reason_counts_towards_the_threshold() -> None:
    """A degrading probe failure says how close the instance is to down."""
    event = InstanceHealth("A", POLICY).record_probe_failure(TIMEOUT, "5s passed", 1.0)
    assert event is not None
    assert event.reason == "probe timeout (1/3): 5s passed"


@pytest.mark.parametrize(
    ("next_probe_at", "now", "due"),
    [(0.0, 0.0, True), (10.0, 9.99, False), (10.0, 10.0, True), (10.0, 11.0, True)],
)
def test_is_due(next_probe_at: float, now: float, due: bool) -> None:
    """A probe is due once its scheduled time has come."""
    health = InstanceHealth("A", POLICY)
    health.next_probe_at = next_probe_at
    assert health.is_due(now) is due


def test_repr_shows_live_state() -> None:
    """The repr shows the name, state and failure count."""
    health = InstanceHealth("B", POLICY)
    health.record_probe_failure(ERROR, "500", 1.0)
    assert repr(health) == "<InstanceHealth B degraded failures=1>"
    assert health.is_down() is False


@pytest.mark.parametrize(
    "knobs",
    [
        {"interval": 0.0},
        {"probe_timeout": -1.0},
        {"down_backoff": 0.0},
        {"degraded_latency": -0.1},
        {"failure_threshold": 0},
    ],
)
def test_policy_rejects_nonsense(knobs: dict[str, float]) -> None:
    """Zero intervals or thresholds would busy-loop or never fail; they are refused."""
    with pytest.raises(ValueError, match="must be"):
        HealthPolicy(**knobs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("streak", "delay"), [(0, 1.0), (3, 8.0), (6, 60.0), (100_000, 60.0)])
def test_down_delay(streak: int, delay: float) -> None:
    """min(interval, down_backoff * 2 ** streak), even for streaks that overflow a float."""
    assert POLICY.down_delay(streak) == delay


def test_events_and_policy_are_frozen() -> None:
    """Events handed to hooks and the shared policy cannot be mutated."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        POLICY.interval = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        HealthChanged("A", U, H, "ok", 0.0).new = D  # type: ignore[misc]
