"""The orchestrator driving two real OpenClaw gateways (and reference instances) on loopback.

Every test builds its own orchestrator over the same gateways O1 and O2, started once by the
``fleet`` fixture (two are enough for every case here, failover included, and each gateway
costs about 20 s of CPU to start). Session ids are unique per test because the gateways
remember sessions. The last test kills O2 (``kill -9`` of its process group), so it must
stay last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from openclaw_orchestrator.devtools.openclaw.fleet import OpenClawFleet, fleet_banner
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.sdk.events import SseParser
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
            {"instances": "O1", "payload": {"tool": "sessions_list", "args": {}}},
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
    """One fanout over reference instances and gateways aggregates all four replies."""
    payload = {"message": "summarize X"}
    async with mixed_cluster(fleet, "AB") as c:
        status, body = await c.post(
            "/api/orchestrator/fanout",
            {"targets": ["A", "B", "tag:openclaw"], "payload": payload, "aggregate": "array"},
        )
    assert status == 200, body
    assert (body["succeeded"], body["failed"]) == (2 + len(GATEWAYS), 0)
    assert [e["instance"] for e in body["results"]] == ["A", "B", *GATEWAYS]
    references, gateways = body["value"][:2], body["value"][2:]
    assert references == [{"instance": n, "payload": payload} for n in "AB"]
    assert [g["text"] for g in gateways] == ["echo: summarize X"] * len(GATEWAYS)


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
    spec = fleet["O1"].spec()
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


class Deltas(list[Any]):
    """An ``on_delta`` that keeps what it is given."""

    async def __call__(self, delta: Any) -> None:
        self.append(delta)


# -- streaming and cancel on a real gateway ---------------------------------------------


async def stub_streams(fleet: OpenClawFleet, http: aiohttp.ClientSession) -> list[Any]:
    """The stub model's streamed answers and how each ended."""
    async with http.get(fleet.stub.url + "/stub/streams") as resp:
        streams: list[Any] = await resp.json()
        return streams


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy (that value)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def stream_of(fleet: OpenClawFleet, http: aiohttp.ClientSession, marker: str) -> Any:
    """The stub's stream whose text holds ``marker``, once it exists."""

    async def find() -> Any:
        found = [s for s in await stub_streams(fleet, http) if marker in s["text"]]
        return found[-1] if found else None

    return await until(find, f"the model streams {marker!r}")


async def session_row(
    driver: OpenClawDriver, spec: InstanceSpec, session_id: str
) -> dict[str, Any]:
    """The gateway's ``sessions_list`` row of orchestrator session ``session_id``."""
    listed = await driver.invoke(
        spec,
        {"tool": "sessions_list", "args": {"search": f"orch-{session_id}"}},
        timeout=10,
        request_id="list",
    )
    rows = [r for r in listed["result"]["sessions"] if r["key"].endswith(f":orch-{session_id}")]
    assert len(rows) == 1, rows
    row: dict[str, Any] = rows[0]
    return row


async def test_a_real_gateway_streams_a_turn_word_by_word(fleet: OpenClawFleet) -> None:
    """The stub model streams a word at a time; the gateway relays them; the driver hands
    each on as ``{"text"}`` and returns the JSON call's result shape and text."""
    spec = fleet["O1"].spec()
    message = "[stub:stream=0.02] one two three four five"
    async with aiohttp.ClientSession() as http:
        driver = OpenClawDriver(http)
        deltas = Deltas()
        result = await driver.invoke(
            spec, {"message": message}, timeout=30, request_id="s1", on_delta=deltas
        )
        plain = await driver.invoke(spec, {"message": message}, timeout=30, request_id="s2")
        streamed = await stream_of(fleet, http, "one two three four five")
    assert len(deltas) >= 5
    assert all(list(d) == ["text"] and d["text"] for d in deltas)
    assert "".join(d["text"] for d in deltas) == result["text"] == f"echo: {message}"
    assert result.keys() == plain.keys()
    assert result["raw"].keys() == plain["raw"].keys()
    assert (result["text"], result["model"], result["session_key"]) == (
        plain["text"],
        plain["model"],
        None,
    )
    assert result["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"] > 0
    assert result["raw"]["choices"][0]["message"] == {
        "role": "assistant",
        "content": result["text"],
    }
    assert result["raw"]["choices"][0]["finish_reason"] == "stop"
    assert (streamed["state"], streamed["chunks"]) == ("done", 7)


