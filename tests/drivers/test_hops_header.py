"""``X-Orchestrator-Hops`` on every delivery (the loop guard, docs/api.md "Delegation
loops"): one more than the call being served came with, from both instance transports and
the OpenClaw driver, on tasks, session messages, restores and cancels; never on probes and
closes, which run no agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from openclaw_orchestrator.devtools.reference import create_instance_app, resolve_handler
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.delegation import bind_hops, reset_hops
from openclaw_orchestrator.server.drivers import WorkerDriver
from openclaw_orchestrator.server.drivers.base import Fence
from openclaw_orchestrator.server.drivers.openclaw import OpenClawDriver
from openclaw_orchestrator.server.hosting import running

Seen = list[tuple[str, str, str | None]]
"""(method, path, X-Orchestrator-Hops or None) of every request an instance got."""


class Recorder:
    """ASGI middleware noting each request's method, path and hop header."""

    def __init__(self, app: ASGIApp, seen: Seen) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hops = next(
                (v.decode() for k, v in scope["headers"] if k == b"x-orchestrator-hops"), None
            )
            self.seen.append((scope["method"], scope["path"], hops))
        await self.app(scope, receive, send)


@contextmanager
def delegated(hops: int) -> Iterator[None]:
    """Serve as a call that came with ``X-Orchestrator-Hops: hops``."""
    token = bind_hops(hops)
    try:
        yield
    finally:
        reset_hops(token)


@pytest.fixture
async def instance() -> AsyncIterator[tuple[InstanceSpec, Seen]]:
    """A real reference instance (its fast path included) behind a header recorder."""
    seen: Seen = []
    app = create_instance_app("A", resolve_handler("stream"))
    async with running(Recorder(app, seen)) as url:
        yield InstanceSpec(name="A", url=url), seen


def hops_of(seen: Seen, method: str, suffix: str) -> list[str | None]:
    return [h for m, p, h in seen if m == method and p.endswith(suffix)]


async def test_tasks_and_session_calls_carry_one_more_hop(
    driver: WorkerDriver, instance: tuple[InstanceSpec, Seen]
) -> None:
    spec, seen = instance
    await driver.invoke(spec, {"text": "a"}, timeout=5.0, request_id="r0")  # nobody delegated
    with delegated(2):
        await driver.invoke(spec, {"text": "b"}, timeout=5.0, request_id="r1")
        got: list[Any] = []

        async def on_delta(delta: Any) -> None:
            got.append(delta)

        await driver.invoke(spec, {"text": "c d"}, timeout=5.0, request_id="r2", on_delta=on_delta)
        await driver.session_send(spec, "s1", {"text": "m"}, timeout=5.0, request_id="r3")
        history = [({"text": "m"}, {"text": "m"})]
        await driver.session_restore(spec, "s2", history, timeout=5.0, request_id="r4")
        await driver.session_close(spec, "s2", timeout=5.0)
    await driver.probe(spec, timeout=5.0)
    assert got  # the streamed task did stream (through the transport's lean client when it has one)
    assert hops_of(seen, "POST", "/api/instance/task") == ["1", "3", "3"]
    assert hops_of(seen, "POST", "/sessions/s1/messages") == ["3"]
    assert hops_of(seen, "PUT", "/sessions/s2") == ["3"]
    assert hops_of(seen, "DELETE", "/sessions/s2") == [None]
    assert hops_of(seen, "GET", "/api/health/check") == [None]


async def test_a_paged_restore_carries_the_hop_on_every_page(
    session: aiohttp.ClientSession, instance: tuple[InstanceSpec, Seen]
) -> None:
    spec, seen = instance
    history = [({"text": "x" * 100}, {"text": "y" * 100}) for _ in range(5)]
    async with WorkerDriver(session, restore_page_bytes=300) as paging:
        with delegated(1):
            await paging.session_restore(
                spec, "s3", history, timeout=5.0, request_id="r5", fence=Fence(1, 5)
            )
    pages = hops_of(seen, "PUT", "/sessions/s3")
    assert len(pages) > 1
    assert set(pages) == {"2"}


async def test_an_abandoned_task_cancel_carries_its_hop(
    driver: WorkerDriver, instance: tuple[InstanceSpec, Seen]
) -> None:
    spec, seen = instance
    with delegated(1):
        call = asyncio.create_task(
            driver.invoke(
                spec, {"text": "slow task", "delay_ms": 5000}, timeout=10.0, request_id="r6"
            )
        )
    while not hops_of(seen, "POST", "/api/instance/task"):  # noqa: ASYNC110  # another server's
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await driver.aclose()  # lets the cancel call finish
    assert hops_of(seen, "POST", "/tasks/r6/cancel") == ["2"]


COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "model": "openclaw",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
}


def fake_gateway(seen: Seen) -> Starlette:
    """Answers a completion and an empty sessions list; notes the hop header."""

    async def handle(request: Request) -> Response:
        seen.append((request.method, request.url.path, request.headers.get("x-orchestrator-hops")))
        body: Any = COMPLETION
        if request.url.path == "/tools/invoke":
            body = {"ok": True, "result": {"details": {"sessions": []}}}
        return Response(orjson.dumps(body), media_type="application/json")

    paths = ("/v1/chat/completions", "/tools/invoke")
    return Starlette(routes=[Route(p, handle, methods=["POST"]) for p in paths])


async def test_openclaw_turns_and_tool_calls_carry_one_more_hop(
    session: aiohttp.ClientSession,
) -> None:
    seen: Seen = []
    async with running(fake_gateway(seen)) as url:
        spec = InstanceSpec(name="G", url=url, driver="openclaw", credentials=SecretStr("t"))
        gateway = OpenClawDriver(session)
        await gateway.invoke(spec, {"message": "hi"}, timeout=5.0, request_id="g0")
        with delegated(2):
            await gateway.invoke(spec, {"message": "hi"}, timeout=5.0, request_id="g1")
            await gateway.invoke(spec, {"tool": "sessions_list"}, timeout=5.0, request_id="g2")
            await gateway.session_send(spec, "s1", "hello", timeout=5.0, request_id="g3")
            history = [("before", {"text": "earlier"})]
            await gateway.session_restore(spec, "s2", history, timeout=5.0, request_id="g4")
        await gateway.aclose()
    # the restore first closes (a sessions_list the orchestrator makes itself: no hop)
    assert hops_of(seen, "POST", "/v1/chat/completions") == ["1", "3", "3", "3"]
    assert hops_of(seen, "POST", "/tools/invoke") == ["3", None]
