"""The metric families of one app, on a registry of its own (never prometheus-client's
global one: tests and ``uvicorn --workers`` start many apps, each counting its own).

Every family is counted by a hook of :class:`~.observer.Observer`; the fleet's live state
(health verdicts, in-flight work, probe ownership, the leader and session and run leases
this replica holds) is read only when scraped (:class:`FleetCollector`), so it costs
nothing between scrapes. Labels are bounded: route
templates (never raw paths), instance names (bounded by the registry), states, outcome
codes and the replica id; never a session id or a payload.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ...domain.health import HealthState

__all__ = [
    "LATENCY_BUCKETS",
    "SIZE_BUCKETS",
    "CounterFamily",
    "FleetCollector",
    "FleetView",
    "HeldLeases",
    "HistogramFamily",
    "Metrics",
]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
"""Seconds: from a loopback round trip to a long agent turn."""

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Counts: a fanout's targets, a group commit's items."""


@dataclass(frozen=True, slots=True)
class HeldLeases:
    """The shared work this replica holds now, as a scrape reads it: per leader role
    (``session-sweeper``) whether it leads; how many session leases and run leases it holds
    (None: not on this engine, e.g. session leases with SQLite, or no store at all)."""

    leaders: Mapping[str, bool] = field(default_factory=dict)
    session_leases: int | None = None
    run_leases: int | None = None


class FleetView(Protocol):
    """What the scrape reads from the orchestrator (the in-memory registry's records)."""

    def fleet_rows(self) -> Iterable[tuple[str, str, int, bool]]:
        """``(instance, health state, in-flight calls, probed by this replica)`` rows."""
        ...

    def held_leases(self) -> HeldLeases:
        """The leader roles and the session and run leases this replica holds now."""
        ...