async def test_a_real_gateway_streams_session_messages(fleet: OpenClawFleet) -> None:
    """Session messages stream too, inside the gateway session, which keeps both turns."""
    spec = fleet["O1"].spec()
    async with aiohttp.ClientSession() as http:
        driver = OpenClawDriver(http)
        replies, relayed = [], []
        for text in ("[stub:stream=0.01] first words here", "[stub:stream=0.01] more words"):
            deltas = Deltas()
            replies.append(
                await driver.session_send(
                    spec,
                    "streamed-1",
                    {"message": text},
                    timeout=30,
                    request_id="m",
                    on_delta=deltas,
                )
            )
            relayed.append(deltas)
        theirs = await driver.gateway_history(spec, "streamed-1")
    assert [r["session_key"] for r in replies] == ["orch-streamed-1"] * 2
    assert all(len(d) > 1 for d in relayed)
    assert ["".join(d["text"] for d in ds) for ds in relayed] == [r["text"] for r in replies]
    assistant = [message_text(m["content"]) for m in theirs if m["role"] == "assistant"]
    assert assistant == [r["text"] for r in replies]


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "json"])
async def test_cancelling_a_turn_aborts_the_gateway_run(
    fleet: OpenClawFleet, streamed: bool
) -> None:
    """Cancel mid-turn: the connection closes, the gateway aborts the agent run (its model
    call hangs up: the stub saw a disconnect; the session says ``killed`` and
    ``abortedLastRun``; no reply in its transcript). The session goes on: the next turn
    gets the cancelled message as context ("Queued user message ...")."""
    spec = fleet["O1"].spec()
    session = f"cancel-{'streamed' if streamed else 'json'}"
    marker = f"{session} a b c d e f g h i j k l"
    async with aiohttp.ClientSession() as http:
        driver = OpenClawDriver(http)
        deltas = Deltas()
        call = asyncio.create_task(
            driver.session_send(
                spec,
                session,
                {"message": f"[stub:stream=0.5] {marker}"},
                timeout=60,
                request_id="c",
                on_delta=deltas if streamed else None,
            )
        )
        await stream_of(fleet, http, marker)
        running_row = await session_row(driver, spec, session)
        if streamed:

            async def relayed() -> int:
                return len(deltas)

            await until(relayed, "a first delta")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

        async def ended() -> Any:
            found = await stream_of(fleet, http, marker)
            return found if found["state"] != "streaming" else None

        model_stream = await until(ended, "the model's stream ends")
        aborted_row = await until(
            lambda: _if_aborted(session_row(driver, spec, session)), "the run is aborted"
        )
        transcript = await driver.gateway_history(spec, session)
        after = await driver.session_send(
            spec, session, {"message": "[stub:stream=0] still here"}, timeout=30, request_id="d"
        )
    assert running_row["status"] == "running"
    assert model_stream["state"] == "disconnected"
    assert model_stream["chunks"] < len(marker.split()) + 2
    assert (aborted_row["status"], aborted_row["abortedLastRun"]) == ("killed", True)
    assert [m["role"] for m in transcript] == ["user"]
    assert after["text"].endswith("[stub:stream=0] still here")
    assert "Queued user message from a previous active turn" in after["text"]
    assert marker in after["text"]  # the gateway keeps the cancelled message as context


