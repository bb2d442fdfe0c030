"""Traces: the span tree of a failover route, a fanout and a session send, seen by an
in-memory exporter; the ``traceparent`` each real reference instance received is its
attempt's span; a caller's ``traceparent`` is the request span's parent; a durable run's
work joins the trace of the request that submitted it; with tracing off no span is made
(nor any trace stored with a run) at all; log lines carry the trace id."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NonRecordingSpan, StatusCode

from openclaw_orchestrator.server.core.runs import RUN_TRACE_KEY
from openclaw_orchestrator.server.observability import OFF, Observer, Tracing
from openclaw_orchestrator.settings import TracingSettings

from .conftest import Observed, observed_cluster

SIDES = pytest.mark.parametrize("fast_paths", [True, False], ids=["fast_paths", "framework"])
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def of_trace(spans: list[ReadableSpan], trace_id: int) -> list[ReadableSpan]:
    """The spans of one trace."""
    return [s for s in spans if s.context.trace_id == trace_id]


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """The direct children of ``parent``, by start time."""
    found = [
        s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    return sorted(found, key=lambda s: s.start_time or 0)


def root_of(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    """The newest server span called ``name``."""
    return [s for s in spans if s.name == name][-1]


def traceparent(span: ReadableSpan) -> str:
    """The W3C header that names ``span`` as the parent."""
    ctx = span.context
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def received_parents(c: Observed, instance: str) -> list[str]:
    """Every ``traceparent`` ``instance`` received with a task or session message."""
    return [h["traceparent"] for h in c.received[instance] if "traceparent" in h]


async def finished_run(c: Observed, run_id: str) -> dict[str, Any]:
    """``GET /runs/{id}?wait=10s``: the run as shown once it has ended."""
    url = f"{c.url}/api/orchestrator/runs/{run_id}?wait=10s"
    async with c.http.get(url, headers=c.headers) as resp:
        assert resp.status == 200, await resp.text()
        run: dict[str, Any] = await resp.json()
    assert run["state"] == "succeeded", run
    return run


async def span_named(c: Observed, name: str, timeout: float = 10.0) -> ReadableSpan:
    """The span called ``name`` once it has ended (a run's span ends just after the write
    that shows the run finished)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := [s for s in c.finished_spans() if s.name == name]):
        assert loop.time() < deadline, f"no span {name!r} after {timeout}s"
        await asyncio.sleep(0.02)
    return found[-1]


@SIDES
async def test_failover_route_span_tree(fast_paths: bool) -> None:
    """A route whose first candidate refuses (503) is one trace: the request span, a
    failed attempt at A and a successful one at B under it, and each instance got its own
    attempt's span as ``traceparent``."""
    async with observed_cluster("AB", fast_paths=fast_paths, tracing=True) as c:
        await c.set_faults("A", fail_rate=1.0, fail_status=503)
        for _ in range(2):  # round robin: A is first once in two
            status, body = await c.post("/api/orchestrator/route", {"instances": "A,B"})
            assert status == 200
            if len(body["attempts"]) == 2:
                break
        assert [a["instance"] for a in body["attempts"]] == ["A", "B"]
        spans = c.finished_spans()
        root = root_of(spans, "POST /api/orchestrator/route")
        assert root.parent is None
        attributes = dict(root.attributes or {})
        assert attributes["http.route"] == "/api/orchestrator/route"
        assert attributes["http.response.status_code"] == 200
        attempts = children(of_trace(spans, root.context.trace_id), root)
        assert [(s.name, (s.attributes or {})["instance"]) for s in attempts] == [
            ("instance.attempt", "A"),
            ("instance.attempt", "B"),
        ]
        assert attempts[0].status.status_code is StatusCode.ERROR
        assert attempts[1].status.status_code is not StatusCode.ERROR
        assert received_parents(c, "A")[-1] == traceparent(attempts[0])
        assert received_parents(c, "B")[-1] == traceparent(attempts[1])


@SIDES
async def test_fanout_span_tree(fast_paths: bool) -> None:
    """A fanout is the request span, one ``fanout.target`` per target, each with its
    attempt under it, whose span each instance received as ``traceparent``."""
    async with observed_cluster("ABC", fast_paths=fast_paths, tracing=True) as c:
        status, body = await c.post("/api/orchestrator/fanout", {"targets": "A-C", "payload": {}})
        assert status == 200
        assert body["succeeded"] == 3
        spans = c.finished_spans()
        root = root_of(spans, "POST /api/orchestrator/fanout")
        mine = of_trace(spans, root.context.trace_id)
        targets = children(mine, root)
        assert sorted(str((s.attributes or {})["instance"]) for s in targets) == ["A", "B", "C"]
        assert {s.name for s in targets} == {"fanout.target"}
        for target in targets:
            instance = (target.attributes or {})["instance"]
            (attempt,) = children(mine, target)
            assert attempt.name == "instance.attempt"
            assert received_parents(c, str(instance)) == [traceparent(attempt)]


