"""kill -9 the orchestrator during a burst of session sends: after a restart on the same data
directory, every acknowledged send is in the history exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.server.hosting import BackgroundServer
from tests.ports import free_port

pytestmark = pytest.mark.slow

API_KEY = "durability-test-key"
WORKERS = 16
KILL_AFTER_ACKS = 120


async def start_orchestrator(config: Path) -> asyncio.subprocess.Process:
    """``openclaw orchestrator serve --config`` as a child process."""
    openclaw = str(Path(sys.executable).parent / "openclaw")
    env = {**os.environ, "ORCHESTRATOR_API_KEY": API_KEY}
    return await asyncio.create_subprocess_exec(
        openclaw, "orchestrator", "serve", "--config", str(config),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def wait_up(http: aiohttp.ClientSession, url: str) -> None:
    """Poll the liveness endpoint until it answers."""
    for _ in range(200):
        try:
            async with http.get(url + "/api/health/check") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("orchestrator did not come up")


@pytest.fixture
async def instances() -> AsyncIterator[list[str]]:
    """Two reference instances in this process."""
    servers = [BackgroundServer(create_instance_app(n, resolve_handler("echo"))) for n in "AB"]
    for server in servers:
        await server.start()
    yield [s.url for s in servers]
    for server in servers:
        await server.aclose()


async def test_acknowledged_sends_survive_kill_9(tmp_path: Path, instances: list[str]) -> None:
    """Every send that got a 200 before kill -9 is in the history once, in order."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "port": port,
                "data_dir": str(tmp_path / "data"),
                "instances": [{"name": n, "url": u} for n, u in zip("AB", instances, strict=True)],
                "health": {"interval": 0.5},
            }
        )
    )
    headers = {"Authorization": f"Bearer {API_KEY}"}
    acked: list[Any] = []
    proc = await start_orchestrator(config)
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            await wait_up(http, url)
            async with http.post(
                url + "/api/orchestrator/sessions/spawn",
                json={"sessionId": "burst", "instance": "A"},
            ) as resp:
                assert resp.status == 201

            async def worker(w: int) -> None:
                for i in range(1000):
                    data = {"w": w, "i": i}
                    try:
                        async with http.post(
                            url + "/api/orchestrator/sessions/burst/send", json={"data": data}
                        ) as resp:
                            if resp.status != 200:
                                return
                            await resp.read()
                    except aiohttp.ClientError:
                        return  # the orchestrator died under us: this one was not acked
                    acked.append(data)
                    if len(acked) >= KILL_AFTER_ACKS and proc.returncode is None:
                        proc.send_signal(signal.SIGKILL)

            await asyncio.gather(*(worker(w) for w in range(WORKERS)))
        assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert len(acked) >= KILL_AFTER_ACKS
    proc = await start_orchestrator(config)
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            await wait_up(http, url)
            history: list[dict[str, Any]] = []
            offset: int | None = 0
            while offset is not None:
                async with http.get(
                    url + f"/api/orchestrator/sessions/burst/history?offset={offset}&limit=1000"
                ) as resp:
                    page = await resp.json()
                history.extend(page["messages"])
                offset = page["next_offset"]
    finally:
        proc.terminate()
        await proc.wait()

    recorded = [json.dumps(m["data"], sort_keys=True) for m in history]
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
    assert len(set(recorded)) == len(recorded), "a send was recorded twice"
    for data in acked:
        assert recorded.count(json.dumps(data, sort_keys=True)) == 1
    # The instance's own count agrees with the orchestrator's order.
    assert [m["reply"]["session"]["seen"] for m in history] == [m["seq"] for m in history]
