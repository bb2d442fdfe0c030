"""Instance replies over their size limit: reading stops at the limit in every client path
(lean and aiohttp, tasks, session messages, probes), the call is a clear ``reply_too_large``,
and an orchestrator process attacked with 64 MiB replies keeps its memory and its database
small and its instances healthy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.faults import FaultConfig
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.errors import ReplyTooLargeError
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.drivers.openclaw import OpenClawDriver
from openclaw_orchestrator.server.drivers.worker import WorkerDriver
from openclaw_orchestrator.server.hosting import BackgroundServer

from ..orchestrator_process import OrchestratorProcess, orchestrator_process

HUGE = 64 * 1024 * 1024
LIMIT_A = 256 * 1024
S = "/api/orchestrator/sessions"


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, BackgroundServer]]:
    """A answers every task and message with 64 MiB, C with 600 KB (under the default
    limit), B normally; all with the fault API."""
    faults = {"A": FaultConfig(reply_bytes=HUGE), "B": None, "C": FaultConfig(reply_bytes=600_000)}
    running = {}
    for name, config in faults.items():
        app = create_instance_app(name, resolve_handler("echo"), faults=config, fault_api=True)
        running[name] = BackgroundServer(app)
        await running[name].start()
    yield running
    for server in running.values():
        await server.aclose()


def _peak_kb(child: OrchestratorProcess) -> int:
    """The child's resident-memory high-water mark (VmHWM), KiB."""
    for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def _call(
    http: aiohttp.ClientSession, child: OrchestratorProcess, method: str, path: str, body: Any
) -> tuple[int, Any]:
    async with http.request(
        method,
        child.url + path,
        data=None if body is None else orjson.dumps(body),
        headers={**child.headers, "Content-Type": "application/json"},
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


def _is_reply_too_large(error: dict[str, Any]) -> bool:
    return (
        error["code"] == "reply_too_large"
        and error["instance"] == "A"
        and f"limit of {LIMIT_A} bytes" in error["message"]
        and error["details"]["max_reply_bytes"] == LIMIT_A
    )


async def test_huge_replies_leave_memory_database_and_health_alone(
    tmp_path: Path, servers: dict[str, BackgroundServer]
) -> None:
    """Routes, fanouts and session sends to an instance answering 64 MiB (declared, then
    chunked) each end in reply_too_large naming A's own limit, without failover; the
    orchestrator's peak memory grows by less than 48 MiB over 36 such replies (buffered,
    they are 2.3 GB), its database stays under 2 MiB, A stays healthy and B answers."""
    static: list[dict[str, Any]] = [{"name": n, "url": s.url} for n, s in servers.items()]
    static[0]["max_reply_bytes"] = LIMIT_A
    settings = {
        "instances": {"static": static, "max_reply_bytes": 1024 * 1024},
        "health": {"interval": 0.5},
    }
    async with (
        orchestrator_process(tmp_path, settings) as child,
        aiohttp.ClientSession() as http,
    ):
        for name in "AB":  # warm up every path once, with replies under the limits
            status, reply = await _call(
                http, child, "POST", f"{S}/spawn", {"sessionId": f"s{name}", "instance": name}
            )
            assert status == 201, reply
        ok = await _call(http, child, "POST", "/api/orchestrator/route", {"instances": "C"})
        assert ok[0] == 200, ok  # 600 KB: under the default limit, padding and all
        assert (await _call(http, child, "POST", f"{S}/sB/send", {"data": 1}))[0] == 200
        peak_before = _peak_kb(child)

        async def attack() -> tuple[tuple[int, Any], tuple[int, Any], tuple[int, Any]]:
            return await asyncio.gather(
                _call(http, child, "POST", "/api/orchestrator/route",
                      {"instances": "A", "retry": 2}),
                _call(http, child, "POST", "/api/orchestrator/fanout", {"targets": "A,B"}),
                _call(http, child, "POST", f"{S}/sA/send", {"data": {"n": 1}}),
            )  # fmt: skip

        for chunked in (False, True):
            async with http.put(
                servers["A"].url + "/api/instance/faults", json={"reply_chunked": chunked}
            ) as resp:
                assert resp.status == 200
            for _ in range(6):
                route, fanout, send = await attack()
                assert route[0] == 502, route
                assert _is_reply_too_large(route[1]["error"])
                assert len(route[1]["error"]["details"]["attempts"]) == 1  # not retried
                assert fanout[0] == 200, fanout
                a, b = fanout[1]["results"]
                assert (a["status"], b["status"]) == ("error", "ok")
                assert _is_reply_too_large(a["error"])
                assert send[0] == 502, send
                assert _is_reply_too_large(send[1]["error"])

        growth_mb = (_peak_kb(child) - peak_before) / 1024
        assert growth_mb < 48, f"peak RSS grew {growth_mb:.0f} MiB"
        assert child.data_bytes() < 2 * 1024 * 1024
        status, states = await _call(http, child, "GET", "/api/orchestrator/health", None)
        assert (status, states) == (200, {"A": "healthy", "B": "healthy", "C": "healthy"})
        status, history = await _call(http, child, "GET", f"{S}/sA/history", None)
        assert (status, history["total"]) == (200, 0)  # nothing stored for failed sends
        status, reply = await _call(
            http, child, "POST", "/api/orchestrator/route", {"instances": "B", "payload": 7}
        )
        assert (status, reply["result"]["payload"]) == (200, 7)


@pytest.mark.parametrize("chunked", [False, True])
async def test_probe_reads_no_more_than_the_limit(
    session: aiohttp.ClientSession, chunked: bool
) -> None:
    """A health check answering 8 MiB fails the probe as reply_too_large (declared length
    or counted while reading), over the driver's default limit."""
    faults = FaultConfig(health_reply_bytes=8 * 1024 * 1024, reply_chunked=chunked)
    server = BackgroundServer(create_instance_app("P", resolve_handler("echo"), faults=faults))
    url = await server.start()
    try:
        driver = WorkerDriver(session, max_reply_bytes=1024 * 1024)
        with pytest.raises(ReplyTooLargeError, match="limit of 1048576 bytes"):
            await driver.probe(InstanceSpec(name="P", url=url), timeout=5)
        await driver.aclose()
    finally:
        await server.aclose()


async def test_openclaw_driver_reads_no_more_than_the_limit(
    session: aiohttp.ClientSession,
) -> None:
    """A gateway whose chat completion is 1 MB, streamed without a length, is
    reply_too_large over a 64 KiB limit, for a turn as for any other call."""

    async def chat(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b'{"choices": [{"message": {"content": "'
            for _ in range(16):
                yield b"x" * 65536
            yield b'"}}]}'

        from starlette.responses import StreamingResponse

        return StreamingResponse(body(), media_type="application/json")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    server = BackgroundServer(app)
    url = await server.start()
    try:
        driver = OpenClawDriver(session, max_reply_bytes=64 * 1024)
        spec = InstanceSpec(name="G", url=url, driver="openclaw")
        with pytest.raises(ReplyTooLargeError, match="limit of 65536 bytes"):
            await driver.invoke(spec, {"message": "hi"}, timeout=5, request_id="r")
    finally:
        await server.aclose()
