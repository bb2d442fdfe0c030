"""Probe and live-request outcomes -> the healthy / degraded / down state of one instance.

The record decides; the service probes, logs and routes. Each ``record_*`` method returns
the :class:`HealthChanged` event of the transition it caused, or ``None``, so the caller can
hand it to structlog without comparing states itself. Time is the ``now`` passed in
(monotonic seconds): nothing here reads a clock.

Transitions::

    probe ok (fast)             any      -> healthy    recovery is owned by probes
    probe ok (slow / degraded)  any      -> degraded
    probe refused               any      -> down       at once
    probe timeout / error       up       -> degraded   until failure_threshold in a row, then down
    request refused / timeout   up       -> down       at once, re-probed after down_backoff
    request error               any      -> (none)     an instance that answers is alive
    request ok                  unknown  -> healthy
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

__all__ = [
    "DEFAULT_DEGRADED_LATENCY",
    "DEFAULT_DOWN_BACKOFF",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_PROBE_INTERVAL",
    "DEFAULT_PROBE_TIMEOUT",
    "FailureKind",
    "HealthChanged",
    "HealthPolicy",
    "HealthState",
    "HealthVerdicts",
    "InstanceHealth",
]

DEFAULT_PROBE_INTERVAL = 60.0
DEFAULT_PROBE_TIMEOUT = 5.0
DEFAULT_DEGRADED_LATENCY = 1.0
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_DOWN_BACKOFF = 1.0


class HealthState(StrEnum):
    """What the balancer knows about an instance; UNKNOWN until the first probe or request."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"


class FailureKind(StrEnum):
    """How an attempt failed; the kind, not the message, decides the transition."""

    REFUSED = "refused"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    """How often to probe and when to call an instance degraded or down (seconds)."""

    interval: float = DEFAULT_PROBE_INTERVAL
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    degraded_latency: float = DEFAULT_DEGRADED_LATENCY
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    down_backoff: float = DEFAULT_DOWN_BACKOFF

    def __post_init__(self) -> None:
        if not (self.interval > 0 and self.probe_timeout > 0 and self.down_backoff > 0):
            raise ValueError("interval, probe_timeout and down_backoff must be > 0")
        if self.degraded_latency < 0 or self.failure_threshold < 1:
            raise ValueError("degraded_latency must be >= 0 and failure_threshold >= 1")

    def down_delay(self, streak: int) -> float:
        """Re-probe delay of a down instance: ``min(interval, down_backoff * 2 ** streak)``.

        ``streak`` counts failed probes since the instance went down (0 for the first
        re-probe), so a dead instance is retried quickly at first and then once per interval.
        """
        try:
            return min(self.interval, self.down_backoff * 2.0**streak)
        except OverflowError:
            return self.interval


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """A state transition, handed to hooks and logged as ``orchestrator.health_changed``."""

    instance: str
    old: HealthState
    new: HealthState
    reason: str
    at: float


class HealthVerdicts(Protocol):
    """One instance's health verdict, as the core reads and feeds it. :class:`InstanceHealth`
    is the in-memory implementation; a shared one (verdicts agreed across replicas) only
    has to keep this shape for routing, fanout and the monitor to use it unchanged."""

    instance: str
    state: HealthState
    consecutive_failures: int
    last_check: float | None
    last_latency: float | None
    last_error: str | None
    last_change: float | None
    next_probe_at: float

    def record_probe_success(
        self, latency: float, now: float, *, degraded: bool = False, detail: str | None = None
    ) -> HealthChanged | None:
        """A probe answered."""
        ...

    def record_probe_failure(
        self, kind: FailureKind, error: str, now: float
    ) -> HealthChanged | None:
        """A probe failed."""
        ...

    def record_request_success(self, latency: float, now: float) -> HealthChanged | None:
        """A live request succeeded."""
        ...

    def record_request_failure(
        self, kind: FailureKind, error: str, now: float
    ) -> HealthChanged | None:
        """A live request failed."""
        ...

    def is_due(self, now: float) -> bool:
        """Whether the prober should probe this instance now."""
        ...

    def is_down(self) -> bool:
        """Whether the balancer must leave this instance out."""
        ...


