"""Migrating a session whose history is larger than an instance takes in one body: the paged
restore of instance protocol v1.1, end to end and at each end (orchestrator driver, reference
instance, OpenClaw driver)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.errors import InstanceProtocolError
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.drivers.openclaw import latest_messages
from openclaw_orchestrator.server.drivers.worker import WorkerDriver
from openclaw_orchestrator.server.hosting import BackgroundServer

from .conftest import start_cluster

S = "/api/orchestrator/sessions"
BLOB = "x" * 100_000
"""~100 KB: an echo exchange carries it twice (payload and result), ~200 KB."""


async def test_a_3_mib_history_migrates_in_pages_and_the_new_state_matches() -> None:
    """16 sends of ~200 KB each (3.2 MB, instances take 1 MiB bodies): when A stops, the
    next send migrates to B, and B's session state is exactly the stored history."""
    async with start_cluster("AB", health={"interval": 60, "down_backoff": 60}) as c:
        status, reply = await c.post(
            f"{S}/spawn", {"sessionId": "big", "instance": "A", "failover": "migrate"}
        )
        assert status == 201, reply
        for i in range(16):
            status, reply = await c.post(f"{S}/big/send", {"data": {"i": i, "blob": BLOB}})
            assert status == 200, reply
        await c.stop_instance("A")
        status, reply = await c.post(f"{S}/big/send", {"data": {"i": 16}})
        assert status == 200, reply
        assert (reply["instance"], reply["migrated_from"]) == ("B", "A")
        assert reply["reply"]["session"] == {"id": "big", "seen": 17}
        _, page = await c.get(f"{S}/big/history?limit=1000")
        messages = [m for m in page["messages"] if m["kind"] == "message"]
        async with c.http.get(c.instance_urls["B"] + "/api/instance/sessions/big") as resp:
            state = await resp.json()
        assert state["seen"] == 17
        assert state["history"] == [{"payload": m["data"], "result": m["reply"]} for m in messages]
        migration = next(m for m in page["messages"] if m["kind"] == "migration")
        assert migration["data"] == {"from": "A", "to": "B", "replayed": 16}


async def _pairs(count: int) -> AsyncIterator[tuple[Any, Any]]:
    for i in range(count):
        yield {"i": i, "blob": BLOB}, {"echo": i}


@pytest.fixture
async def instance() -> AsyncIterator[InstanceSpec]:
    """One reference instance with its default 1 MiB body limit."""
    server = BackgroundServer(create_instance_app("R", resolve_handler("echo")))
    url = await server.start()
    yield InstanceSpec(name="R", url=url)
    await server.aclose()


async def test_driver_restore_streams_pages_under_the_body_limit(
    session: aiohttp.ClientSession, instance: InstanceSpec
) -> None:
    """A 2.5 MB history from an async source reaches the instance whole, in order, though
    no single body over 1 MiB would be taken (a 413 before paging)."""
    driver = WorkerDriver(session)
    await driver.session_restore(instance, "s", _pairs(25), timeout=10, request_id="r")
    async with session.get(instance.url + "/api/instance/sessions/s") as resp:
        state = await resp.json()
    assert state["seen"] == 25
    assert [h["result"] for h in state["history"]] == [{"echo": i} for i in range(25)]
    await driver.aclose()


async def test_reference_instance_stages_pages_in_order(
    session: aiohttp.ClientSession, instance: InstanceSpec
) -> None:
    """Pages stage until the final one swaps them in; a page out of order is a 409 naming the
    expected offset, a bad offset a 400, and the old history serves until the commit."""
    url = instance.url + "/api/instance/sessions/p"

    async def put(body: Any) -> tuple[int, Any]:
        async with session.put(url, json=body) as resp:
            return resp.status, await resp.json()

    item = {"payload": 1, "result": 2}
    assert await put({"history": [item]}) == (200, {"session_id": "p", "seen": 1})
    assert await put({"history": [item, item], "offset": 0, "final": False}) == (
        200,
        {"session_id": "p", "staged": 2},
    )
    async with session.get(url) as resp:
        assert (await resp.json())["seen"] == 1  # not committed yet
    status, body = await put({"history": [item], "offset": 5, "final": False})
    assert status == 409
    assert body["error"]["code"] == "restore_out_of_order"
    assert "expected 2" in body["error"]["message"]
    status, body = await put({"history": [], "offset": -1})
    assert (status, body["error"]["message"]) == (400, "offset: expected an integer of 0 or more")
    status, body = await put({"history": [], "final": "yes"})
    assert (status, body["error"]["message"]) == (400, "final: expected true or false")
    assert await put({"history": [item], "offset": 2, "final": True}) == (
        200,
        {"session_id": "p", "seen": 3},
    )
    status, body = await put({"history": [item], "offset": 3, "final": True})
    assert status == 409  # nothing is being staged any more
    assert "no paged restore is under way" in body["error"]["message"]


async def test_an_instance_without_paged_restore_is_told_apart(
    session: aiohttp.ClientSession,
) -> None:
    """An instance that answers a page as a whole v1 restore (no "staged") is a protocol
    error, not a silently truncated session."""

    async def v1_restore(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"session_id": "s", "seen": len(body["history"])})

    app = Starlette(routes=[Route("/api/instance/sessions/{sid}", v1_restore, methods=["PUT"])])
    server = BackgroundServer(app)
    url = await server.start()
    try:
        driver = WorkerDriver(session, restore_page_bytes=64 * 1024)
        spec = InstanceSpec(name="OLD", url=url)
        with pytest.raises(InstanceProtocolError, match="paged restore"):
            await driver.session_restore(spec, "s", _pairs(3), timeout=5, request_id="r")
        await driver.session_restore(spec, "s", [(1, 2)], timeout=5, request_id="r")  # one page
    finally:
        await server.aclose()


async def test_openclaw_restore_keeps_the_newest_messages_within_its_budget() -> None:
    """The OpenClaw restore reads the history once and keeps only its newest text within the
    budget (always the newest exchange), counting what it left out."""
    messages, left_out = await latest_messages(_pairs(30), 250_000)
    assert left_out == 2 * 28  # two messages per exchange; 2 exchanges of ~100 KB fit
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert '"i":29' in messages[-2]["content"]
    huge, left_out = await latest_messages(_pairs(3), 10)
    assert (len(huge), left_out) == (2, 4)  # the newest exchange even over the budget
