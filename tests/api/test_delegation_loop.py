"""The loop guard end to end (docs/api.md, "Delegation loops"): real reference instances
whose handler delegates again through the orchestrator's route, passing on the
``X-Orchestrator-Hops`` it received, so A -> orchestrator -> B -> orchestrator -> A ... is
refused with ``delegation_loop`` at the configured hop; the header reaching instances on
routes, fanouts, session messages and runs; a bad header refused; spawn allowed."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from openclaw_orchestrator.devtools.reference import HandlerContext, create_instance_app
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.api.app import create_app
from openclaw_orchestrator.server.delegation import LEDGER
from openclaw_orchestrator.server.drivers.openclaw import OpenClawDriver
from openclaw_orchestrator.server.hosting import BackgroundServer, running
from openclaw_orchestrator.settings import Settings
from tests.api.conftest import API_KEY, FAST_HEALTH

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOPS = "X-Orchestrator-Hops"
_received: ContextVar[str | None] = ContextVar("received_hops", default=None)
"""The hop header of the request an instance is serving (set by :class:`HopRecorder`)."""


@dataclass
class Delegation:
    """A cluster of delegating instances and what they received."""

    url: str = ""
    http: aiohttp.ClientSession | None = None
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    """(instance, path, X-Orchestrator-Hops) of every task and session message."""

    async def post(
        self,
        path: str,
        body: Any,
        hops: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = {
            "Authorization": f"Bearer {API_KEY}",
            "Content-Type": "application/json",
            **(headers or {}),
        }
        if hops is not None:
            headers[HOPS] = hops
        assert self.http is not None
        async with self.http.post(self.url + path, data=orjson.dumps(body), headers=headers) as r:
            return r.status, await r.json()

    def hops_at(self, path_end: str) -> list[str | None]:
        return [hops for _, path, hops in self.seen if path.endswith(path_end)]


class HopRecorder:
    """In front of a reference instance: notes each delivery's hop header and hands it to
    the handler (the instance's own context has no headers)."""

    def __init__(self, app: ASGIApp, name: str, cluster: Delegation) -> None:
        self.app, self.name, self.cluster = app, name, cluster

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        hops = next((v.decode() for k, v in scope["headers"] if k == b"x-orchestrator-hops"), None)
        self.cluster.seen.append((self.name, scope["path"], hops))
        token = _received.set(hops)
        try:
            await self.app(scope, receive, send)
        finally:
            _received.reset(token)


def delegating(cluster: Delegation) -> Any:
    """A handler: ``{"via": ["B", "A", ...]}`` routes ``{"via": rest}`` to the first name
    through the orchestrator, passing on the hop header it received, and answers what it
    received with the inner answer (or the orchestrator's refusal); ``{"via": []}`` ends."""

    async def handler(payload: Any, context: HandlerContext) -> Any:
        received = _received.get()
        via = payload.get("via", []) if isinstance(payload, dict) else []
        if not via:
            return {"instance": context.instance, "hops": received}
        body = {"instances": via[0], "payload": {"via": via[1:]}}
        status, reply = await cluster.post("/api/orchestrator/route", body, hops=received)
        inner = reply["result"] if status == 200 else {"status": status, **reply}
        return {"instance": context.instance, "hops": received, "inner": inner}

    return handler


@contextlib.asynccontextmanager
async def delegation_cluster(
    *, fast_paths: bool = True, **overrides: Any
) -> AsyncIterator[Delegation]:
    """Delegating instances A and B behind an orchestrator (on the fast paths or FastAPI's
    routes only), a SQLite store in a temporary folder."""
    cluster = Delegation()
    servers: list[BackgroundServer] = []
    with tempfile.TemporaryDirectory(prefix="orchestrator-hops-") as scratch:
        try:
            specs = []
            for name in "AB":
                app = create_instance_app(name, delegating(cluster))
                servers.append(BackgroundServer(HopRecorder(app, name, cluster)))
                specs.append(InstanceSpec(name=name, url=await servers[-1].start()))
            settings = Settings(
                api_key=API_KEY,
                instances=specs,
                health=FAST_HEALTH,
                data_dir=Path(scratch),
                **overrides,
            )
            api = create_app(settings, fast_paths=fast_paths)
            servers.append(BackgroundServer(api))
            cluster.url = await servers[-1].start()
            async with aiohttp.ClientSession() as http:
                cluster.http = http
                yield cluster
        finally:
            for server in servers:
                server.request_stop()
            await asyncio.gather(*(s.wait_stopped() for s in servers))


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=[True, False], ids=["fast_paths", "framework_only"]
)
async def hops_cluster(request: pytest.FixtureRequest) -> AsyncIterator[Delegation]:
    """The default limit (delegation.max_hops = 3), on each side of the fast paths."""
    async with delegation_cluster(fast_paths=request.param) as started:
        yield started


