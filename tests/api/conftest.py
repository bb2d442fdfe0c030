"""A real cluster per test: reference instances and an orchestrator on 127.0.0.1 free ports.

Everything runs in the test's event loop on real sockets; instances expose the fault API so
a test can make one slow, failing or unhealthy, and ``stop_instance`` closes one's socket
so connections are refused, as with a crashed process.

Every test of a module that starts a cluster runs twice: with the orchestrator's fast paths
(:class:`~openclaw_orchestrator.server.api.fastpath.FastPaths`) and with the FastAPI routes alone
(``create_app(..., fast_paths=False)``), so neither side can drift from the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Scope

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.api.app import create_app
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.server.hosting import BackgroundServer
from openclaw_orchestrator.settings import Settings

API_KEY = "test-key-0123456789"
FAST_HEALTH = {"interval": 0.2, "probe_timeout": 1.0, "down_backoff": 0.1, "degraded_latency": 1.0}
"""Probes often, never judged degraded or failed for slowness alone below a second: the
suite runs more workers than cores, and a loaded machine's probes are slow, not the
instance's fault (tests of degradation use the fault API's health knobs)."""
ORCHESTRATOR = "__orchestrator__"
FAST_PATHS = {"fast_paths": True, "framework_only": False}
_fast_paths_now = True  # what start_cluster builds when not told: set by the fast_paths fixture


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Both sides of the fast paths for every test of a module that starts a cluster."""
    names = metafunc.fixturenames
    if "fast_paths" in names and (
        "cluster" in names or "start_cluster" in inspect.getsource(metafunc.module)
    ):
        metafunc.parametrize(
            "fast_paths", list(FAST_PATHS.values()), ids=list(FAST_PATHS), indirect=True
        )


@pytest.fixture(autouse=True)
def fast_paths(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Whether the clusters of this test serve the hot endpoints with the fast paths."""
    global _fast_paths_now
    _fast_paths_now = getattr(request, "param", True)
    try:
        yield _fast_paths_now
    finally:
        _fast_paths_now = True


@dataclass
class Cluster:
    """Handles to a running test cluster."""

    url: str
    api_key: str
    instance_urls: dict[str, str]
    service: Orchestrator
    http: aiohttp.ClientSession
    servers: dict[str, BackgroundServer] = field(default_factory=dict, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """The auth header for the orchestrator API."""
        return {"Authorization": f"Bearer {self.api_key}"}

    async def post(self, path: str, body: Any, **headers: str) -> tuple[int, Any]:
        """POST JSON to the orchestrator; returns (status, parsed body)."""
        async with self.http.post(
            self.url + path,
            data=orjson.dumps(body),
            headers={**self.headers, "Content-Type": "application/json", **headers},
        ) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str) -> tuple[int, Any]:
        """GET from the orchestrator; returns (status, parsed body)."""
        async with self.http.get(self.url + path, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def set_faults(self, name: str, **faults: Any) -> None:
        """Change an instance's fault knobs through its fault API."""
        async with self.http.put(
            self.instance_urls[name] + "/api/instance/faults", json=faults
        ) as resp:
            assert resp.status == 200, await resp.text()

    async def stop_instance(self, name: str) -> None:
        """Shut one instance down: its port now refuses connections."""
        await self.servers[name].aclose()

    async def wait_state(self, name: str, state: str, timeout: float = 5.0) -> None:
        """Wait until the orchestrator's health shows ``name`` in ``state``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (current := self.service.registry.get(name).health.state.value) != state:
            if loop.time() > deadline:
                raise AssertionError(f"{name} is {current}, not {state}, after {timeout}s")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def start_cluster(
    names: Iterable[str] = "ABCDEFGH",
    *,
    handler: str = "echo",
    tags: dict[str, list[str]] | None = None,
    weights: dict[str, float] | None = None,
    wait_healthy: bool = True,
    fast_paths: bool | None = None,
    middleware: Sequence[Middleware] = (),
    **overrides: Any,
) -> AsyncIterator[Cluster]:
    """Instances ``names`` plus an orchestrator knowing them, with fast health checks and a
    SQLite store in a fresh temporary folder (unless ``data_dir`` is given); ``fast_paths``
    defaults to the test's side (the ``fast_paths`` fixture); ``middleware`` is added to the
    app once it is built, as a deployment would add its own."""
    servers: dict[str, BackgroundServer] = {}
    scratch = tempfile.TemporaryDirectory(prefix="orchestrator-test-")
    overrides.setdefault("data_dir", Path(scratch.name))
    try:
        for name in names:
            app = create_instance_app(name, resolve_handler(handler), fault_api=True)
            servers[name] = BackgroundServer(app)
            await servers[name].start()
        urls = {n: s.url for n, s in servers.items()}
        specs = [
            InstanceSpec(
                name=n,
                url=u,
                tags=(tags or {}).get(n, []),
                weight=(weights or {}).get(n, 1.0),
            )
            for n, u in urls.items()
        ]
        settings = Settings(
            api_key=API_KEY, instances=specs, **{"health": FAST_HEALTH, **overrides}
        )
        api = create_app(settings, fast_paths=_fast_paths_now if fast_paths is None else fast_paths)
        for layer in middleware:
            api.add_middleware(layer.cls, *layer.args, **layer.kwargs)
        servers[ORCHESTRATOR] = BackgroundServer(api)
        url = await servers[ORCHESTRATOR].start()
        async with aiohttp.ClientSession() as http:
            cluster = Cluster(url, API_KEY, urls, api.state.orchestrator, http, servers)
            if wait_healthy:
                for name in urls:
                    await cluster.wait_state(name, "healthy")
            yield cluster
    finally:
        for server in servers.values():  # all at once: each takes ~0.1 s to notice
            server.request_stop()
        await asyncio.gather(*(s.wait_stopped() for s in servers.values()))
        scratch.cleanup()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """Eight echo instances A–H behind an orchestrator, all healthy."""
    async with start_cluster() as c:
        yield c


async def asgi_post(app: ASGIApp, path: str, body: bytes, **headers: str) -> list[Message]:
    """One POST of ``path`` through ``app`` (a fast path, say) as uvicorn would call it, the
    whole body in one message; the messages it sent."""
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    sent: list[Message] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent
