"""Sessions through the HTTP API: spawn, ordered sends, tokens, history, close, expiry,
migration, against real instances and a real SQLite store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from openclaw_orchestrator.domain.sessions import rendezvous_order

from .conftest import Cluster, start_cluster

S = "/api/orchestrator/sessions"


async def spawn(c: Cluster, **body: Any) -> dict[str, Any]:
    """Spawn a session and return the reply, asserting 201."""
    status, reply = await c.post(f"{S}/spawn", body)
    assert status == 201, reply
    return reply


async def as_token(
    c: Cluster, token: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """A request with a session token as the bearer instead of the API key."""
    async with c.http.request(
        method, c.url + path, json=body, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        return resp.status, await resp.json()


async def test_spawn_returns_token_and_pins_an_instance(cluster: Cluster) -> None:
    """Spawn creates an open session on a healthy instance with a one-time token."""
    reply = await spawn(
        cluster, sessionId="session1", instance="C", metadata={"user": "u1"}, ttl="1h"
    )
    assert reply["session_id"] == "session1"
    assert reply["instance"] == "C"
    assert reply["state"] == "open"
    assert reply["ttl"] == 3600
    assert reply["metadata"] == {"user": "u1"}
    assert reply["token"].startswith("ocs_")
    assert reply["messages"] == 0
    status, info = await cluster.get(f"{S}/session1")
    assert status == 200
    assert "token" not in info


async def test_spawn_existing_id_is_409_session_exists(cluster: Cluster) -> None:
    """The same id twice is a conflict with the code session_exists."""
    await spawn(cluster, sessionId="dup")
    status, body = await cluster.post(f"{S}/spawn", {"sessionId": "dup"})
    assert status == 409
    assert body["error"]["code"] == "session_exists"


async def test_spawn_without_id_generates_one(cluster: Cluster) -> None:
    """An id is generated when none is given."""
    a, b = await spawn(cluster), await spawn(cluster)
    assert a["session_id"] != b["session_id"]


async def test_consistent_hash_places_by_session_id(cluster: Cluster) -> None:
    """The consistent_hash policy maps a session id to its rendezvous instance."""
    for sid in ("alpha", "beta", "gamma", "delta"):
        reply = await spawn(cluster, sessionId=sid, policy="consistent-hash")
        assert reply["instance"] == rendezvous_order(sid, list("ABCDEFGH"), {})[0]


async def test_spawn_on_unknown_or_down_instance(cluster: Cluster) -> None:
    """An unknown instance is a 400 naming it; a down one is 503 instance_down."""
    status, body = await cluster.post(f"{S}/spawn", {"instance": "Z"})
    assert (status, body["error"]["field"]) == (400, "instance")
    await cluster.stop_instance("B")
    await cluster.wait_state("B", "down")
    status, body = await cluster.post(f"{S}/spawn", {"instance": "B"})
    assert (status, body["error"]["code"]) == (503, "instance_down")


async def test_send_reaches_the_instance_with_session_state(cluster: Cluster) -> None:
    """Each send returns the instance's reply, which counts the session's messages."""
    await spawn(cluster, sessionId="s1", instance="A")
    for n in (1, 2, 3):
        status, reply = await cluster.post(f"{S}/s1/send", {"data": {"n": n}})
        assert status == 200, reply
        assert reply["seq"] == n
        assert reply["instance"] == "A"
        assert reply["reply"] == {
            "instance": "A",
            "payload": {"n": n},
            "session": {"id": "s1", "seen": n},
        }
    status, reply = await cluster.post(f"{S}/send", {"sessionId": "s1", "data": {"key": "value"}})
    assert (status, reply["seq"]) == (200, 4)


async def test_fifty_concurrent_sends_are_processed_in_order(cluster: Cluster) -> None:
    """Concurrent sends to one session queue: seq and the instance's count agree, no gaps."""
    await spawn(cluster, sessionId="busy", instance="B")
    replies = await asyncio.gather(
        *(cluster.post(f"{S}/busy/send", {"data": {"i": i}}) for i in range(50))
    )
    assert all(status == 200 for status, _ in replies)
    seqs = sorted(r["seq"] for _, r in replies)
    assert seqs == list(range(1, 51))
    assert all(r["reply"]["session"]["seen"] == r["seq"] for _, r in replies)
    _, page = await cluster.get(f"{S}/busy/history?limit=100")
    assert [m["seq"] for m in page["messages"]] == list(range(1, 51))
    assert [m["reply"]["session"]["seen"] for m in page["messages"]] == list(range(1, 51))
    by_seq = {r["seq"]: r["reply"]["payload"] for _, r in replies}
    assert [m["data"] for m in page["messages"]] == [by_seq[n] for n in range(1, 51)]


