"""Observation: Prometheus metrics and OpenTelemetry traces (docs/observability.md).

:class:`Observer` is the one seam core code calls; :func:`build_observer` makes an app's
from its settings, with a metrics registry and tracer provider of its own.
"""

from __future__ import annotations

from ...settings import Settings
from .metrics import Metrics
from .observer import OFF, Observer
from .tracing import Tracing

__all__ = ["OFF", "Metrics", "Observer", "Tracing", "build_observer"]


def build_observer(settings: Settings, *, replica: str) -> Observer:
    """The observer ``settings.metrics`` and ``settings.tracing`` ask for (:data:`OFF`-like
    when both are off), labelled with this ``replica``'s id."""
    metrics = Metrics(replica) if settings.metrics.enabled else None
    tracing = Tracing(settings.tracing, replica=replica) if settings.tracing.enabled else None
    return Observer(metrics=metrics, tracing=tracing, replica=replica)