def chain(result: Any) -> list[Any]:
    """The levels of a delegation chain's answer, outermost first."""
    levels = [result]
    while isinstance(levels[-1], dict) and "inner" in levels[-1]:
        levels.append(levels[-1]["inner"])
    return levels


async def test_a_loop_is_refused_at_the_default_third_hop(hops_cluster: Delegation) -> None:
    """A -> B -> A -> (B refused): three deliveries carry hops 1, 2 and 3; the fourth call
    comes with 3 and is refused, naming the count and the limit."""
    status, body = await hops_cluster.post(
        "/api/orchestrator/route", {"instances": "A", "payload": {"via": ["B", "A", "B", "A"]}}
    )
    assert status == 200, body
    levels = chain(body["result"])
    assert [(lv.get("instance"), lv.get("hops")) for lv in levels[:3]] == [
        ("A", "1"),
        ("B", "2"),
        ("A", "3"),
    ]
    refusal = levels[3]
    assert refusal["status"] == 508
    assert refusal["error"]["code"] == "delegation_loop"
    assert refusal["error"]["details"] == {"hops": 3, "max_hops": 3}
    assert len(levels) == 4  # the refused call delivered nothing


async def test_a_configured_limit_refuses_earlier() -> None:
    async with delegation_cluster(delegation={"max_hops": 1}) as small:
        status, body = await small.post(
            "/api/orchestrator/route", {"instances": "A", "payload": {"via": ["B"]}}
        )
        assert status == 200, body
        first, refusal = chain(body["result"])
        assert first["hops"] == "1"
        assert refusal["error"]["code"] == "delegation_loop"
        assert refusal["error"]["details"] == {"hops": 1, "max_hops": 1}
        assert small.hops_at("/api/instance/task") == ["1"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/orchestrator/route", {"instances": "A", "payload": {}}),
        ("/api/orchestrator/fanout", {"targets": "all", "payload": {}}),
        ("/api/orchestrator/runs", {"kind": "route", "instances": "A", "payload": {}}),
    ],
)
async def test_at_the_limit_nothing_is_delivered(
    hops_cluster: Delegation, path: str, body: dict[str, Any]
) -> None:
    before = len(hops_cluster.seen)
    status, reply = await hops_cluster.post(path, body, hops="3")
    assert status == 508, reply
    assert reply["error"]["code"] == "delegation_loop"
    assert reply["error"]["details"] == {"hops": 3, "max_hops": 3}
    assert len(hops_cluster.seen) == before


async def test_below_the_limit_instances_get_one_more_hop(hops_cluster: Delegation) -> None:
    hops_cluster.seen.clear()
    status, _ = await hops_cluster.post(
        "/api/orchestrator/route", {"instances": "A", "payload": {}}
    )
    assert status == 200
    status, _ = await hops_cluster.post(
        "/api/orchestrator/fanout", {"targets": "all", "payload": {}}, hops="2"
    )
    assert status == 200
    assert sorted(h or "" for h in hops_cluster.hops_at("/api/instance/task")) == ["1", "3", "3"]