async def test_different_sessions_run_concurrently(cluster: Cluster) -> None:
    """Sends to different sessions do not queue behind each other."""
    await cluster.set_faults("D", latency=0.3)
    for i in range(4):
        await spawn(cluster, sessionId=f"par{i}", instance="D")
    started = time.perf_counter()
    results = await asyncio.gather(*(cluster.post(f"{S}/par{i}/send", {}) for i in range(4)))
    assert all(status == 200 for status, _ in results)
    assert time.perf_counter() - started < 0.9  # four 0.3 s sends, overlapped


async def test_unknown_and_closed_sessions(cluster: Cluster) -> None:
    """Unknown is 404; closed is 410 session_closed; closing twice is fine."""
    status, body = await cluster.post(f"{S}/nope/send", {"data": 1})
    assert (status, body["error"]["code"]) == (404, "not_found")
    await spawn(cluster, sessionId="done")
    status, info = await cluster.post(f"{S}/done/close", {})
    assert (status, info["state"]) == (200, "closed")
    assert info["closed_at"] is not None
    status, body = await cluster.post(f"{S}/done/send", {"data": 1})
    assert (status, body["error"]["code"]) == (410, "session_closed")
    async with cluster.http.delete(cluster.url + f"{S}/done", headers=cluster.headers) as resp:
        assert resp.status == 200


async def test_history_is_ordered_timestamped_and_paginated(cluster: Cluster) -> None:
    """History lists messages oldest first with time, instance and latency, page by page."""
    await spawn(cluster, sessionId="h", instance="E")
    for i in range(5):
        await cluster.post(f"{S}/h/send", {"data": i})
    _, page = await cluster.get(f"{S}/h/history?offset=0&limit=2")
    assert page["total"] == 5
    assert [m["data"] for m in page["messages"]] == [0, 1]
    assert page["next_offset"] == 2
    first = page["messages"][0]
    assert first["kind"] == "message"
    assert first["instance"] == "E"
    assert first["latency_ms"] >= 0
    assert first["created_at"].startswith("20")
    assert first["reply"]["session"]["seen"] == 1
    _, last = await cluster.get(f"{S}/h/history?offset=4&limit=2")
    assert [m["data"] for m in last["messages"]] == [4]
    assert last["next_offset"] is None
    status, body = await cluster.get(f"{S}/h/history?limit=0")
    assert (status, body["error"]["field"]) == (400, "limit")


async def test_list_filters(cluster: Cluster) -> None:
    """List filters by instance, state and recent activity."""
    await spawn(cluster, sessionId="l1", instance="A")
    await spawn(cluster, sessionId="l2", instance="B")
    await cluster.post(f"{S}/l2/close", {})
    _, body = await cluster.get(f"{S}?instance=A")
    assert [s["session_id"] for s in body["sessions"]] == ["l1"]
    _, body = await cluster.get(f"{S}?state=closed")
    assert [s["session_id"] for s in body["sessions"]] == ["l2"]
    _, body = await cluster.get(f"{S}?active_within=5")
    assert {s["session_id"] for s in body["sessions"]} == {"l1", "l2"}
    status, body = await cluster.get(f"{S}?state=weird")
    assert (status, body["error"]["field"]) == (400, "state")


