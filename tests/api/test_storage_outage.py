"""A store that cannot write, through the HTTP API: a real full disk (tmpfs under the SQLite
file) and a real PostgreSQL outage (the connection cut by a loopback relay).

A session send answers 507 ``storage_full`` / 503 ``storage_unavailable`` with
``Retry-After`` and is NOT delivered to the instance; ``/api/health/check`` says "degraded"
with the reason (still 200: the process is alive); once the fault is gone the orchestrator
recovers by itself, without a restart, and no acknowledged send is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import make_url

from ..storage_faults import TcpRelay, fill_disk, postgres_database, tmpfs
from .conftest import Cluster, start_cluster

S = "/api/orchestrator/sessions"
MIB = 1024 * 1024


async def request(
    c: Cluster, method: str, path: str, body: Any = None, *, token: str | None = None
) -> tuple[int, Any, str | None]:
    """(status, JSON body, Retry-After) of one request, with the API key or ``token``."""
    auth = {"Authorization": f"Bearer {token}"} if token else c.headers
    async with c.http.request(method, c.url + path, json=body, headers=auth) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def health_until(c: Cluster, status: str, timeout: float = 5.0) -> dict[str, Any]:
    """Poll ``/api/health/check`` until its status is ``status``; returns that body."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        code, body, _ = await request(c, "GET", "/api/health/check")
        assert code == 200, body
        if body["status"] == status:
            found: dict[str, Any] = body
            return found
        assert loop.time() < deadline, f"health is {body} after {timeout}s, not {status}"
        await asyncio.sleep(0.05)


async def seen_by_instance(c: Cluster, name: str, session_id: str) -> int:
    """How many messages the instance itself ran for the session."""
    url = f"{c.instance_urls[name]}/api/instance/sessions/{session_id}"
    async with c.http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        seen: int = (await resp.json())["seen"]
        return seen


async def spawn_on_a(c: Cluster, session_id: str) -> str:
    """A session pinned to A; returns its token."""
    status, body, _ = await request(
        c, "POST", f"{S}/spawn", {"sessionId": session_id, "instance": "A"}
    )
    assert status == 201, body
    token: str = body["token"]
    return token


async def send(c: Cluster, session_id: str, data: Any, **kw: Any) -> tuple[int, Any, str | None]:
    return await request(c, "POST", f"{S}/{session_id}/send", {"data": data}, **kw)


async def test_full_disk_refuses_sends_before_delivery_and_recovers(tmp_path: Path) -> None:
    """A full disk: the send is 507 storage_full with Retry-After and the instance never
    sees it, health is degraded with the reason, and after freeing space the next send
    succeeds without a restart."""
    with tmpfs(tmp_path / "disk", 24 * MIB) as disk:
        async with start_cluster("A", data_dir=disk / "data") as c:
            await spawn_on_a(c, "s1")
            assert (await send(c, "s1", "one"))[0] == 200
            filler = fill_disk(disk, leave=MIB)  # under the 8 MiB kept in reserve
            health = await health_until(c, "degraded")
            assert health["storage"]["state"] == "full"
            assert "disk full" in health["reason"]
            status, body, retry_after = await send(c, "s1", "two")
            assert (status, body["error"]["code"]) == (507, "storage_full")
            assert retry_after is not None
            assert int(retry_after) >= 1
            assert await seen_by_instance(c, "A", "s1") == 1
            filler.unlink()
            assert (await health_until(c, "healthy"))["storage"] == {"state": "ok", "reason": None}
            status, body, _ = await send(c, "s1", "two")
            assert (status, body["seq"]) == (200, 2), body
            assert await seen_by_instance(c, "A", "s1") == 2


@contextlib.asynccontextmanager
async def cluster_on_relayed_postgres() -> AsyncIterator[tuple[Cluster, TcpRelay]]:
    """Instance A and an orchestrator whose PostgreSQL is reached through a cuttable relay."""
    async with postgres_database() as url:
        parsed = make_url(url)
        relay = TcpRelay(parsed.port or 5432)
        await relay.start()
        relayed = parsed.set(port=relay.port).render_as_string(hide_password=False)
        try:
            async with start_cluster("A", database_url=relayed) as c:
                yield c, relay
        finally:
            await relay.cut()


