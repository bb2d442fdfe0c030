"""The orchestrator driving three real OpenClaw gateways (and reference instances) on loopback.

Every test builds its own orchestrator over the same gateways O1–O3, started once by the
``fleet`` fixture. Session ids are unique per test because the gateways remember sessions.
The last test kills O3 (``kill -9`` of its process group), so it must stay last.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from openclaw_orchestrator.devtools.openclaw.fleet import OpenClawFleet, fleet_banner
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.drivers.openclaw import (
    MISCONFIGURED,
    RESTORE_NOTE,
    OpenClawDriver,
    message_text,
)

from ..api.conftest import Cluster
from .conftest import GATEWAYS, HEALTH, mixed_cluster

S = "/api/orchestrator/sessions"


def transcript(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(role, text)`` of a gateway transcript's user and assistant messages."""
    return [
        (m["role"], message_text(m.get("content")))
        for m in messages
        if m.get("role") in ("user", "assistant")
    ]


async def spawn(c: Cluster, **body: Any) -> dict[str, Any]:
    """Spawn a session, asserting 201."""
    status, reply = await c.post(f"{S}/spawn", body)
    assert status == 201, reply
    return reply


async def send(c: Cluster, session_id: str, data: Any, **extra: Any) -> dict[str, Any]:
    """Send one message of a session, asserting 200."""
    status, reply = await c.post(f"{S}/{session_id}/send", {"data": data, **extra})
    assert status == 200, reply
    return reply


async def gateway_sessions(
    fleet: OpenClawFleet, name: str, http: aiohttp.ClientSession
) -> set[str]:
    """The session keys gateway ``name`` lists (``sessions_list`` over /tools/invoke)."""
    driver = OpenClawDriver(http)
    reply = await driver.invoke(
        fleet[name].spec(), {"tool": "sessions_list", "args": {}}, timeout=10, request_id="t"
    )
    return {row["key"] for row in reply["result"]["sessions"]}


async def test_route_runs_an_agent_turn_on_a_gateway(fleet: OpenClawFleet) -> None:
    """A message payload becomes an agent turn; the reply comes back in the turn shape."""
    async with mixed_cluster(fleet) as c:
        status, body = await c.post(
            "/api/orchestrator/route", {"instances": "O1", "payload": {"message": "summarize X"}}
        )
    assert status == 200, body
    result = body["result"]
    assert body["instance"] == "O1"
    assert result["text"] == "echo: summarize X"
    assert result["session_key"] is None
    assert result["usage"]["completion_tokens"] >= 1
    assert isinstance(result["model"], str)
    assert result["raw"]["choices"][0]["message"]["content"] == "echo: summarize X"


async def test_route_openai_messages_and_agent_selection(fleet: OpenClawFleet) -> None:
    """OpenAI-style messages and an explicit agent run as one turn on that agent."""
    payload = {"agent": "main", "messages": [{"role": "user", "content": "hello gateway"}]}
    async with mixed_cluster(fleet) as c:
        status, body = await c.post(
            "/api/orchestrator/route", {"instances": "O2", "payload": payload}
        )
        assert status == 200, body
        assert body["result"]["text"] == "echo: hello gateway"
        status, body = await c.post(
            "/api/orchestrator/route",
            {"instances": "O2", "payload": {"message": "hi", "agent": "no-such-agent"}},
        )
    assert status >= 400, body
    assert body["error"]["instance"] == "O2"
    assert len(body["error"]["details"]["attempts"]) == 1


async def test_route_invokes_a_tool(fleet: OpenClawFleet) -> None:
    """A tool payload goes to /tools/invoke and comes back in the tool shape."""
    async with mixed_cluster(fleet) as c:
        status, body = await c.post(
            "/api/orchestrator/route",
            {"instances": "O3", "payload": {"tool": "sessions_list", "args": {}}},
        )
    assert status == 200, body
    result = body["result"]
    assert result["tool"] == "sessions_list"
    assert isinstance(result["result"]["sessions"], list)
    assert result["raw"]["ok"] is True


async def test_a_tool_denied_over_http_is_invalid_request_and_not_retried(
    fleet: OpenClawFleet,
) -> None:
    """sessions_send is not available over HTTP by default: 404 -> invalid_request, once."""
    async with mixed_cluster(fleet) as c:
        status, body = await c.post(
            "/api/orchestrator/route",
            {"instances": "O1,O2", "payload": {"tool": "sessions_send", "args": {}}},
        )
    assert status == 400, body
    error = body["error"]
    assert (error["code"], error["upstream_status"]) == ("invalid_request", 404)
    assert "sessions_send" in error["message"]
    assert len(error["details"]["attempts"]) == 1


