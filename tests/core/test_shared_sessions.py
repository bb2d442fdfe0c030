"""Sessions shared by replicas (issue 11, item 1), at the core: three Orchestrators on one
fresh PostgreSQL database, each with its own store and holder id (as three processes would
be), over a real reference instance that counts every execution of its handler.

Each test states an invariant of the session lease: any replica takes any send, the system
serializes them (no conflict reaches a caller), each execution is recorded exactly once,
and a holder that died or lost its lease is settled or refused. The same, through real
processes behind a round-robin front, is in ``tests/replicas/``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.domain.health import FailureKind
from openclaw_orchestrator.domain.sessions import MessageRecord, SessionRecord
from openclaw_orchestrator.errors import SessionClosedError, StaleEpochError, TimeoutExceededError
from openclaw_orchestrator.models import SpawnRequest
from openclaw_orchestrator.server.composition import build_drivers, client_session
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.server.drivers.worker import WorkerDriver
from openclaw_orchestrator.server.hosting import BackgroundServer
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.settings import Settings

from ..storage_faults import postgres_database

LEASE_TTL = 0.6


@dataclass
class Counting:
    """The instance's handler: every execution that completes is appended (one the instance
    abandons, its caller gone, ran nothing that counts); ``{"sleep": s}`` takes s."""

    runs: list[Any] = field(default_factory=list)

    async def __call__(self, payload: Any) -> Any:
        if isinstance(payload, dict) and "sleep" in payload:
            await asyncio.sleep(payload["sleep"])
        self.runs.append(payload)
        return {"ran": payload}


@dataclass
class Fleet:
    """Replicas sharing one database, the instance they send to, and its count."""

    replicas: list[Orchestrator]
    stores: list[PostgresStore]
    counting: Counting
    instance_url: str
    instance_urls: dict[str, str]

    async def spawn(self, **request: Any) -> str:
        spawned = await self.replicas[0].sessions.spawn(SpawnRequest(instance="A", **request))
        return spawned.session_id

    async def send(self, i: int, session_id: str, data: Any, **kw: Any) -> Any:
        replica = self.replicas[i % len(self.replicas)]
        return await replica.sessions.send(
            session_id,
            data,
            timeout=kw.get("timeout", 10),
            idempotency_key=kw.get("key"),
            request_id=f"r{i}",
        )

    async def history(self, session_id: str) -> list[Any]:
        page = await self.replicas[0].sessions.history(session_id, offset=0, limit=1000)
        return page.messages


class UnfencedWorker(WorkerDriver):
    """Our protocol's driver, for an instance that cannot fence (as an OpenClaw gateway)."""

    fences_sessions = False


@contextlib.asynccontextmanager
async def fleet(
    n: int = 3, *, names: str = "A", fenced: bool = True, **settings: Any
) -> AsyncIterator[Fleet]:
    counting = Counting()
    async with (
        postgres_database() as url,
        client_session() as http,
        contextlib.AsyncExitStack() as stack,
    ):
        servers = {
            name: await stack.enter_async_context(
                BackgroundServer(create_instance_app(name, counting))
            )
            for name in names
        }
        config = Settings.model_validate(
            {
                "instances": [{"name": name, "url": url} for name, url in servers.items()],
                "sessions": {"lease_ttl": LEASE_TTL, **settings},
            }
        )
        stores, replicas = [], []
        for _ in range(n):
            store = PostgresStore(url)
            await store.open()
            stack.push_async_callback(store.aclose)
            drivers = build_drivers(http)
            if not fenced:
                drivers["worker"] = UnfencedWorker(http)
            replica = Orchestrator(config, drivers=drivers, store=store)
            stores.append(store)
            replicas.append(replica)
        yield Fleet(replicas, stores, counting, servers["A"], servers)


