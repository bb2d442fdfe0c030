"""The one observation seam: the small hooks core code calls (an attempt ended, a retry
was scheduled, a probe answered, a store committed, ...), each counting into
:class:`~.metrics.Metrics` and making spans with :class:`~.tracing.Tracing` when those
are on.

With metrics off a hook is one attribute test; with tracing off :meth:`Observer.span`
hands back one shared do-nothing context manager: no span object is made at all.
:data:`OFF` is the observer of a core built without one (tests, the CLI's local runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ...domain.backoff import RetryScheduled
from .metrics import Metrics
from .tracing import Attributes, Tracing, current_carrier

__all__ = ["ENDPOINT_KEY", "OFF", "Observer"]

ENDPOINT_KEY = "openclaw.endpoint"
"""Where a fast path that served a request itself names its route template in the ASGI
scope, for the request's count and span (:mod:`.http`)."""

_NO_SPAN: AbstractContextManager[Any] = nullcontext()


class Observer:
    """Counts into ``metrics`` and traces with ``tracing``; either may be None (off)."""

    __slots__ = ("is_on", "metrics", "replica", "tracing")

    def __init__(
        self, *, metrics: Metrics | None, tracing: Tracing | None, replica: str = ""
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.replica = replica
        self.is_on = metrics is not None or tracing is not None
        """Whether anything is observed at all (else hooks and middleware can be skipped)."""

    def __repr__(self) -> str:
        metrics = "on" if self.metrics is not None else "off"
        tracing = "on" if self.tracing is not None else "off"
        return f"<Observer [metrics {metrics} | tracing {tracing}] replica={self.replica}>"

    def span(
        self,
        name: str,
        attributes: Attributes | None = None,
        *,
        carrier: Mapping[str, str] | None = None,
    ) -> AbstractContextManager[Any]:
        """A child span of the current one for the block (of ``carrier``'s ``traceparent``
        when given: work resumed from a stored context); a shared no-op when tracing is
        off."""
        tracing = self.tracing
        if tracing is None:
            return _NO_SPAN
        return tracing.span(name, attributes, carrier=carrier)

    def trace_carrier(self) -> dict[str, str] | None:
        """The current span's W3C carrier, to store with work done later (a durable run);
        None when tracing is off (nothing is looked up) or no span is current."""
        if self.tracing is None:
            return None
        return current_carrier()

    def attempt(self, instance: str, outcome: str, seconds: float) -> None:
        """A call to ``instance`` ended: ``ok`` or the error code."""
        if self.metrics is not None:
            self.metrics.attempt(instance, outcome, seconds)

    def retry(self, event: RetryScheduled) -> None:
        """A retry hook (:class:`~..core.retrier.Retrier`): one retry scheduled."""
        if self.metrics is not None:
            self.metrics.retries.inc((event.instance, event.operation))

    def failover(self, instance: str) -> None:
        """A route left ``instance`` for another candidate."""
        if self.metrics is not None:
            self.metrics.failovers.inc((instance,))

    def budget_refusal(self, instance: str) -> None:
        """The retry budget refused a retry after ``instance`` failed."""
        if self.metrics is not None:
            self.metrics.budget_refusals.inc((instance,))

    def probe(self, instance: str, outcome: str, seconds: float) -> None:
        """A health probe of ``instance`` ended: ``ok`` or the error code."""
        if self.metrics is not None:
            self.metrics.probe_seconds.observe((instance, outcome), seconds)

    def fanout(self, width: int) -> None:
        """A fanout started over ``width`` targets."""
        if self.metrics is not None:
            self.metrics.fanout_width.observe((), width)

    def fanout_target(self, instance: str, status: str) -> None:
        """A fanout target's entry: ok, error, timeout or cancelled."""
        if self.metrics is not None:
            self.metrics.fanout_targets.inc((instance, status))

    def session_send(self, instance: str | None, outcome: str, moved_from: str | None) -> None:
        """A session send ended (``ok`` or the error code), served by ``instance``; a
        ``conflict``-class outcome and a migration off ``moved_from`` are counted too."""
        metrics = self.metrics
        if metrics is None:
            return
        metrics.session_sends.inc((instance or "none", outcome))
        if outcome in _CONFLICTS:
            metrics.session_conflicts.inc((outcome,))
        if moved_from is not None:
            metrics.session_migrations.inc((moved_from,))

    def run_state(self, state: str) -> None:
        """A durable run entered ``state`` on this replica."""
        if self.metrics is not None:
            self.metrics.runs.inc((state,))

    def store_commit(self, engine: str, seconds: float, items: int) -> None:
        """A store transaction of ``items`` writes committed (or failed) in ``seconds``.
        Called from the SQLite writer thread (the only writer of these families there)."""
        metrics = self.metrics
        if metrics is not None:
            metrics.commit_seconds.observe((engine,), seconds)
            metrics.commit_batch.observe((engine,), items)


_CONFLICTS = frozenset({"conflict", "stale_epoch", "stale_seq"})
"""Send outcomes that are conflicts (a taken position or key, a fenced-off lease)."""

OFF = Observer(metrics=None, tracing=None)