async def test_fanout_mixes_reference_instances_and_gateways(fleet: OpenClawFleet) -> None:
    """One fanout over reference instances and gateways aggregates all five replies."""
    payload = {"message": "summarize X"}
    async with mixed_cluster(fleet, "AB") as c:
        status, body = await c.post(
            "/api/orchestrator/fanout",
            {"targets": ["A", "B", "tag:openclaw"], "payload": payload, "aggregate": "array"},
        )
    assert status == 200, body
    assert (body["succeeded"], body["failed"]) == (5, 0)
    assert [e["instance"] for e in body["results"]] == ["A", "B", *GATEWAYS]
    references, gateways = body["value"][:2], body["value"][2:]
    assert references == [{"instance": n, "payload": payload} for n in "AB"]
    assert [g["text"] for g in gateways] == ["echo: summarize X"] * 3


async def test_session_history_matches_the_gateway(fleet: OpenClawFleet) -> None:
    """Session sends are turns in gateway session orch-<id>; both histories agree; close
    deletes the gateway session."""
    questions = ["first question", "second question"]
    async with mixed_cluster(fleet) as c:
        await spawn(c, sessionId="hist-1", instance="O2")
        replies = [await send(c, "hist-1", {"message": q}) for q in questions]
        assert [r["reply"]["session_key"] for r in replies] == ["orch-hist-1"] * 2
        status, page = await c.get(f"{S}/hist-1/history")
        assert status == 200, page
        ours = [(e["data"]["message"], e["reply"]["text"]) for e in page["messages"]]
        driver = OpenClawDriver(c.http)
        theirs = transcript(await driver.gateway_history(fleet["O2"].spec(), "hist-1"))
        assert "agent:main:orch-hist-1" in await gateway_sessions(fleet, "O2", c.http)
        status, _ = await c.post(f"{S}/hist-1/close", {})
        assert status == 200
        assert "agent:main:orch-hist-1" not in await gateway_sessions(fleet, "O2", c.http)
    assert ours == [(q, f"echo: {q}") for q in questions]
    assert theirs == [
        (role, text) for q, a in ours for role, text in (("user", q), ("assistant", a))
    ]


async def test_session_restore_gives_the_gateway_the_conversation(fleet: OpenClawFleet) -> None:
    """A restore replays the history as the context of one turn, replacing what was there."""
    spec = fleet["O3"].spec()
    history = [
        ({"message": "my name is Ada"}, {"text": "echo: my name is Ada"}),
        ({"tool": "sessions_list", "args": {}}, {"tool": "sessions_list", "result": {}}),
        ({"note": 1}, {"instance": "A", "payload": {"note": 1}}),
    ]
    async with aiohttp.ClientSession() as http:
        driver = OpenClawDriver(http)
        await driver.session_restore(spec, "moved-1", [history[0]], timeout=30, request_id="r0")
        await driver.session_restore(spec, "moved-1", history, timeout=30, request_id="r1")
        reply = await driver.session_send(
            spec, "moved-1", {"message": "what is my name?"}, timeout=30, request_id="r2"
        )
        theirs = transcript(await driver.gateway_history(spec, "moved-1"))
    assert reply["text"] == "echo: what is my name?"
    assert [role for role, _ in theirs] == ["user", "assistant", "user", "assistant"]
    context = theirs[0][1]
    assert "User: my name is Ada\nAssistant: echo: my name is Ada" in context
    assert 'User: {"note":1}\nAssistant: {"instance":"A","payload":{"note":1}}' in context
    assert "sessions_list" not in context
    assert RESTORE_NOTE in context
    assert theirs[2:] == [("user", "what is my name?"), ("assistant", "echo: what is my name?")]


async def test_ready_gateways_are_healthy_and_tokens_stay_secret(fleet: OpenClawFleet) -> None:
    """/readyz plus a token check make ready gateways healthy; no token leaves the API."""
    async with mixed_cluster(fleet, "") as c:
        for name in GATEWAYS:
            await c.wait_state(name, "healthy", timeout=20)
        status, detail = await c.get("/api/orchestrator/health?detail=true")
        assert status == 200
        status, listed = await c.get("/api/cluster/instances")
        assert status == 200
    for name in GATEWAYS:
        assert detail[name]["url"] == fleet[name].url
        assert detail[name]["last_error"] is None
    assert {(i["driver"], i["has_credentials"]) for i in listed["instances"]} == {
        ("openclaw", True)
    }
    text = orjson.dumps([detail, listed]).decode() + fleet_banner(fleet) + repr(fleet)
    assert all(gw.url in text for gw in fleet.gateways)
    assert not any(gw.token.get_secret_value() in text for gw in fleet.gateways)


def wrong_token(fleet: OpenClawFleet) -> InstanceSpec:
    """O1's URL with a token it does not accept."""
    return InstanceSpec(
        name="BAD", url=fleet["O1"].url, driver="openclaw", credentials=SecretStr("wrong-token")
    )