async def test_sessions_spawn_at_the_limit_but_send_below_it(hops_cluster: Delegation) -> None:
    status, spawned = await hops_cluster.post("/api/orchestrator/sessions/spawn", {}, hops="3")
    assert status == 201, spawned  # a spawn delivers nothing
    send = f"/api/orchestrator/sessions/{spawned['session_id']}/send"
    status, refused = await hops_cluster.post(send, {"data": {}}, hops="3")
    assert (status, refused["error"]["code"]) == (508, "delegation_loop")
    hops_cluster.seen.clear()
    status, sent = await hops_cluster.post(send, {"data": {}}, hops="1")
    assert status == 200, sent
    assert sent["reply"]["hops"] == "2"
    assert hops_cluster.hops_at("/messages") == ["2"]


async def test_a_run_carries_its_submits_hop_count(hops_cluster: Delegation) -> None:
    hops_cluster.seen.clear()
    status, run = await hops_cluster.post(
        "/api/orchestrator/runs", {"kind": "route", "instances": "B", "payload": {}}, hops="2"
    )
    assert status == 202, run
    assert run["request"]["_hops"] == 2
    assert hops_cluster.http is not None
    async with hops_cluster.http.get(
        f"{hops_cluster.url}/api/orchestrator/runs/{run['run_id']}?wait=10",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        done = await resp.json()
    assert done["state"] == "succeeded", done
    assert done["result"]["result"]["hops"] == "3"
    assert hops_cluster.hops_at("/api/instance/task") == ["3"]


@pytest.mark.parametrize("value", ["abc", "-1", "256", "1.5", "", "9999"])
async def test_a_bad_hop_header_is_a_400_naming_it(hops_cluster: Delegation, value: str) -> None:
    status, body = await hops_cluster.post(
        "/api/orchestrator/route", {"instances": "A", "payload": {}}, hops=value
    )
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["field"] == HOPS
    assert hops_cluster.http is not None
    async with hops_cluster.http.get(
        hops_cluster.url + "/api/health", headers={HOPS: value}
    ) as resp:
        assert resp.status == 400


async def mcp_route(
    cluster: Delegation, hops: str | None, *, caller: str | None = None
) -> dict[str, Any]:
    """A ``route`` tool call over ``/mcp`` with ``X-Orchestrator-Hops: hops`` (and
    ``X-Orchestrator-Caller: caller``, when given); its result."""
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "route", "arguments": {"instances": "B", "payload": {}}},
    }
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
        **({} if hops is None else {HOPS: hops}),
        **({} if caller is None else {"X-Orchestrator-Caller": caller}),
    }
    assert cluster.http is not None
    async with cluster.http.post(
        cluster.url + "/mcp", data=orjson.dumps(call), headers=headers
    ) as r:
        assert r.status == 200, await r.text()
        reply: dict[str, Any] = (await r.json())["result"]
    return reply


async def test_mcp_tools_read_the_hop_header(hops_cluster: Delegation) -> None:
    hops_cluster.seen.clear()
    done = await mcp_route(hops_cluster, "1")
    assert not done.get("isError"), done
    assert done["structuredContent"]["result"]["hops"] == "2"
    refused = await mcp_route(hops_cluster, "3")
    assert refused["isError"] is True
    error = refused["structuredContent"]["error"]
    assert error["code"] == "delegation_loop"
    assert error["details"] == {"hops": 3, "max_hops": 3}
    assert hops_cluster.hops_at("/api/instance/task") == ["2"]


# -- callers that cannot pass the count on: X-Orchestrator-Caller --------------------------

CALLER = "X-Orchestrator-Caller"
GATEWAY_TOKEN = "gateway-token-0123456789"


