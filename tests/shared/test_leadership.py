"""Leadership (:mod:`openclaw_orchestrator.server.core.leadership`): three contenders, one
leader at a time, a successor when the leader stops (at once: it releases) or dies
(``kill -9`` of a real process: after its lease runs out), each new leader with the next
epoch. PostgreSQL in a database of its own, each contender on its own pool (skipped with
the reason when no server answers); the same rules on one SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openclaw_orchestrator.server.core.leadership import Leadership, run_as_leader
from openclaw_orchestrator.server.stores.leases import Lease, LeaseStore
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url

from ..storage_faults import postgres_database

TTL = 0.6
LEADER_PROCESS = """
import asyncio, sys
from openclaw_orchestrator.server.core.leadership import run_as_leader
from openclaw_orchestrator.server.stores.postgres import PostgresStore

async def main() -> None:
    store = PostgresStore(sys.argv[1])
    await store.open()

    async def body(lease):
        print("leader", lease.epoch, flush=True)
        await asyncio.Event().wait()

    await run_as_leader(store, "sweeper", body, ttl=float(sys.argv[2]), holder="process")

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def stores(kind: str, tmp_path: Path) -> AsyncIterator[tuple[str, list[LeaseStore]]]:
    """Three contenders' lease stores: three pools on one PostgreSQL database, or one
    SQLite store (one process) three times; and the database URL."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "sqlite":
            url = sqlite_url(tmp_path)
            lite = SqliteStore(url)
            await lite.open()
            stack.push_async_callback(lite.aclose)
            yield url, [lite, lite, lite]
            return
        url = await stack.enter_async_context(postgres_database())
        opened: list[LeaseStore] = []
        for _ in range(3):
            store = PostgresStore(url)
            await store.open()
            stack.push_async_callback(store.aclose)
            opened.append(store)
        yield url, opened


class Watch:
    """Three contenders running a body that counts how many run at once."""

    def __init__(self, leases: list[LeaseStore]) -> None:
        self.contenders = [
            Leadership(store, "sweeper", ttl=TTL, holder=f"replica-{i}")
            for i, store in enumerate(leases)
        ]
        self.running = 0
        self.most = 0
        self.epochs: list[int] = []
        self.tasks = [asyncio.create_task(c.run(self.body)) for c in self.contenders]

    async def body(self, lease: Lease) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        self.epochs.append(lease.epoch)
        try:
            await asyncio.Event().wait()
        finally:
            self.running -= 1

    def leaders(self) -> list[int]:
        return [i for i, c in enumerate(self.contenders) if c.is_leader]

    async def one_leader(self, *, besides: frozenset[int] = frozenset()) -> int:
        """Sample until exactly one contender outside ``besides`` leads; never two."""
        for _ in range(500):
            leaders = self.leaders()
            assert len(leaders) <= 1, leaders
            if len(leaders) == 1 and leaders[0] not in besides:
                return leaders[0]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no leader: {self.contenders}")

    async def stop(self, index: int) -> None:
        self.tasks[index].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.tasks[index]

    async def aclose(self) -> None:
        for index in range(len(self.tasks)):
            await self.stop(index)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_one_leader_at_a_time_and_a_successor_when_it_stops(
    kind: str, tmp_path: Path
) -> None:
    async with stores(kind, tmp_path) as (_, leases):
        watch = Watch(leases)
        try:
            first = await watch.one_leader()
            for _ in range(150):  # several leases long: renewed, never shared
                assert watch.leaders() in ([first], [])
                await asyncio.sleep(0.01)
            assert watch.leaders() == [first]
            await watch.stop(first)
            second = await watch.one_leader(besides=frozenset({first}))
            await watch.stop(second)
            third = await watch.one_leader(besides=frozenset({first, second}))
            assert watch.running == 1
        finally:
            await watch.aclose()
    assert watch.most == 1
    assert watch.epochs == [1, 2, 3]
    assert {first, second, third} == {0, 1, 2}
    assert watch.running == 0


async def test_a_killed_leader_is_succeeded_after_its_lease(tmp_path: Path) -> None:
    """A leader process killed with ``kill -9`` releases nothing: the two contenders wait
    out its lease, then one of them leads with the next epoch."""
    async with stores("postgres", tmp_path) as (url, leases):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LEADER_PROCESS, url, str(TTL),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line == b"leader 1\n"
            watch = Watch(leases[:2])
            await asyncio.sleep(3 * TTL)
            assert watch.leaders() == []  # the process renews its lease
            process.kill()
            await process.wait()
            await watch.one_leader()
            await watch.aclose()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert watch.epochs == [2]


async def test_a_body_that_finishes_releases_the_lease(tmp_path: Path) -> None:
    async with stores("sqlite", tmp_path) as (_, leases):

        async def body(lease: Lease) -> int:
            return lease.epoch

        assert await run_as_leader(leases[0], "once", body, ttl=TTL) == 1
        assert await leases[0].get_lease("leader:once") is None