async def test_a_wrong_token_is_misconfigured_not_down(fleet: OpenClawFleet) -> None:
    """401 from a gateway: degraded (not down), a clear error, no retry, token not resent."""
    async with mixed_cluster(fleet, "", extra=[wrong_token(fleet)]) as c:
        await c.wait_state("BAD", "degraded", timeout=10)
        statuses = []
        for _ in range(2):
            status, body = await c.post(
                "/api/orchestrator/route", {"instances": "BAD", "payload": {"message": "hi"}}
            )
            statuses.append(status)
            error = body["error"]
            assert (error["code"], error["upstream_status"]) == ("instance_error", 401)
            assert "gateway rejected the token" in error["message"]
            assert len(error["details"]["attempts"]) == 1
        await asyncio.sleep(HEALTH["interval"] * 3)
        assert c.service.registry.get("BAD").health.state.value == "degraded"
    assert statuses == [502, 502]
    assert "not resent" in error["message"]


async def test_health_detail_says_misconfigured(fleet: OpenClawFleet) -> None:
    """Health detail's last_error names the misconfiguration (a degraded probe's detail)."""
    async with mixed_cluster(fleet, "", extra=[wrong_token(fleet)]) as c:
        await c.wait_state("BAD", "degraded", timeout=10)
        status, detail = await c.get("/api/orchestrator/health?instances=BAD&detail=true")
    assert status == 200
    assert detail["BAD"]["state"] == "degraded"
    assert detail["BAD"]["last_error"] == MISCONFIGURED


async def _wait_until_the_model_sees(fleet: OpenClawFleet, marker: str, timeout: float) -> None:
    """Poll the stub model until a request containing ``marker`` reached it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            async with http.get(fleet.stub.url + "/stub/requests") as resp:
                if marker in await resp.text():
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the model never saw {marker!r}")


async def test_killing_a_gateway_mid_run_fails_over(fleet: OpenClawFleet) -> None:
    """kill -9 of O3 mid-turn: the routed task and the migrating session finish on another
    gateway, and health shows O3 down within the probe interval. Must run last."""
    weights = {"O3": 1000.0, "O1": 0.001, "O2": 0.001}  # O3 first, all but certainly
    async with mixed_cluster(fleet, "", weights=weights) as c:
        await spawn(c, sessionId="migrating-1", instance="O3", failover="migrate")
        await send(c, "migrating-1", {"message": "remember the number 42"})
        route = asyncio.create_task(
            c.post(
                "/api/orchestrator/route",
                {
                    "instances": "O3,O1",
                    "policy": "weighted_random",
                    "payload": {"message": "[stub:sleep=3] routed task"},
                },
            )
        )
        sent = asyncio.create_task(
            send(c, "migrating-1", {"message": "[stub:sleep=3] in flight"}, timeout=45)
        )
        await _wait_until_the_model_sees(fleet, "routed task", timeout=20)
        await _wait_until_the_model_sees(fleet, "in flight", timeout=20)
        fleet["O3"].kill()
        killed_at = asyncio.get_running_loop().time()
        await c.wait_state("O3", "down", timeout=HEALTH["interval"] + HEALTH["probe_timeout"])
        down_after = asyncio.get_running_loop().time() - killed_at
        status, routed = await route
        moved = await sent
        status_after, after = await c.post(
            "/api/orchestrator/route", {"instances": "O3,O2", "payload": {"message": "later"}}
        )
        status_page, page = await c.get(f"{S}/migrating-1/history")
        driver = OpenClawDriver(c.http)
        theirs = transcript(
            await driver.gateway_history(fleet[moved["instance"]].spec(), "migrating-1")
        )
    assert down_after <= HEALTH["interval"] + HEALTH["probe_timeout"]
    assert status == 200, routed
    assert routed["instance"] == "O1"
    assert [(a["instance"], a["outcome"]) for a in routed["attempts"]] == [
        ("O3", "down"),
        ("O1", "ok"),
    ]
    assert routed["result"]["text"] == "echo: [stub:sleep=3] routed task"
    assert moved["migrated_from"] == "O3"
    assert moved["instance"] in ("O1", "O2")
    assert moved["reply"]["text"] == "echo: [stub:sleep=3] in flight"
    assert (status_after, after["instance"]) == (200, "O2"), after
    assert {"instance": "O3", "reason": "down"} in after["skipped"]
    assert status_page == 200
    assert [e["kind"] for e in page["messages"]] == ["message", "migration", "message"]
    assert "User: remember the number 42" in theirs[0][1]
    assert theirs[2:] == [
        ("user", "[stub:sleep=3] in flight"),
        ("assistant", "echo: [stub:sleep=3] in flight"),
    ]
