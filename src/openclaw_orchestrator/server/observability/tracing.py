"""OpenTelemetry traces of one app: its own ``TracerProvider`` (never the global one), a
span per request, children per attempt, fanout target, session send, probe and store
commit, and the W3C ``traceparent``/``tracestate`` taken from callers and given to
instances.

Off by default (``tracing.enabled``); then no :class:`Tracing` exists and the hooks of
:class:`~.observer.Observer` make no span object at all. Spans are exported over OTLP/HTTP
only when ``tracing.otlp_endpoint`` is set; without it they still give log lines their
``trace_id`` and instances their ``traceparent``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from ...settings import TracingSettings
from ..logs import bind_trace_id, reset_trace_id

if TYPE_CHECKING:  # the SDK is imported when tracing is on, not with the core
    from opentelemetry.sdk.trace import SpanProcessor

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "Attributes",
    "Tracing",
    "current_carrier",
    "outgoing_trace",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

Attributes = Mapping[str, AttributeValue]

_PROPAGATOR = TraceContextTextMapPropagator()


def outgoing_trace() -> tuple[str, str | None] | None:
    """``(traceparent, tracestate)`` of the span current in this context (an attempt's),
    for the request to an instance; None when there is none (tracing off: one context
    lookup)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    parent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    state = context.trace_state.to_header() if context.trace_state else ""
    return parent, state or None


def current_carrier() -> dict[str, str] | None:
    """The current span as a W3C carrier (``traceparent``, and ``tracestate`` when there
    is one): what work done later, elsewhere, takes as its parent (a durable run's); None
    when no span is current."""
    found = outgoing_trace()
    if found is None:
        return None
    parent, state = found
    return {TRACEPARENT: parent} if state is None else {TRACEPARENT: parent, TRACESTATE: state}


class Tracing:
    """The app's tracer: sampled at ``sample_ratio`` for new traces (a caller's sampled
    flag wins), exported to ``otlp_endpoint`` when set, and to any ``processors`` given
    (tests pass an in-memory exporter's)."""

    def __init__(
        self,
        settings: TracingSettings,
        *,
        replica: str,
        processors: tuple[SpanProcessor, ...] = (),
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        resource = Resource(
            {"service.name": "openclaw-orchestrator", "service.instance.id": replica}
        )
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        self.provider = TracerProvider(sampler=sampler, resource=resource)
        if settings.otlp_endpoint is not None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        for processor in processors:
            self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("openclaw_orchestrator")
        self.endpoint = settings.otlp_endpoint

    def __repr__(self) -> str:
        return f"<Tracing exporting to {self.endpoint or 'nowhere'}>"

    def add_processor(self, processor: SpanProcessor) -> None:
        """Send every span ending from now on to ``processor`` too."""
        self.provider.add_span_processor(processor)

    @contextmanager
    def span(
        self,
        name: str,
        attributes: Attributes | None = None,
        *,
        carrier: Mapping[str, str] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Iterator[Span]:
        """A span current for the block, a child of the current one (or of ``carrier``'s
        ``traceparent``, a caller's), its trace id on every log line meanwhile."""
        parent = None if carrier is None else _PROPAGATOR.extract(carrier)
        with self._tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes=attributes
        ) as span:
            context = span.get_span_context()
            token = bind_trace_id(f"{context.trace_id:032x}")
            try:
                yield span
            finally:
                reset_trace_id(token)

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocking: up to the exporter's timeout)."""
        self.provider.shutdown()
