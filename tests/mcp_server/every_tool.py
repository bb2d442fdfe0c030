"""Every tool called once, in an order that gives each something to act on, with what the
result must say; both transports run it (the same tools over the core and over the SDK)."""

from __future__ import annotations

from typing import Any

from mcp import Client

from tests.api.conftest import Cluster

from .conftest import ok

TOOL_NAMES = [
    "route",
    "fanout",
    "sessions_spawn",
    "sessions_send",
    "sessions_history",
    "sessions_list",
    "sessions_close",
    "health",
    "instances",
    "runs_submit",
    "runs_get",
    "runs_wait",
    "runs_cancel",
]
SESSION_TOOL_NAMES = ["sessions_send", "sessions_history", "sessions_close"]


async def call_every_tool(client: Client, cluster: Cluster, session_id: str) -> dict[str, Any]:
    """Call each tool of :data:`TOOL_NAMES` and check its result; returns them by tool."""
    seen: dict[str, Any] = {}
    seen["health"] = await ok(client, "health", {"instances": "A-B"})
    assert set(seen["health"]) == {"A", "B"}
    assert set(seen["health"].values()) <= {"healthy", "degraded"}  # degraded: a slow probe
    seen["instances"] = await ok(client, "instances", {})
    assert seen["instances"] == (await cluster.get("/api/cluster/instances"))[1]
    seen["route"] = await ok(client, "route", {"instances": ["B"], "payload": {"n": 1}})
    assert seen["route"]["instance"] == "B"
    assert seen["route"]["result"] == {"instance": "B", "payload": {"n": 1}}
    seen["fanout"] = await ok(client, "fanout", {"targets": "A-B", "payload": {"n": 2}})
    assert [e["instance"] for e in seen["fanout"]["results"]] == ["A", "B"]
    assert seen["fanout"]["value"] == [{"instance": i, "payload": {"n": 2}} for i in "AB"]
    await _session_tools(client, cluster, session_id, seen)
    await _run_tools(client, seen)
    assert sorted(seen) == sorted(TOOL_NAMES)
    return seen


async def _session_tools(
    client: Client, cluster: Cluster, session_id: str, seen: dict[str, Any]
) -> None:
    spawned = await ok(client, "sessions_spawn", {"sessionId": session_id, "instance": "A"})
    assert (spawned["session_id"], spawned["state"]) == (session_id, "open")
    assert spawned["token"].startswith("ocs_")
    sent = await ok(client, "sessions_send", {"sessionId": session_id, "data": {"m": 1}})
    assert (sent["seq"], sent["instance"], sent["reply"]["payload"]) == (1, "A", {"m": 1})
    history = await ok(client, "sessions_history", {"sessionId": session_id, "limit": 10})
    path = f"/api/orchestrator/sessions/{session_id}/history?limit=10"
    assert history == (await cluster.get(path))[1]
    assert [m["data"] for m in history["messages"]] == [{"m": 1}]
    listed = await ok(client, "sessions_list", {"state": "open", "instance": "A"})
    assert session_id in [s["session_id"] for s in listed["sessions"]]
    closed = await ok(client, "sessions_close", {"sessionId": session_id})
    assert closed["state"] == "closed"
    seen.update(
        sessions_spawn=spawned,
        sessions_send=sent,
        sessions_history=history,
        sessions_list=listed,
        sessions_close=closed,
    )


async def _run_tools(client: Client, seen: dict[str, Any]) -> None:
    body = {"kind": "route", "instances": "A", "payload": {"r": 1}, "timeout": "30s"}
    submitted = await ok(client, "runs_submit", body)
    run_id = submitted["run_id"]
    assert (submitted["kind"], submitted["request"]["payload"]) == ("route", {"r": 1})
    got = await ok(client, "runs_get", {"run_id": run_id})
    assert got["run_id"] == run_id
    waited = await ok(client, "runs_wait", {"run_id": run_id, "timeout": 20})
    assert waited["state"] == "succeeded", waited
    assert waited["result"]["result"] == {"instance": "A", "payload": {"r": 1}}
    cancelled = await ok(client, "runs_cancel", {"run_id": run_id})
    assert cancelled["state"] == "succeeded"  # a finished run is returned as it is
    seen.update(runs_submit=submitted, runs_get=got, runs_wait=waited, runs_cancel=cancelled)