async def _if_aborted(row: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
    """The row once the gateway marked its last run aborted."""
    value = await row
    return value if value.get("abortedLastRun") else None


async def sse_events(c: Cluster, path: str, body: Any) -> list[Any]:
    """POST ``body`` asking for a stream: its events, once the stream has ended."""
    async with c.http.post(
        c.url + path,
        data=orjson.dumps(body),
        headers={**c.headers, "Accept": "text/event-stream", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.read()
    return list(SseParser().feed(raw))


async def test_a_gateways_output_streams_token_by_token_through_route_and_send(
    fleet: OpenClawFleet,
) -> None:
    """Through the orchestrator: a route's and a session send's ``delta`` events are the
    gateway's words as the stub model streamed them, then the usual result."""
    words = "alpha beta gamma delta epsilon"
    async with mixed_cluster(fleet) as c:
        routed = await sse_events(
            c,
            "/api/orchestrator/route",
            {"instances": "O2", "payload": {"message": f"[stub:stream=0.02] {words}"}},
        )
        session = await spawn(c, instance="O2", sessionId="streamed-through")
        sent = await sse_events(
            c,
            f"{S}/{session['session_id']}/send",
            {"data": {"message": f"[stub:stream=0.02] {words} again"}, "stream": True},
        )
        status, history = await c.get(f"{S}/{session['session_id']}/history")
    for got, text in ((routed, f"echo: [stub:stream=0.02] {words}"), (sent, None)):
        deltas = [e.data["delta"]["text"] for e in got if e.type == "delta"]
        assert len(deltas) >= 6  # "echo:" and the words, one chunk each
        assert got[-1].type == "result"
        final = got[-1].data["result"] if "result" in got[-1].data else got[-1].data["reply"]
        assert "".join(deltas) == final["text"]
        if text is not None:
            assert final["text"] == text
        assert all(e.data["instance"] == "O2" for e in got if e.type == "delta")
    assert status == 200
    assert history["messages"][-1]["reply"]["text"] == sent[-1].data["reply"]["text"]


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
    """kill -9 of O2 mid-turn: the routed task and the migrating session finish on O1, and
    health shows O2 down within the probe interval. Must run last."""
    weights = {"O2": 1000.0, "O1": 0.001}  # O2 first, all but certainly
    async with mixed_cluster(fleet, "", weights=weights) as c:
        for name in ("O2", "O1"):  # a degraded O2 (a gateway under CPU load says so) goes last
            await c.wait_state(name, "healthy", timeout=30)
        await spawn(c, sessionId="migrating-1", instance="O2", failover="migrate")
        await send(c, "migrating-1", {"message": "remember the number 42"})
        route = asyncio.create_task(
            c.post(
                "/api/orchestrator/route",
                {
                    "instances": "O2,O1",
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
        fleet["O2"].kill()
        killed_at = asyncio.get_running_loop().time()
        await c.wait_state("O2", "down", timeout=HEALTH["interval"] + HEALTH["probe_timeout"])
        down_after = asyncio.get_running_loop().time() - killed_at
        status, routed = await route
        moved = await sent
        status_after, after = await c.post(
            "/api/orchestrator/route", {"instances": "O2,O1", "payload": {"message": "later"}}
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
        ("O2", "down"),
        ("O1", "ok"),
    ]
    assert routed["result"]["text"] == "echo: [stub:sleep=3] routed task"
    assert moved["migrated_from"] == "O2"
    assert moved["instance"] == "O1"
    assert moved["reply"]["text"] == "echo: [stub:sleep=3] in flight"
    assert (status_after, after["instance"]) == (200, "O1"), after
    assert {"instance": "O2", "reason": "down"} in after["skipped"]
    assert status_page == 200
    assert [e["kind"] for e in page["messages"]] == ["message", "migration", "message"]
    assert "User: remember the number 42" in theirs[0][1]
    assert theirs[2:] == [
        ("user", "[stub:sleep=3] in flight"),
        ("assistant", "echo: [stub:sleep=3] in flight"),
    ]