def fake_gateway(name: str, cluster: Delegation) -> Starlette:
    """An OpenClaw gateway's HTTP surface whose agent turn ``"G2 G1 ..."`` delegates the rest
    to the first name through the orchestrator's route the way a real gateway's MCP client
    calls: the same static ``X-Orchestrator-Caller`` header every time, never the hop count
    it received. Its reply is JSON text: the instance, the hops it received, the inner answer
    (or the orchestrator's refusal)."""

    async def completions(request: Request) -> Response:
        hops = request.headers.get(HOPS)
        cluster.seen.append((name, request.url.path, hops))
        via = (await request.json())["messages"][-1]["content"].split()
        answer: dict[str, Any] = {"instance": name, "hops": hops}
        if via[0] != "end":
            body = {"instances": via[0], "payload": {"message": " ".join(via[1:]) or "end"}}
            status, reply = await cluster.post(
                "/api/orchestrator/route", body, headers={CALLER: name}
            )
            inner = orjson.loads(reply["result"]["text"]) if status == 200 else reply
            answer["inner"] = inner if status == 200 else {"status": status, **reply}
        message = {"role": "assistant", "content": orjson.dumps(answer).decode()}
        return JSONResponse({"choices": [{"index": 0, "message": message}], "model": "fake"})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True, "failing": []})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": []})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/readyz", ready),
            Route("/v1/models", models),
        ]
    )


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=[True, False], ids=["fast_paths", "framework_only"]
)
async def gateway_cluster(request: pytest.FixtureRequest) -> AsyncIterator[Delegation]:
    """Fake gateways G1 and G2 (``driver: "openclaw"``) behind an orchestrator with the
    default limit, on each side of the fast paths."""
    cluster = Delegation()
    servers: list[BackgroundServer] = []
    with tempfile.TemporaryDirectory(prefix="orchestrator-caller-") as scratch:
        try:
            specs = []
            for name in ("G1", "G2"):
                servers.append(BackgroundServer(fake_gateway(name, cluster)))
                url = await servers[-1].start()
                specs.append(
                    InstanceSpec(name=name, url=url, driver="openclaw", credentials=GATEWAY_TOKEN)
                )
            settings = Settings(
                api_key=API_KEY, instances=specs, health=FAST_HEALTH, data_dir=Path(scratch)
            )
            servers.append(BackgroundServer(create_app(settings, fast_paths=request.param)))
            cluster.url = await servers[-1].start()
            async with aiohttp.ClientSession() as http:
                cluster.http = http
                yield cluster
        finally:
            for server in servers:
                server.request_stop()
            await asyncio.gather(*(s.wait_stopped() for s in servers))


async def test_a_gateway_loop_is_refused_by_the_callers_deliveries_in_flight(
    gateway_cluster: Delegation,
) -> None:
    """G1 -> G2 -> G1 -> (G2 refused) with only ``X-Orchestrator-Caller`` on the calls back:
    each call counts as the delivery in flight to its caller, so the third delivery carries 3
    and G1's next call is ``delegation_loop``; nothing stays in the ledger afterwards."""
    gateway_cluster.seen.clear()
    status, body = await gateway_cluster.post(
        "/api/orchestrator/route", {"instances": "G1", "payload": {"message": "G2 G1 G2 G1"}}
    )
    assert status == 200, body
    levels = chain(orjson.loads(body["result"]["text"]))
    assert [(lv.get("instance"), lv.get("hops")) for lv in levels[:3]] == [
        ("G1", "1"),
        ("G2", "2"),
        ("G1", "3"),
    ]
    refusal = levels[3]
    assert refusal["status"] == 508
    assert refusal["error"]["code"] == "delegation_loop"
    assert refusal["error"]["details"] == {"hops": 3, "max_hops": 3}
    assert gateway_cluster.hops_at("/v1/chat/completions") == ["1", "2", "3"]
    assert repr(LEDGER) == "<DeliveryLedger []>"


