"""The health monitor: probes every instance on its schedule, keeps the verdicts, expires
silent registrations, and reports every change of verdict.

Passive detection (a live request refused or timed out) is fed by the dispatcher through
the same records and reported by :func:`report_health_change`. With replicas, a ``gate``
(:data:`~.fleet.ProbeGate`) is asked before each probe, so that one replica at a time
probes each instance (:mod:`.shared_fleet`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta

from ...domain.health import FailureKind, HealthChanged, HealthPolicy
from ...errors import (
    InstanceDownError,
    OrchestratorError,
    OverloadedError,
    TimeoutExceededError,
)
from ...models import HealthDetail, TargetExpr
from ..drivers.base import InstanceDriver
from ..logs import get_logger
from ..observability.observer import OFF, Observer
from .clock import Clock, Sleep
from .fleet import ProbeGate
from .interfaces import InstanceRegistry
from .registry import InstanceRecord

__all__ = ["HealthMonitor", "failure_kind", "report_health_change"]

log = get_logger("orchestrator")


def failure_kind(exc: OrchestratorError) -> FailureKind:
    """How an attempt failed, as the health verdicts count it."""
    if isinstance(exc, InstanceDownError):
        return FailureKind.REFUSED
    if isinstance(exc, TimeoutExceededError):
        return FailureKind.TIMEOUT
    return FailureKind.ERROR


def report_health_change(event: HealthChanged | None) -> None:
    """Log a verdict change (``orchestrator.health_changed``); nothing when there was none."""
    if event is not None:
        log.info(
            "orchestrator.health_changed",
            instance=event.instance,
            old=event.old.value,
            new=event.new.value,
            reason=event.reason,
        )


@dataclass(slots=True, eq=False, repr=False)
class HealthMonitor:
    """Probes and verdicts over a registry; a background loop between :meth:`start` and
    :meth:`aclose` (its tasks are the only state that changes)."""

    registry: InstanceRegistry
    drivers: Mapping[str, InstanceDriver]
    policy: HealthPolicy
    _: KW_ONLY
    clock: Clock
    sleep: Sleep
    gate: ProbeGate | None = None
    report: Callable[[HealthChanged | None], None] = report_health_change  # + activity feed
    observer: Observer = OFF  # an instance.probe span and orchestrator_probe_duration_seconds
    _prober: asyncio.Task[None] | None = field(default=None, init=False)
    _probes: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def __repr__(self) -> str:
        running = "running" if self._prober is not None else "stopped"
        return f"<HealthMonitor [{running} | {len(self._probes)} probing]>"

    async def start(self) -> None:
        """Start the background prober (health checks and heartbeat expiry)."""
        if self._prober is None:
            self._prober = asyncio.create_task(self._probe_loop(), name="orchestrator-prober")

    async def aclose(self) -> None:
        """Stop the prober and any probe in flight."""
        tasks = [t for t in (self._prober, *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._prober = None

    def health(self, targets: TargetExpr | None = None) -> dict[str, str]:
        """``{"A": "healthy", ...}`` for the targeted instances."""
        registry = self.registry
        names = registry.resolve(targets, field="instances")
        return {n: registry.get(n).health.state.value for n in names}

    def health_detail(self, targets: TargetExpr | None = None) -> dict[str, HealthDetail]:
        """Per-instance state, latency, last check, failures and last error."""
        names = self.registry.resolve(targets, field="instances")
        return {n: self.registry.get(n).detail(self._to_wall) for n in names}

    def _to_wall(self, mono: float) -> datetime:
        return datetime.now(UTC) - timedelta(seconds=self.clock() - mono)

    async def probe_all(self) -> None:
        """Probe every instance now (start-up, tests, ``health --refresh``)."""
        await asyncio.gather(*(self._probe(rec) for rec in self.registry))

    async def _probe_loop(self) -> None:
        policy = self.policy
        tick = max(0.02, min(1.0, policy.interval / 4, policy.down_backoff / 2))
        while True:
            now = self.clock()
            for gone in self.registry.expire(now):
                log.warning("orchestrator.instance_expired", instance=gone.name)
            for rec in self.registry:
                if not rec.probing and rec.health.is_due(now):
                    rec.probing = True
                    task = asyncio.create_task(self._probe(rec))
                    self._probes.add(task)
                    task.add_done_callback(self._probes.discard)
            await self.sleep(tick)

    async def _probe(self, rec: InstanceRecord) -> None:
        try:
            if self.gate is None or await self.gate(rec):
                await self._observed_probe(rec)
        finally:
            rec.probing = False

    async def _observed_probe(self, rec: InstanceRecord) -> None:
        """:meth:`_probe_now` in an ``instance.probe`` span, its time and outcome counted."""
        observer = self.observer
        if not observer.is_on:
            await self._probe_now(rec)
            return
        started = time.perf_counter()
        with observer.span("instance.probe", {"instance": rec.name}) as span:
            outcome = await self._probe_now(rec)
            if span is not None:
                span.set_attribute("probe.outcome", outcome)
        observer.probe(rec.name, outcome, time.perf_counter() - started)

    async def _probe_now(self, rec: InstanceRecord) -> str:
        """Probe ``rec`` and record the verdict; the outcome: ``ok`` or an error code."""
        driver = self.drivers[rec.spec.driver]
        started = self.clock()
        try:
            result = await driver.probe(rec.spec, timeout=self.policy.probe_timeout)
        except OverloadedError as exc:  # ours (no fd, no buffer): the instance keeps its state
            rec.health.next_probe_at = self.clock() + self.policy.interval
            log.warning("orchestrator.probe_skipped", instance=rec.name, reason=exc.message)
            return exc.code
        except OrchestratorError as exc:
            self.report(
                rec.health.record_probe_failure(failure_kind(exc), exc.message, self.clock())
            )
            return exc.code
        except Exception as exc:  # a defect, ours or a driver's: a failed probe, not a crash
            reason = f"probe failed: {type(exc).__name__}: {exc}"
            log.warning("orchestrator.probe_failed", instance=rec.name, reason=reason)
            self.report(rec.health.record_probe_failure(FailureKind.ERROR, reason, self.clock()))
            return "error"
        else:
            latency = self.clock() - started
            event = rec.health.record_probe_success(
                latency, self.clock(), degraded=result.degraded, detail=result.detail
            )
            self.report(event)
            return "ok"