async def instance_session(url: str, session_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/api/instance/sessions/{session_id}") as resp:
            body: dict[str, Any] = await resp.json()
            return body


async def test_two_hundred_concurrent_sends_over_three_replicas_are_serialized() -> None:
    """200 sends to one session, 20 at a time, spread over three replicas: every one is
    acknowledged (no conflict reaches a caller), positions 1..200 each once, and the
    instance ran each message exactly once."""
    async with fleet() as f:
        session_id = await f.spawn()
        gate = asyncio.Semaphore(20)

        async def one(i: int) -> int:
            async with gate:
                return int((await f.send(i, session_id, {"n": i})).seq)

        seqs = await asyncio.gather(*(one(i) for i in range(200)))
        history = await f.history(session_id)
        print(f"acknowledged={len(seqs)} recorded={len(history)} executed={len(f.counting.runs)}")
        assert sorted(seqs) == list(range(1, 201))
        assert [m.seq for m in history] == list(range(1, 201))
        assert sorted(m.data["n"] for m in history) == list(range(200))
        assert len(f.counting.runs) == 200
        assert (await instance_session(f.instance_url, session_id))["seen"] == 200


async def test_an_idempotency_key_runs_once_across_replicas() -> None:
    """Nine concurrent duplicates of one keyed send, three per replica: one execution, one
    entry, nine identical answers (eight of them replayed)."""
    async with fleet() as f:
        session_id = await f.spawn()
        results = await asyncio.gather(
            *(f.send(i, session_id, {"once": True}, key="k-1") for i in range(9))
        )
        assert len(f.counting.runs) == 1
        assert {r.seq for r in results} == {1}
        assert sum(r.replayed for r in results) == 8
        assert len(await f.history(session_id)) == 1


async def claim_as_dead_holder(store: PostgresStore, session_id: str, data: Any) -> Any:
    """What a replica that dies right after claiming leaves: a pending position under a
    short lease nobody renews."""

    def sendable(record: SessionRecord | None) -> SessionRecord:
        assert record is not None
        return record

    ask = MessageRecord(session_id, 0, "message", "", data=data, created_at=1.0)
    claim = await store.claim_session(session_id, "dead:1:x", 0.2, check=sendable, message=ask)
    assert claim is not None
    assert claim.pending is not None
    return claim


async def test_a_message_run_but_never_recorded_is_recorded_once_by_the_next_holder() -> None:
    """A replica claims position 1, the instance runs it, the replica dies before recording.
    The next send (another replica, after the lease expired) redelivers position 1: the
    instance answers from its memory without running it again, and it is recorded; then the
    new message runs at position 2. Executed = recorded = 2."""
    async with fleet() as f:
        session_id = await f.spawn()
        claim = await claim_as_dead_holder(f.stores[0], session_id, {"n": "lost"})
        headers = {"X-Session-Epoch": str(claim.epoch), "X-Session-Seq": "1"}
        async with aiohttp.ClientSession() as http:
            url = f"{f.instance_url}/api/instance/sessions/{session_id}/messages"
            async with http.post(url, json={"payload": {"n": "lost"}}, headers=headers) as resp:
                assert resp.status == 200
        await asyncio.sleep(0.3)
        sent = await f.send(1, session_id, {"n": "next"})
        assert sent.seq == 2
        history = await f.history(session_id)
        assert [(m.seq, m.kind, m.data) for m in history] == [
            (1, "message", {"n": "lost"}),
            (2, "message", {"n": "next"}),
        ]
        assert history[0].reply == {"ran": {"n": "lost"}}
        assert [r["n"] for r in f.counting.runs] == ["lost", "next"]


async def test_a_claimed_message_that_never_ran_runs_once_when_settled() -> None:
    """The replica died after claiming, before delivering: the next holder delivers it (it
    runs now, once) and records it before its own."""
    async with fleet() as f:
        session_id = await f.spawn()
        await claim_as_dead_holder(f.stores[1], session_id, {"n": "claimed"})
        await asyncio.sleep(0.3)
        await f.send(2, session_id, {"n": "next"})
        assert [r["n"] for r in f.counting.runs] == ["claimed", "next"]
        assert [m.seq for m in await f.history(session_id)] == [1, 2]


async def test_the_sweeper_settles_an_orphan_without_any_new_send() -> None:
    """No later send comes: the sweeper (one replica, the leader) settles the position."""
    async with fleet() as f:
        session_id = await f.spawn()
        await claim_as_dead_holder(f.stores[0], session_id, {"n": "orphan"})
        await asyncio.sleep(0.3)
        swept = [await r.sessions.sweep() for r in f.replicas]
        assert len(f.counting.runs) == 1
        assert [m.data for m in await f.history(session_id)] == [{"n": "orphan"}]
        assert swept  # every replica swept or stood aside without error


async def test_a_holder_that_lost_its_lease_cannot_record() -> None:
    """A holder paused past its lease: another takes the session over (a higher epoch) and
    the paused holder's write is refused, so nothing it does lands."""
    async with fleet() as f:
        session_id = await f.spawn()
        claim = await claim_as_dead_holder(f.stores[0], session_id, {"n": "paused"})
        await asyncio.sleep(0.3)
        await f.send(1, session_id, {"n": "meanwhile"})  # settles the orphan, then its own
        late = MessageRecord(session_id, 1, "message", "A", data={"n": "paused"}, reply="late")
        with pytest.raises(StaleEpochError):
            await f.stores[0].record_message(
                claim.record, "dead:1:x", claim.epoch, late, release=True
            )
        history = await f.history(session_id)
        assert history[0].reply == {"ran": {"n": "paused"}}


async def test_a_timed_out_send_is_settled_by_the_next_one_without_running_twice() -> None:
    """A send times out while the instance still runs it: its position stays claimed. The
    next send (another replica) redelivers it; the instance finishes the first run and
    answers the redelivery from memory; both are recorded and each ran once."""
    async with fleet() as f:
        session_id = await f.spawn()
        # a deadline the claim fits in even on a loaded machine, shorter than the run
        with pytest.raises(TimeoutExceededError):
            await f.send(0, session_id, {"sleep": 1.5}, timeout=0.5)
        sent = await f.send(1, session_id, {"n": "after"})
        assert sent.seq == 2
        history = await f.history(session_id)
        assert [m.data for m in history] == [{"sleep": 1.5}, {"n": "after"}]
        assert len(f.counting.runs) == 2


async def test_close_waits_for_the_send_in_flight_and_fences_later_ones() -> None:
    """A close through one replica while another delivers a slow message: the close waits
    for it, so the message is recorded before ``closed_at``; sends after it are refused."""
    async with fleet() as f:
        session_id = await f.spawn()
        slow = asyncio.create_task(f.send(0, session_id, {"sleep": 0.3}))
        await asyncio.sleep(0.1)
        closed = await f.replicas[1].sessions.close(session_id)
        await slow
        history = await f.history(session_id)
        assert closed.closed_at is not None
        assert all(m.created_at <= closed.closed_at for m in history)
        with pytest.raises(SessionClosedError):
            await f.send(2, session_id, "too late")
        assert [r for r in f.counting.runs if r == "too late"] == []


async def test_one_replica_leads_the_sweeper_and_it_settles_orphans_by_itself() -> None:
    """Three started replicas: one holds the sweeper's lease, and its sweeper settles a
    dead holder's position with no send and no call from the test."""
    async with fleet(sweep_interval=0.2) as f, contextlib.AsyncExitStack() as running:
        for replica in f.replicas:
            await running.enter_async_context(replica)
        session_id = await f.spawn()
        await claim_as_dead_holder(f.stores[0], session_id, {"n": "orphan"})
        for _ in range(200):
            if await f.history(session_id):
                break
            await asyncio.sleep(0.05)
        assert [m.data for m in await f.history(session_id)] == [{"n": "orphan"}]
        assert len(f.counting.runs) == 1
        lease = await f.stores[1].get_lease("leader:session-sweeper")
        assert lease is not None
        holders = {r.sessions._holder for r in f.replicas}
        assert lease.holder in holders


async def test_an_orphan_on_an_instance_that_cannot_fence_is_recorded_interrupted() -> None:
    """Without fencing a redelivery could run the message twice: the next holder records
    the dead holder's position as ``interrupted`` (its message, no reply) and goes on."""
    async with fleet(fenced=False) as f:
        session_id = await f.spawn()
        await claim_as_dead_holder(f.stores[0], session_id, {"n": "unknown"})
        await asyncio.sleep(0.3)
        await f.send(1, session_id, {"n": "next"})
        history = await f.history(session_id)
        assert [(m.seq, m.kind, m.data, m.reply) for m in history] == [
            (1, "interrupted", {"n": "unknown"}, None),
            (2, "message", {"n": "next"}, {"ran": {"n": "next"}}),
        ]
        assert f.counting.runs == [{"n": "next"}]


async def test_a_migration_under_the_lease_moves_the_fence_on() -> None:
    """A session on A (failover migrate) whose instance is gone: a send through another
    replica moves it to B under the lease (the epoch bumped, the history restored there)
    and delivers the message after the move's note."""
    async with fleet(names="AB") as f:
        session_id = await f.spawn(failover="migrate")
        await f.send(0, session_id, {"n": 1})
        f.replicas[1].registry.get("A").health.record_probe_failure(
            FailureKind.REFUSED, "gone", 0.0
        )
        moved = await f.send(1, session_id, {"n": 2})
        assert (moved.instance, moved.migrated_from) == ("B", "A")
        history = await f.history(session_id)
        assert [(m.seq, m.kind, m.instance) for m in history] == [
            (1, "message", "A"),
            (2, "migration", "B"),
            (3, "message", "B"),
        ]
        on_b = await instance_session(f.instance_urls["B"], session_id)
        assert on_b["epoch"] >= 2
        assert on_b["seq"] == 3