async def test_session_send_span_tree() -> None:
    """A session send is the request span, a ``session.send`` span, and under it the
    attempt (whose span the instance received) and the durable ``store.commit``."""
    async with observed_cluster("A", tracing=True) as c:
        status, spawned = await c.post("/api/orchestrator/sessions/spawn", {"instance": "A"})
        assert status in (200, 201)
        status, _ = await c.post(
            f"/api/orchestrator/sessions/{spawned['session_id']}/send", {"data": {}}
        )
        assert status == 200
        spans = c.finished_spans()
        root = root_of(spans, "POST /api/orchestrator/sessions/{session_id}/send")
        mine = of_trace(spans, root.context.trace_id)
        (send,) = children(mine, root)
        assert send.name == "session.send"
        parts = children(mine, send)
        assert [s.name for s in parts] == ["instance.attempt", "store.commit"]
        assert (parts[1].attributes or {})["db.system"] == "sqlite"
        assert received_parents(c, "A")[-1] == traceparent(parts[0])


@SIDES
async def test_caller_traceparent_is_the_parent(fast_paths: bool) -> None:
    """A caller's ``traceparent`` makes the request span its child, in the caller's
    trace, and the instance receives that trace too."""
    async with observed_cluster("A", fast_paths=fast_paths, tracing=True) as c:
        given = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        status, _ = await c.post("/api/orchestrator/route", {"instances": "A"}, traceparent=given)
        assert status == 200
        root = root_of(c.finished_spans(), "POST /api/orchestrator/route")
        assert f"{root.context.trace_id:032x}" == CALLER_TRACE
        assert root.parent is not None
        assert f"{root.parent.span_id:016x}" == CALLER_SPAN
        assert received_parents(c, "A")[-1].split("-")[1] == CALLER_TRACE


@SIDES
async def test_a_runs_work_joins_its_submit_requests_trace(fast_paths: bool) -> None:
    """A durable run is worked on after its submit was answered, yet its ``run route``
    span is a child of the submit request's span (itself the caller's child: the run is
    part of what that request caused), and the attempt nests under the run span; the
    stored carrier is never shown, and a retry from another trace is the same run."""
    async with observed_cluster("A", fast_paths=fast_paths, tracing=True) as c:
        given = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        body = {"kind": "route", "instances": "A", "payload": {"n": 1}}
        status, submitted = await c.post(
            "/api/orchestrator/runs", body, traceparent=given, **{"Idempotency-Key": "trace-1"}
        )
        assert status == 202, submitted
        run_id = submitted["run_id"]
        shown = await finished_run(c, run_id)
        assert RUN_TRACE_KEY not in submitted["request"]
        assert RUN_TRACE_KEY not in shown["request"]
        submit = root_of(c.finished_spans(), "POST /api/orchestrator/runs")
        run_span = await span_named(c, "run route")
        assert f"{submit.context.trace_id:032x}" == CALLER_TRACE
        assert submit.parent is not None
        assert f"{submit.parent.span_id:016x}" == CALLER_SPAN
        assert run_span.context.trace_id == submit.context.trace_id
        assert run_span.parent is not None
        assert run_span.parent.span_id == submit.context.span_id
        attributes = dict(run_span.attributes or {})
        assert (attributes["run.id"], attributes["run.state"]) == (run_id, "succeeded")
        (attempt,) = children(of_trace(c.finished_spans(), int(CALLER_TRACE, 16)), run_span)
        assert (attempt.name, (attempt.attributes or {})["instance"]) == ("instance.attempt", "A")
        assert received_parents(c, "A")[-1] == traceparent(attempt)
        other = f"00-{'1' * 32}-{'2' * 16}-01"
        status, again = await c.post(
            "/api/orchestrator/runs", body, traceparent=other, **{"Idempotency-Key": "trace-1"}
        )
        assert (status, again["run_id"]) == (200, run_id), again