async def test_idempotent_send_runs_once(cluster: Cluster) -> None:
    """A repeated Idempotency-Key returns the recorded reply and records nothing new."""
    await spawn(cluster, sessionId="idem", instance="A")
    s1, r1 = await cluster.post(f"{S}/idem/send", {"data": "x"}, **{"Idempotency-Key": "m-1"})
    s2, r2 = await cluster.post(f"{S}/idem/send", {"data": "x"}, **{"Idempotency-Key": "m-1"})
    assert (s1, s2) == (200, 200)
    assert r2["seq"] == r1["seq"] == 1
    assert r2["replayed"] is True
    assert r2["reply"] == r1["reply"]
    _, page = await cluster.get(f"{S}/idem/history")
    assert page["total"] == 1


TOKEN_FORBIDDEN = [
    ("GET", f"{S}/other"),
    ("POST", f"{S}/other/send"),
    ("GET", f"{S}/other/history"),
    ("POST", f"{S}/other/close"),
    ("GET", S),
    ("POST", f"{S}/spawn"),
    ("POST", "/api/orchestrator/route"),
    ("POST", "/api/orchestrator/fanout"),
    ("GET", "/api/orchestrator/health"),
    ("POST", "/api/cluster/register"),
    ("GET", "/api/cluster/instances"),
    ("DELETE", "/api/cluster/instances/A"),
]


async def test_token_grants_its_session_and_nothing_else(cluster: Cluster) -> None:
    """A session token can send, read and close its session; everything else is 403."""
    mine = await spawn(cluster, sessionId="mine", instance="A")
    await spawn(cluster, sessionId="other", instance="A")
    token = mine["token"]
    status, reply = await as_token(cluster, token, "POST", f"{S}/mine/send", {"data": 1})
    assert (status, reply["seq"]) == (200, 1)
    status, reply = await as_token(cluster, token, "POST", f"{S}/send", {"sessionId": "mine"})
    assert (status, reply["seq"]) == (200, 2)
    assert (await as_token(cluster, token, "GET", f"{S}/mine/history"))[0] == 200
    assert (await as_token(cluster, token, "GET", f"{S}/mine"))[0] == 200
    for method, path in TOKEN_FORBIDDEN:
        status, body = await as_token(cluster, token, method, path, {"sessionId": "other"})
        assert status == 403, (method, path, body)
        assert body["error"]["code"] == "forbidden"
    status, _ = await as_token(cluster, token, "POST", f"{S}/send", {"sessionId": "other"})
    assert status == 403
    assert "A" in cluster.service.registry  # the DELETE did nothing
    _, other = await cluster.get(f"{S}/other")
    assert other["state"] == "open"
    # Closing with the token works, and then the token is dead.
    assert (await as_token(cluster, token, "POST", f"{S}/mine/close"))[0] == 200
    status, body = await as_token(cluster, token, "POST", f"{S}/mine/send", {"data": 2})
    assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_tokens_are_not_stored_or_logged(cluster: Cluster) -> None:
    """Only a hash of the token is stored."""
    reply = await spawn(cluster, sessionId="hashme")
    record = await cluster.service.sessions._store.get_session("hashme")
    assert record is not None
    assert reply["token"] not in repr(record)
    assert record.token_hash != reply["token"]


async def test_send_to_down_instance_is_503_and_stays_pinned(cluster: Cluster) -> None:
    """By default a session whose instance is down answers 503 and does not move."""
    await spawn(cluster, sessionId="pinned", instance="F")
    await cluster.post(f"{S}/pinned/send", {})
    await cluster.stop_instance("F")
    await cluster.wait_state("F", "down")
    status, body = await cluster.post(f"{S}/pinned/send", {})
    assert (status, body["error"]["code"]) == (503, "instance_down")
    _, info = await cluster.get(f"{S}/pinned")
    assert info["instance"] == "F"
    assert info["messages"] == 1


