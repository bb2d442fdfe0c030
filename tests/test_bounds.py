"""Memory stays flat under the attacks of issue 9 (item 3), measured on a real ``serve``
child process: huge target lists, huge target ranges, large idempotent results, a 32 MB
header. Each attack gets its 4xx (or is simply not remembered), and the server answers after.

The bounds are generous (tens of MiB against the hundreds the attacks took before); a peak
is read from ``VmHWM``, since an expansion that is freed again leaves ``VmRSS`` unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.server.hosting import BackgroundServer

from .orchestrator_process import OrchestratorProcess, orchestrator_process

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024


@pytest.fixture
async def instance() -> AsyncIterator[str]:
    """An echo instance A in this process (8 MiB bodies); yields its URL."""
    app = create_instance_app("A", resolve_handler("echo"), max_body_bytes=8 * MIB)
    server = BackgroundServer(app)
    yield await server.start()
    await server.aclose()


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, instance: str, **settings: Any
) -> AsyncIterator[tuple[OrchestratorProcess, aiohttp.ClientSession]]:
    """``serve`` with instance A and ``settings`` in a child process, and a client session
    carrying its key."""
    config = {"instances": [{"name": "A", "url": instance}], "health": {"interval": "5s"}}
    async with orchestrator_process(tmp_path, {**config, **settings}) as served:
        async with aiohttp.ClientSession(headers=served.headers) as http:
            yield served, http
        assert await is_answering(served)


def mib(served: OrchestratorProcess, field: str = "VmRSS") -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak) of the child, in MiB."""
    for line in Path(f"/proc/{served.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} line")


async def is_answering(served: OrchestratorProcess) -> bool:
    """Whether the liveness endpoint answers 200 now."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(served.url + "/api/health/check") as resp:
            return resp.status == 200


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """POST ``body`` as JSON; (status, parsed reply, reply headers)."""
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_rejected_target_names_are_not_remembered(tmp_path: Path, instance: str) -> None:
    """20 fanouts naming 110,000 unknown names each (40 kept 343 MB before, so 20 would keep
    about 170 MB, far past the bound): each is a 400 on ``targets``, and the server keeps
    none of them."""
    async with serving(tmp_path, instance) as (served, http):
        before = mib(served)
        for i in range(20):
            names = ",".join(f"{chr(65 + i % 26)}{i // 26}{j:x}" for j in range(110_000))
            status, reply, _ = await post(
                http, served.url + "/api/orchestrator/fanout", {"targets": names}
            )
            assert status == 400
            assert reply["error"]["field"] == "targets"
        grown = mib(served) - before
    assert grown < 64, f"RSS grew {grown:.0f} MiB"


async def test_target_ranges_are_bounded_before_they_are_expanded(
    tmp_path: Path, instance: str
) -> None:
    """120 KB of ranges (a 1 GB peak before), and 63 KB of ranges within the length bound:
    both 400 on ``targets``/``instances`` before any name is made; the peak stays flat."""
    long_expr = ",".join(["w1-w1023"] * (120_000 // 9))
    within_length = ",".join(["w1-w1023"] * 7_000)
    async with serving(tmp_path, instance) as (served, http):
        before = mib(served, "VmHWM")
        for expr in (long_expr, within_length):
            for path, field in (("fanout", "targets"), ("route", "instances")):
                status, reply, _ = await post(
                    http, f"{served.url}/api/orchestrator/{path}", {field: expr}
                )
                assert status == 400, reply
                assert reply["error"]["field"] == field
        grown = mib(served, "VmHWM") - before
    assert grown < 64, f"peak RSS grew {grown:.0f} MiB"


async def test_idempotent_results_are_bounded_in_bytes(tmp_path: Path, instance: str) -> None:
    """60 routes of 500 KB results under distinct Idempotency-Keys with a 4 MiB budget: the
    memory they hold stays near the budget, the oldest keys run again, the newest replay."""
    big = "x" * 500_000
    async with serving(tmp_path, instance, idempotency_max_bytes=4 * MIB) as (served, http):
        url = served.url + "/api/orchestrator/route"
        before = mib(served)
        for i in range(60):
            body = {"instances": ["A"], "payload": {"big": big, "i": i}}
            status, _, _ = await post(http, url, body, {"Idempotency-Key": f"k{i}"})
            assert status == 200
        grown = mib(served) - before
        replays = []
        for i in (0, 59):
            body = {"instances": ["A"], "payload": {"big": big, "i": i}}
            status, _, headers = await post(http, url, body, {"Idempotency-Key": f"k{i}"})
            assert status == 200
            replays.append(headers.get("Idempotent-Replayed"))
    assert replays == [None, "true"]
    assert grown < 24, f"RSS grew {grown:.0f} MiB"


async def test_a_32_mb_header_is_refused_and_memory_stays_flat(
    tmp_path: Path, instance: str
) -> None:
    """A request whose header is 32 MB (accepted whole before: 200 OK, +64 MB): 431 once
    past the 64 KiB default, the connection closed, the memory flat."""
    async with serving(tmp_path, instance) as (served, _):
        before = mib(served)
        port = int(served.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/health/check HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * MIB
        with contextlib.suppress(ConnectionError):
            for _ in range(32):
                writer.write(chunk)
                await writer.drain()
            writer.write(b"\r\n\r\n")
            await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        grown = mib(served) - before
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b'"field":"headers"' in reply
    assert grown < 16, f"RSS grew {grown:.0f} MiB"