class InstanceHealth:
    """Mutable health record of one instance; each ``record_*`` returns the transition, if any."""

    __slots__ = (
        "_down_streak",
        "consecutive_failures",
        "instance",
        "last_change",
        "last_check",
        "last_error",
        "last_latency",
        "next_probe_at",
        "policy",
        "state",
    )

    def __init__(self, instance: str, policy: HealthPolicy) -> None:
        self.instance = instance
        self.policy = policy
        self.state = HealthState.UNKNOWN
        self.consecutive_failures = 0
        self.last_check: float | None = None
        self.last_latency: float | None = None
        self.last_error: str | None = None
        self.last_change: float | None = None
        self.next_probe_at = 0.0  # probe at once
        self._down_streak = 0

    def record_probe_success(
        self, latency: float, now: float, *, degraded: bool = False, detail: str | None = None
    ) -> HealthChanged | None:
        """A probe answered: healthy, or degraded when it says so or answered slowly.

        A degraded probe's ``detail`` (why: "misconfigured: …", "not ready: …") becomes
        ``last_error``, so health detail shows it; a healthy probe clears ``last_error``.

        A probe sent (``now - latency``) before the instance went down is older news than
        that verdict and changes nothing: a live request that timed out while the probe was
        on its way (an instance whose health check answers while its tasks hang) keeps it
        down until the re-probe the verdict scheduled.
        """
        if self.is_down() and self.last_change is not None and now - latency < self.last_change:
            return None
        self.consecutive_failures = 0
        self.last_check, self.last_latency = now, latency
        self.last_error = detail if degraded else None
        self.next_probe_at = now + self.policy.interval
        if degraded:
            reason = f"probe reported degraded: {detail}" if detail else "probe reported degraded"
            return self._move(HealthState.DEGRADED, reason, now)
        if latency > self.policy.degraded_latency:
            slow = f"probe slow: {latency:.3f}s > {self.policy.degraded_latency:.3f}s"
            return self._move(HealthState.DEGRADED, slow, now)
        return self._move(HealthState.HEALTHY, f"probe ok in {latency:.3f}s", now)

    def record_probe_failure(
        self, kind: FailureKind, error: str, now: float
    ) -> HealthChanged | None:
        """A probe failed: refused is down at once, else degraded until the threshold."""
        self.consecutive_failures += 1
        self.last_check, self.last_error = now, error
        if self.is_down():
            self._down_streak += 1
        event = self._move(self._after_probe_failure(kind), self._probe_reason(kind, error), now)
        self.next_probe_at = now + self._probe_delay()
        return event

    def record_request_success(self, latency: float, now: float) -> HealthChanged | None:
        """A live request succeeded: only settles UNKNOWN; probes own every other recovery."""
        if self.state is not HealthState.UNKNOWN:
            return None
        return self._move(HealthState.HEALTHY, f"request ok in {latency:.3f}s", now)

    def record_request_failure(
        self, kind: FailureKind, error: str, now: float
    ) -> HealthChanged | None:
        """A live request failed: refused/timeout is down now (no waiting for a probe)."""
        if kind is FailureKind.ERROR or self.is_down():
            return None
        self.last_error = error
        self.next_probe_at = now + self.policy.down_backoff
        return self._move(HealthState.DOWN, f"request {kind}: {error}", now)

    def is_due(self, now: float) -> bool:
        """Whether the prober should probe this instance now."""
        return now >= self.next_probe_at

    def is_down(self) -> bool:
        """Whether the balancer must leave this instance out."""
        return self.state is HealthState.DOWN

    def _after_probe_failure(self, kind: FailureKind) -> HealthState:
        """A failing probe never lifts DOWN; it reaches DOWN by refusal or the threshold."""
        over = self.consecutive_failures >= self.policy.failure_threshold
        if kind is FailureKind.REFUSED or over or self.is_down():
            return HealthState.DOWN
        return HealthState.DEGRADED

    def _probe_reason(self, kind: FailureKind, error: str) -> str:
        if kind is FailureKind.REFUSED:
            return f"probe refused: {error}"
        return (
            f"probe {kind} ({self.consecutive_failures}/{self.policy.failure_threshold}): {error}"
        )

    def _probe_delay(self) -> float:
        return self.policy.down_delay(self._down_streak) if self.is_down() else self.policy.interval

    def _move(self, new: HealthState, reason: str, now: float) -> HealthChanged | None:
        """Apply a transition; ``None`` when the state does not change."""
        if new is self.state:
            return None
        event = HealthChanged(self.instance, self.state, new, reason, now)
        self.state, self.last_change = new, now
        if new is HealthState.DOWN:
            self._down_streak = 0
        return event

    def __repr__(self) -> str:
        return f"<InstanceHealth {self.instance} {self.state} failures={self.consecutive_failures}>"