class CounterFamily:
    """A counter family whose hot path is one dict update: counted in plain floats (the
    event loop is its only writer; the SQLite writer thread is the only writer of the
    commit families) and turned into Prometheus samples only when scraped. prometheus-
    client's own ``Counter`` takes a lock and a label lookup per increment: several times
    the cost, on every request."""

    __slots__ = ("doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self.values: dict[tuple[object, ...], float] = {}

    def __repr__(self) -> str:
        return f"<CounterFamily {self.name}_total [{len(self.values)} series]>"

    def inc(self, key: tuple[object, ...], amount: float = 1.0) -> None:
        """Add ``amount`` to the series of label values ``key``."""
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def collect(self) -> Metric:
        """The family as it is now (label values as strings)."""
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, count in list(self.values.items()):  # a copy: another thread may add
            family.add_metric([str(v) for v in key], count)
        return family


class HistogramFamily:
    """A histogram family counted like :class:`CounterFamily`: per series, one count per
    bucket (the first upper bound at or above the value, or +Inf) and the sum; cumulated
    only when scraped."""

    __slots__ = ("bounds", "doc", "labels", "name", "series")

    def __init__(
        self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self.bounds = tuple(float(b) for b in buckets)
        self.series: dict[tuple[object, ...], list[float]] = {}
        """label values -> [count per bucket ..., count over the last bound, sum]"""

    def __repr__(self) -> str:
        return f"<HistogramFamily {self.name} [{len(self.series)} series]>"

    def observe(self, key: tuple[object, ...], value: float) -> None:
        """Count ``value`` in the series of label values ``key``."""
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def collect(self) -> Metric:
        """The family as it is now: cumulative ``le`` buckets, ``+Inf``, the sum."""
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        edges = [repr(b) for b in self.bounds] + ["+Inf"]  # 0.005, 1.0: as Prometheus writes
        for key, counts in list(self.series.items()):
            cumulative, running = [], 0.0
            for edge, count in zip(edges, counts[:-1], strict=True):
                running += count
                cumulative.append((edge, running))
            family.add_metric([str(v) for v in key], cumulative, counts[-1])
        return family


class Metrics(Collector):
    """The families (``orchestrator_*``) and the cheap calls that count into them; a
    collector of its own registry, which it reads only when scraped."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.requests = CounterFamily(
            "orchestrator_requests",
            "HTTP requests served, by route template, method and status code.",
            ["endpoint", "method", "code"],
        )
        self.request_seconds = HistogramFamily(
            "orchestrator_request_duration_seconds",
            "Time to serve an HTTP request (a stream: until its end), by route template.",
            ["endpoint"],
            LATENCY_BUCKETS,
        )
        self.attempts = CounterFamily(
            "orchestrator_attempts",
            "Calls to instances (route and session attempts, fanout targets' tries), by "
            "instance and outcome (ok, cancelled or the error code).",
            ["instance", "outcome"],
        )
        self.attempt_seconds = HistogramFamily(
            "orchestrator_attempt_duration_seconds",
            "Time of one call to an instance, by instance.",
            ["instance"],
            LATENCY_BUCKETS,
        )
        self.retries = CounterFamily(
            "orchestrator_retries",
            "Retries scheduled, by the instance retried to and the operation (route, fanout).",
            ["instance", "operation"],
        )
        self.failovers = CounterFamily(
            "orchestrator_failovers",
            "Route retries that moved to another instance, by the instance left.",
            ["instance"],
        )
        self.budget_refusals = CounterFamily(
            "orchestrator_retry_budget_refusals",
            "Retries the retry budget refused, by the instance that had failed.",
            ["instance"],
        )
        self.probe_seconds = HistogramFamily(
            "orchestrator_probe_duration_seconds",
            "Time of one health probe, by instance and outcome (ok or the error code).",
            ["instance", "outcome"],
            LATENCY_BUCKETS,
        )
        self.fanout_width = HistogramFamily(
            "orchestrator_fanout_width", "Targets per fanout.", [], SIZE_BUCKETS
        )
        self.fanout_targets = CounterFamily(
            "orchestrator_fanout_targets",
            "Fanout targets' entries, by instance and status (ok, error, timeout, cancelled).",
            ["instance", "status"],
        )
        self.session_sends = CounterFamily(
            "orchestrator_session_sends",
            "Session sends, by the instance that served (or 'none') and outcome.",
            ["instance", "outcome"],
        )
        self.session_conflicts = CounterFamily(
            "orchestrator_session_conflicts",
            "Session sends refused by a conflict (a taken position, a reused key, a fence).",
            ["code"],
        )
        self.session_migrations = CounterFamily(
            "orchestrator_session_migrations",
            "Sessions moved off a down instance by a send, by the instance left.",
            ["instance"],
        )
        self.runs = CounterFamily(
            "orchestrator_runs",
            "Durable runs entering each state on this replica (queued, running, succeeded, "
            "failed, cancelled, timed_out).",
            ["state"],
        )
        self.commit_seconds = HistogramFamily(
            "orchestrator_store_commit_duration_seconds",
            "Time of one store write transaction (a group commit: many callers), by engine.",
            ["engine"],
            LATENCY_BUCKETS,
        )
        self.commit_batch = HistogramFamily(
            "orchestrator_store_commit_batch_size",
            "Items written by one store transaction, by engine.",
            ["engine"],
            SIZE_BUCKETS,
        )
        self._families: tuple[CounterFamily | HistogramFamily, ...] = tuple(
            f for f in vars(self).values() if isinstance(f, CounterFamily | HistogramFamily)
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def __repr__(self) -> str:
        return f"<Metrics replica={self.replica} [{len(self.requests.values)} request series]>"

    def collect(self) -> Iterator[Metric]:
        """Every family, as counted so far."""
        for family in self._families:
            yield family.collect()

    def watch(self, view: FleetView) -> None:
        """Read ``view`` on every scrape (:class:`FleetCollector`)."""
        self.registry.register(FleetCollector(view.fleet_rows, self.replica, view.held_leases))

    def request(self, endpoint: str, method: str, code: int, seconds: float) -> None:
        """One HTTP request served (every request's cost: two dict updates)."""
        self.requests.inc((endpoint, method, code))
        self.request_seconds.observe((endpoint,), seconds)

    def attempt(self, instance: str, outcome: str, seconds: float) -> None:
        """One call to an instance ended with ``outcome``."""
        self.attempts.inc((instance, outcome))
        self.attempt_seconds.observe((instance,), seconds)


class FleetCollector(Collector):
    """The fleet's state as gauges, read when scraped: health (one series per state, 1 for
    the current one), in-flight calls, who probes each instance, which leader roles this
    replica holds and how many session and run leases; every series names this
    ``replica``, so a query over replicas tells whose view and whose lease it is."""

    def __init__(
        self,
        rows: Callable[[], Iterable[tuple[str, str, int, bool]]],
        replica: str,
        leases: Callable[[], HeldLeases],
    ):
        self._rows = rows
        self._replica = replica
        self._leases = leases

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: the families are built per scrape."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """The gauges, from the registry as it is now."""
        replica = self._replica
        health = GaugeMetricFamily(
            "orchestrator_instance_health",
            "1 for the instance's current health state as this replica sees it, else 0.",
            labels=["instance", "state", "replica"],
        )
        in_flight = GaugeMetricFamily(
            "orchestrator_in_flight",
            "Calls to the instance in flight from this replica.",
            labels=["instance", "replica"],
        )
        owner = GaugeMetricFamily(
            "orchestrator_probe_owner",
            "1 where this replica holds the instance's probe lease (probes it), else 0.",
            labels=["instance", "replica"],
        )
        for name, state, outstanding, probes in self._rows():
            for candidate in HealthState:
                value = 1.0 if candidate.value == state else 0.0
                health.add_metric([name, candidate.value, replica], value)
            in_flight.add_metric([name, replica], float(outstanding))
            owner.add_metric([name, replica], 1.0 if probes else 0.0)
        replica_info = GaugeMetricFamily(
            "orchestrator_replica", "1: this replica's id, to join on.", labels=["replica"]
        )
        replica_info.add_metric([replica], 1.0)
        yield from (health, in_flight, owner, replica_info)
        yield from self._held(self._leases())

    def _held(self, held: HeldLeases) -> Iterator[Metric]:
        """The leases this replica holds: a family left out where the engine has none."""
        replica = self._replica
        leader = GaugeMetricFamily(
            "orchestrator_leader",
            "1 where this replica does the role's fleet-wide work now (holds its lease "
            "leader:<role>; one process: runs it), else 0. Summed over replicas: 1.",
            labels=["role", "replica"],
        )
        for role, leads in sorted(held.leaders.items()):
            leader.add_metric([role, replica], 1.0 if leads else 0.0)
        yield leader
        if held.session_leases is not None:
            sessions = GaugeMetricFamily(
                "orchestrator_session_leases_held",
                "Session leases this replica holds now (sends, closes, settlements under "
                "way here); absent where sessions have no leases (SQLite: one process).",
                labels=["replica"],
            )
            sessions.add_metric([replica], float(held.session_leases))
            yield sessions
        if held.run_leases is not None:
            runs = GaugeMetricFamily(
                "orchestrator_run_leases_held",
                "Durable runs this replica holds the lease of and works on now.",
                labels=["replica"],
            )
            runs.add_metric([replica], float(held.run_leases))
            yield runs
