"""The orchestrator's own resource exhaustion is its own: out of file descriptors, routes
answer 503 ``overloaded`` at once (no failover through the fleet), every instance stays
healthy, and it recovers by itself when the load drops. At start-up the soft ``nofile``
limit is raised to the hard one."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.server.hosting import BackgroundServer

from ..orchestrator_process import OrchestratorProcess, orchestrator_process

NAMES = "ABCDEFGH"
BURST = 64
HEADROOM = 8
"""File descriptors the child may still open once its limit is lowered."""


@pytest.fixture
async def instance_urls() -> AsyncIterator[dict[str, str]]:
    """Eight echo instances in this process."""
    servers = {n: BackgroundServer(create_instance_app(n, resolve_handler("echo"))) for n in NAMES}
    for server in servers.values():
        await server.start()
    yield {n: s.url for n, s in servers.items()}
    for server in servers.values():
        await server.aclose()


async def _route(
    http: aiohttp.ClientSession, child: OrchestratorProcess, name: str
) -> tuple[int, Any, str | None]:
    body = orjson.dumps({"instances": name, "payload": {"to": name}, "retry": 3})
    headers = {**child.headers, "Content-Type": "application/json"}
    async with http.post(child.url + "/api/orchestrator/route", data=body, headers=headers) as r:
        return r.status, orjson.loads(await r.read()), r.headers.get("Retry-After")


async def _states(http: aiohttp.ClientSession, child: OrchestratorProcess) -> dict[str, str]:
    async with http.get(child.url + "/api/orchestrator/health", headers=child.headers) as resp:
        states: dict[str, str] = orjson.loads(await resp.read())
        return states


async def test_out_of_file_descriptors_is_503_overloaded_and_instances_stay_healthy(
    tmp_path: Path, instance_urls: dict[str, str]
) -> None:
    """With its nofile limit lowered to what it holds plus 8, 64 concurrent routes to 8
    instances get 200 or an immediate 503 overloaded with Retry-After (one attempt each);
    every instance stays healthy through later probes, and routes to each succeed after."""
    settings = {
        "instances": [{"name": n, "url": u} for n, u in instance_urls.items()],
        "health": {"interval": 0.2},
    }
    connector = aiohttp.TCPConnector(limit=BURST)
    async with (
        orchestrator_process(tmp_path, settings) as child,
        aiohttp.ClientSession(connector=connector) as http,
    ):
        for _ in range(100):
            if set((await _states(http, child)).values()) == {"healthy"}:
                break
            await asyncio.sleep(0.05)
        # Our connections to the child are opened now: the lowered limit is for its own.
        await asyncio.gather(*(_states(http, child) for _ in range(BURST)))
        _, hard = resource.prlimit(child.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(child.pid, resource.RLIMIT_NOFILE, (child.open_fds() + HEADROOM, hard))

        replies = await asyncio.gather(
            *(_route(http, child, NAMES[i % len(NAMES)]) for i in range(BURST))
        )
        statuses = [status for status, _, _ in replies]
        assert set(statuses) <= {200, 503}, replies
        overloaded = [(body, after) for status, body, after in replies if status == 503]
        assert overloaded, "the lowered limit was never reached"
        for body, retry_after in overloaded:
            assert body["error"]["code"] == "overloaded", body
            assert "Too many open files" in body["error"]["message"]
            assert len(body["error"]["details"]["attempts"]) == 1  # no failover
            assert retry_after == "1"

        await asyncio.sleep(0.6)  # three probe intervals under the same limit
        assert set((await _states(http, child)).values()) == {"healthy"}
        for name in NAMES:  # one at a time: idle connections make room for new ones
            status, body, _ = await _route(http, child, name)
            assert (status, body["instance"]) == (200, name), body
        assert set((await _states(http, child)).values()) == {"healthy"}


def _low_soft_limit() -> None:
    """In the child before exec: a soft nofile limit of 256 under a higher hard one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


async def test_serve_raises_the_soft_nofile_limit_to_the_hard_one(tmp_path: Path) -> None:
    """Started with a soft limit of 256, the server runs with soft = hard and logs both."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 256:
        pytest.skip(f"the hard nofile limit here is {hard}: nothing to raise to")
    async with orchestrator_process(tmp_path, {}, preexec_fn=_low_soft_limit) as child:
        soft_now, hard_now = resource.prlimit(child.pid, resource.RLIMIT_NOFILE)
        log = child.stderr.read_text()
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert (soft_now, hard_now) == (wanted, hard)
    assert '"event": "nofile.raised"' in log or '"event":"nofile.raised"' in log, log
    assert '"old": 256' in log or '"old":256' in log