@pytest.fixture
def span_count(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every span object made in this process while the test runs (SDK spans and the
    API's non-recording ones), by name or kind."""
    from opentelemetry.sdk import trace as sdk_trace

    made: list[str] = []
    sdk_init = sdk_trace.Span.__init__
    api_init = NonRecordingSpan.__init__

    def counted_sdk(self: sdk_trace.Span, *args: object, **kwargs: object) -> None:
        made.append(str(kwargs.get("name", args[0] if args else "")))
        sdk_init(self, *args, **kwargs)  # type: ignore[arg-type]

    def counted_api(self: NonRecordingSpan, *args: object, **kwargs: object) -> None:
        made.append("non-recording")
        api_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sdk_trace.Span, "__init__", counted_sdk)
    monkeypatch.setattr(NonRecordingSpan, "__init__", counted_api)
    return made


@SIDES
async def test_tracing_off_makes_no_spans(fast_paths: bool, span_count: list[str]) -> None:
    """Tracing off (the default): a route, a fanout, a session send and a durable run make
    no span object at all, no ``traceparent`` goes to instances and none is stored with
    the run, even when the caller sent one."""
    async with observed_cluster("AB", fast_paths=fast_paths) as c:
        assert c.service.observer.tracing is None
        given = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        status, _ = await c.post("/api/orchestrator/route", {"instances": "A"}, traceparent=given)
        assert status == 200
        status, _ = await c.post("/api/orchestrator/fanout", {"targets": "A,B"})
        assert status == 200
        _, spawned = await c.post("/api/orchestrator/sessions/spawn", {"instance": "B"})
        status, _ = await c.post(
            f"/api/orchestrator/sessions/{spawned['session_id']}/send", {"data": {}}
        )
        assert status == 200
        status, run = await c.post(
            "/api/orchestrator/runs",
            {"kind": "route", "instances": "A", "payload": {}},
            traceparent=given,
        )
        assert status == 202, run
        await finished_run(c, run["run_id"])
        stored = await c.service.runs.get(run["run_id"])
        assert RUN_TRACE_KEY not in stored.request
        assert span_count == []
        assert received_parents(c, "A") == received_parents(c, "B") == []
    assert OFF.span("x") is OFF.span("y")  # one shared do-nothing context manager


def test_span_counter_sees_spans(span_count: list[str]) -> None:
    """The counter of the test above counts what tracing makes (it can fail)."""
    tracing = Tracing(TracingSettings(enabled=True), replica="r")
    with Observer(metrics=None, tracing=tracing).span("probe-of-the-counter"):
        pass
    assert "probe-of-the-counter" in span_count


LOGGING_SCRIPT = """
from openclaw_orchestrator.server.logs import configure_logging, flush_logs, get_logger
from openclaw_orchestrator.server.observability import Tracing
from openclaw_orchestrator.settings import TracingSettings
configure_logging("info", "json")
log = get_logger("test")
with Tracing(TracingSettings(enabled=True), replica="r").span("work") as span:
    print(f"{span.get_span_context().trace_id:032x}", flush=True)
    log.info("test.inside")
log.info("test.outside")
flush_logs()
"""


def _run_script(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter (ours), its output captured; it must succeed."""
    return subprocess.run(  # our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )


def test_log_lines_carry_the_trace_id() -> None:
    """Inside a span every JSON log line names the span's ``trace_id``; outside, none does
    (a process of its own: logging is configured once per process)."""
    done = _run_script(LOGGING_SCRIPT)
    events = {e["event"]: e for e in map(json.loads, done.stderr.splitlines())}
    assert events["test.inside"]["trace_id"] == done.stdout.strip()
    assert "trace_id" not in events["test.outside"]


GLOBAL_PROVIDER_SCRIPT = """
import tempfile
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient
from openclaw_orchestrator.server.api.app import create_app
from openclaw_orchestrator.settings import Settings

exported = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exported))
trace.set_tracer_provider(provider)  # what opentelemetry-instrument, or a host app, does
settings = Settings(api_key="k" * 16, data_dir=tempfile.mkdtemp(), instances=[])
with TestClient(create_app(settings)) as client:
    auth = {"Authorization": "Bearer " + "k" * 16}
    assert client.get("/api/health/check").status_code == 200
    assert client.get("/api/orchestrator/health", headers=auth).status_code == 200
    assert client.post("/api/orchestrator/route", json={}, headers=auth).status_code == 503
print(sorted({span.instrumentation_scope.name for span in exported.get_finished_spans()}))
"""


def test_fastapis_own_telemetry_stays_off_under_a_global_provider() -> None:
    """A process with a global tracer provider (``opentelemetry-instrument``, a host app)
    gets no spans of FastAPI's own telemetry: it made four per request (the request, its
    dependencies, endpoint and serialization) with our tracing off, and beside ours in
    another trace with it on. Ours stay the app's only spans (a process of its own: the
    global provider can be set once)."""
    done = _run_script(GLOBAL_PROVIDER_SCRIPT)
    scopes = done.stdout.strip().splitlines()[-1]  # after the start-up log line
    assert scopes == "[]", done.stdout