async def test_postgres_outage_is_503_before_delivery_and_recovers_by_itself() -> None:
    """PostgreSQL unreachable: sends (API key or session token), spawn, list, history and
    close are 503 storage_unavailable with Retry-After (never 500), nothing reaches the
    instance, health is degraded; when it is back the orchestrator recovers by itself."""
    async with cluster_on_relayed_postgres() as (c, relay):
        token = await spawn_on_a(c, "s1")
        assert (await send(c, "s1", "one"))[0] == 200
        await relay.cut()
        for method, path, body, bearer in (
            ("POST", f"{S}/s1/send", {"data": "two"}, None),
            ("POST", f"{S}/s1/send", {"data": "two"}, token),
            ("POST", f"{S}/spawn", {"sessionId": "s2", "instance": "A"}, None),
            ("GET", S, None, None),
            ("GET", f"{S}/s1/history", None, None),
            ("POST", f"{S}/s1/close", {}, None),
        ):
            status, reply, retry_after = await request(c, method, path, body, token=bearer)
            assert (status, reply["error"]["code"]) == (503, "storage_unavailable"), (path, reply)
            assert retry_after is not None
            assert int(retry_after) >= 1
        health = await health_until(c, "degraded")
        assert health["storage"]["state"] == "unavailable"
        assert "database" in health["reason"]
        assert await seen_by_instance(c, "A", "s1") == 1
        await relay.restore()
        await health_until(c, "healthy")
        status, reply, _ = await send(c, "s1", "two")
        assert (status, reply["seq"]) == (200, 2), reply
        assert await seen_by_instance(c, "A", "s1") == 2


async def _sender(
    c: Cluster, session_id: str, stop: asyncio.Event, statuses: list[int]
) -> dict[int, str]:
    """Send numbered messages until ``stop``, each status appended to ``statuses`` as it
    comes; returns the acknowledged sends (seq -> data)."""
    acked: dict[int, str] = {}
    n = 0
    while not stop.is_set():
        n += 1
        status, body, _ = await send(c, session_id, f"{session_id}-{n}")
        statuses.append(status)
        if status == 200:
            acked[body["seq"]] = f"{session_id}-{n}"
        else:
            await asyncio.sleep(0.01)
    return acked


async def test_postgres_outage_under_load_answers_503_and_loses_no_acknowledged_send() -> None:
    """Sends flowing while PostgreSQL drops away and comes back: every answer is 200 or
    503 (never 500), every session's sends are acknowledged again once the store is back,
    and every acknowledged send is in the history afterwards."""
    sessions = [f"load{i}" for i in range(4)]
    async with cluster_on_relayed_postgres() as (c, relay):
        for sid in sessions:
            await spawn_on_a(c, sid)
        stop = asyncio.Event()
        seen: dict[str, list[int]] = {sid: [] for sid in sessions}
        senders = [asyncio.create_task(_sender(c, sid, stop, seen[sid])) for sid in sessions]
        await asyncio.sleep(0.2)
        await relay.cut()
        await asyncio.sleep(0.5)
        await relay.restore()
        await health_until(c, "healthy")
        back = {sid: len(seen[sid]) for sid in sessions}
        deadline = asyncio.get_running_loop().time() + 20
        while not all(200 in seen[sid][back[sid] :] for sid in sessions):
            assert asyncio.get_running_loop().time() < deadline, seen  # a session stayed refused
            await asyncio.sleep(0.05)
        stop.set()
        results = await asyncio.gather(*senders)
        statuses = [s for sid in sessions for s in seen[sid]]
        assert set(statuses) <= {200, 503}, statuses
        assert 503 in statuses
        for sid, acked in zip(sessions, results, strict=True):
            status, page, _ = await request(c, "GET", f"{S}/{sid}/history?limit=1000")
            assert status == 200, page
            recorded = {m["seq"]: m["data"] for m in page["messages"]}
            assert {seq: recorded.get(seq) for seq in acked} == acked


async def test_the_reserve_is_a_setting(tmp_path: Path) -> None:
    """``store_reserve_bytes`` reaches the SQLite store: with a reserve larger than any disk,
    a send is refused as 507 storage_full before the instance runs it; with 0 the
    free-space check is off."""
    async with start_cluster("A", data_dir=tmp_path / "big", store_reserve_bytes=1024**4) as c:
        await spawn_on_a(c, "r1")  # a spawn delivers nothing: it only needs its write to work
        status, body, retry_after = await send(c, "r1", "one")
        assert (status, body["error"]["code"]) == (507, "storage_full"), body
        assert retry_after is not None
        url = f"{c.instance_urls['A']}/api/instance/sessions/r1"
        async with c.http.get(url) as resp:
            assert resp.status == 404  # the instance never heard of the session's message
        assert "kept in reserve" in (await health_until(c, "degraded"))["reason"]
    async with start_cluster("A", data_dir=tmp_path / "none", store_reserve_bytes=0) as c:
        await spawn_on_a(c, "r2")
        assert (await send(c, "r2", "one"))[0] == 200
        assert await seen_by_instance(c, "A", "r2") == 1