async def test_a_caller_with_nothing_in_flight_starts_at_zero(
    gateway_cluster: Delegation,
) -> None:
    """A gateway's call outside any delivery to it (its own user's turn) counts as 0."""
    gateway_cluster.seen.clear()
    status, body = await gateway_cluster.post(
        "/api/orchestrator/route",
        {"instances": "G2", "payload": {"message": "end"}},
        headers={CALLER: "G1"},
    )
    assert status == 200, body
    assert gateway_cluster.hops_at("/v1/chat/completions") == ["1"]


@pytest.mark.parametrize("value", ["G 1", "-G1", "a" * 65, "G1/x"])
async def test_a_bad_caller_header_is_a_400_naming_it(
    gateway_cluster: Delegation, value: str
) -> None:
    """On the route (fast path or not) and on any other request."""
    status, body = await gateway_cluster.post(
        "/api/orchestrator/route",
        {"instances": "G1", "payload": {"message": "end"}},
        headers={CALLER: value},
    )
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["field"] == CALLER
    assert gateway_cluster.http is not None
    async with gateway_cluster.http.get(
        gateway_cluster.url + "/api/health", headers={CALLER: value}
    ) as resp:
        assert resp.status == 400


async def test_mcp_tools_count_a_caller_as_its_delivery_in_flight(
    hops_cluster: Delegation,
) -> None:
    """Over ``/mcp`` too: a call from B while a delivery of hops 2 to B is in flight
    delivers with 3; one from A (nothing in flight) with 1."""
    hops_cluster.seen.clear()
    with LEDGER.delivering("B", 2):
        done = await mcp_route(hops_cluster, None, caller="B")
    assert done["structuredContent"]["result"]["hops"] == "3"
    done = await mcp_route(hops_cluster, None, caller="A")
    assert done["structuredContent"]["result"]["hops"] == "1"
    with LEDGER.delivering("B", 3):
        refused = await mcp_route(hops_cluster, None, caller="B")
    assert refused["structuredContent"]["error"]["code"] == "delegation_loop"
    assert hops_cluster.hops_at("/api/instance/task") == ["3", "1"]


async def test_a_streamed_or_cancelled_gateway_delivery_is_in_the_ledger_until_it_ends() -> None:
    """The OpenClaw driver holds a turn in the ledger while its answer streams in, and
    removes it when the turn ends or its task is cancelled mid-stream."""
    release = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        role = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
        yield b"data: " + orjson.dumps(role) + b"\n\n"
        await release.wait()
        text = {"choices": [{"index": 0, "delta": {"content": "done"}, "finish_reason": "stop"}]}
        yield b"data: " + orjson.dumps(text) + b"\n\ndata: [DONE]\n\n"

    async def completions(request: Request) -> Response:
        return StreamingResponse(chunks(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    deltas: list[Any] = []

    async def on_delta(delta: Any) -> None:
        deltas.append(delta)

    async with running(app) as url, aiohttp.ClientSession() as http:
        spec = InstanceSpec(name="G9", url=url, driver="openclaw", credentials=GATEWAY_TOKEN)
        driver = OpenClawDriver(http)

        def turn() -> asyncio.Task[Any]:
            payload = {"message": "hi"}
            call = driver.invoke(spec, payload, timeout=10, request_id="r", on_delta=on_delta)
            return asyncio.create_task(call)

        async def in_flight() -> None:
            for _ in range(500):
                if LEDGER.highest("G9"):
                    return
                await asyncio.sleep(0.01)

        streamed = turn()
        await in_flight()
        assert repr(LEDGER) == "<DeliveryLedger [G9: 1x1]>"
        release.set()
        assert (await streamed)["text"] == "done"
        assert repr(LEDGER) == "<DeliveryLedger []>"
        release.clear()
        cancelled = turn()
        await in_flight()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert repr(LEDGER) == "<DeliveryLedger []>"
    assert deltas == [{"text": "done"}]
