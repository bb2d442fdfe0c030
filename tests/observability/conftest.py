"""A real cluster for the observation tests: reference instances that record the headers
they receive, and an orchestrator whose metrics are scraped over HTTP and whose spans go
to an in-memory exporter (tracing on) or nowhere (tracing off)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Receive, Scope, Send

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.api.app import create_app
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.server.hosting import BackgroundServer
from openclaw_orchestrator.settings import Settings

API_KEY = "observe-key-0123456789"
METRICS_TOKEN = "metrics-token-0123456789"
HEALTH = {"interval": 0.2, "probe_timeout": 1.0, "down_backoff": 0.1, "degraded_latency": 1.0}
TASK_PATH = "/api/instance/task"
MESSAGES_SUFFIX = "/messages"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""``{(sample name, sorted labels): value}`` of one scrape."""


class HeaderRecorder:
    """Keeps the headers of every task and session message an instance receives (added
    after the instance's fast path, so it sees those requests too)."""

    def __init__(self, app: ASGIApp, *, seen: list[dict[str, str]]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == TASK_PATH or path.endswith(MESSAGES_SUFFIX)):
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@dataclass
class Observed:
    """Handles to a running cluster under observation."""

    url: str
    service: Orchestrator
    http: aiohttp.ClientSession
    instance_urls: dict[str, str]
    servers: dict[str, BackgroundServer]
    received: dict[str, list[dict[str, str]]]
    spans: InMemorySpanExporter | None
    headers: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {API_KEY}"})

    async def post(self, path: str, body: Any, **headers: str) -> tuple[int, Any]:
        """POST JSON with the API key; (status, parsed body)."""
        async with self.http.post(
            self.url + path,
            data=orjson.dumps(body),
            headers={**self.headers, "Content-Type": "application/json", **headers},
        ) as resp:
            return resp.status, await resp.json()

    async def scrape(self, token: str = API_KEY) -> Samples:
        """``GET /metrics`` with ``token``; every sample by name and labels."""
        async with self.http.get(
            self.url + "/metrics", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            text = await resp.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def set_faults(self, name: str, **faults: Any) -> None:
        """The instance's fault knobs (slow, failing, ...)."""
        async with self.http.put(
            self.instance_urls[name] + "/api/instance/faults", json=faults
        ) as resp:
            assert resp.status == 200, await resp.text()

    async def wait_state(self, name: str, state: str, timeout: float = 10.0) -> None:
        """Until the orchestrator sees ``name`` in ``state``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.service.registry.get(name).health.state.value != state:
            if loop.time() > deadline:
                raise AssertionError(f"{name} is not {state} after {timeout}s")
            await asyncio.sleep(0.02)

    def finished_spans(self) -> list[ReadableSpan]:
        """Every span ended so far (tracing on)."""
        assert self.spans is not None
        return list(self.spans.get_finished_spans())


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a counter not yet incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every sample whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@contextlib.asynccontextmanager
async def observed_cluster(
    names: str = "ABCD",
    *,
    fast_paths: bool = True,
    tracing: bool = False,
    metrics: bool = True,
    stopped: str = "",
) -> AsyncIterator[Observed]:
    """Echo instances ``names`` (those in ``stopped`` never started: a refused port) and
    an orchestrator with metrics (token :data:`METRICS_TOKEN`) and, when asked, tracing
    into an in-memory exporter."""
    servers: dict[str, BackgroundServer] = {}
    received: dict[str, list[dict[str, str]]] = {}
    scratch = tempfile.TemporaryDirectory(prefix="orchestrator-observe-")
    try:
        for name in names:
            app = create_instance_app(name, resolve_handler("echo"), fault_api=True)
            received[name] = []
            app.add_middleware(HeaderRecorder, seen=received[name])
            servers[name] = BackgroundServer(app)
            await servers[name].start()
        urls = {n: s.url for n, s in servers.items()}
        for name in stopped:
            await servers[name].aclose()
        config: dict[str, Any] = {
            "api_key": API_KEY,
            "instances": [InstanceSpec(name=n, url=u) for n, u in urls.items()],
            "health": HEALTH,
            "data_dir": Path(scratch.name),
            "metrics": {"enabled": metrics, "token": METRICS_TOKEN},
            "tracing": {"enabled": tracing},
        }
        settings = Settings(**config)
        api = create_app(settings, fast_paths=fast_paths)
        exporter = None
        if tracing:
            exporter = InMemorySpanExporter()
            api.state.observer.tracing.add_processor(SimpleSpanProcessor(exporter))
        servers["__orchestrator__"] = BackgroundServer(api)
        url = await servers["__orchestrator__"].start()
        async with aiohttp.ClientSession() as http:
            observed = Observed(
                url, api.state.orchestrator, http, urls, servers, received, exporter
            )
            for name in names:
                await observed.wait_state(name, "down" if name in stopped else "healthy")
            yield observed
    finally:
        for server in servers.values():
            server.request_stop()
        await asyncio.gather(*(s.wait_stopped() for s in servers.values()))
        scratch.cleanup()