async def test_migrate_replays_history_on_a_healthy_instance(cluster: Cluster) -> None:
    """failover migrate moves the session, replays its history, and records the move."""
    await spawn(cluster, sessionId="mover", instance="G", failover="migrate")
    for i in range(3):
        await cluster.post(f"{S}/mover/send", {"data": i})
    await cluster.stop_instance("G")
    await cluster.wait_state("G", "down")
    status, reply = await cluster.post(f"{S}/mover/send", {"data": 3})
    assert status == 200, reply
    assert reply["migrated_from"] == "G"
    new = reply["instance"]
    assert new != "G"
    # The new instance saw the replayed conversation: this is its fourth message.
    assert reply["reply"]["session"] == {"id": "mover", "seen": 4}
    _, page = await cluster.get(f"{S}/mover/history")
    kinds = [m["kind"] for m in page["messages"]]
    assert kinds == ["message", "message", "message", "migration", "message"]
    assert page["messages"][3]["data"] == {"from": "G", "to": new, "replayed": 3}
    _, info = await cluster.get(f"{S}/mover")
    assert info["instance"] == new


async def test_migrate_when_the_instance_dies_mid_session() -> None:
    """A refused send (not yet marked down) still migrates a migrate-session."""
    async with start_cluster("AB", health={"interval": 60, "down_backoff": 60}) as c:
        await spawn(c, sessionId="m2", instance="A", failover="migrate")
        await c.post(f"{S}/m2/send", {"data": "before"})
        await c.stop_instance("A")
        status, reply = await c.post(f"{S}/m2/send", {"data": "after"})
        assert status == 200, reply
        assert (reply["instance"], reply["migrated_from"]) == ("B", "A")
        assert reply["reply"]["session"]["seen"] == 2


async def test_idle_sessions_expire_and_old_history_is_purged() -> None:
    """A session idle past its TTL is expired by the sweeper; retention then purges it."""
    sessions = {"sweep_interval": 0.1, "retention": 0.6}
    async with start_cluster("A", sessions=sessions) as c:
        await spawn(c, sessionId="short", ttl=0.3)
        await spawn(c, sessionId="long", ttl=60)
        await c.post(f"{S}/short/send", {})
        await asyncio.sleep(0.7)
        _, info = await c.get(f"{S}/short")
        assert info["state"] == "expired"
        status, body = await c.post(f"{S}/short/send", {})
        assert (status, body["error"]["code"]) == (410, "session_closed")
        _, info = await c.get(f"{S}/long")
        assert info["state"] == "open"
        await asyncio.sleep(0.9)
        status, _ = await c.get(f"{S}/short/history")
        assert status == 404


async def test_sessions_survive_an_orchestrator_restart(tmp_path: Any) -> None:
    """State lives in the store: a new orchestrator on the same data dir sees it all."""
    async with start_cluster("AB", data_dir=tmp_path) as c:
        token = (await spawn(c, sessionId="keep", instance="A"))["token"]
        for i in range(3):
            await c.post(f"{S}/keep/send", {"data": i})
    async with start_cluster("AB", data_dir=tmp_path) as c2:
        _, page = await c2.get(f"{S}/keep/history")
        assert [m["data"] for m in page["messages"]] == [0, 1, 2]
        status, reply = await as_token(c2, token, "POST", f"{S}/keep/send", {"data": 3})
        assert (status, reply["seq"]) == (200, 4)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sessionId": "bad id"}, "sessionId"),
        ({"ttl": "forever"}, "ttl"),
        ({"failover": "teleport"}, "failover"),
    ],
)
async def test_bad_spawn_requests_name_the_field(cluster: Cluster, body: Any, field: str) -> None:
    """Malformed spawns are 400 naming the field."""
    status, reply = await cluster.post(f"{S}/spawn", body)
    assert status == 400, reply
    assert reply["error"]["field"] == field
