"""Group commit (``stores/group_commit.py``): items submitted while every lane is busy go
out together in the next call; each caller gets its own result, or the batch's error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from openclaw_orchestrator.server.stores.group_commit import Batches


class Recorder:
    """A ``run`` that remembers its batches and waits until released."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, batch: Sequence[int]) -> list[int]:
        self.calls.append(list(batch))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [n * 10 for n in batch]


async def test_items_arriving_while_the_lanes_are_busy_share_one_call() -> None:
    run = Recorder()
    batches: Batches[int, int] = Batches(run, lanes=1)
    first = batches.submit(1)
    await asyncio.sleep(0)  # the lane takes item 1 alone
    rest = [batches.submit(n) for n in (2, 3, 4)]
    run.release.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40]
    assert run.calls == [[1], [2, 3, 4]]
    assert batches.batches == 2


async def test_a_batch_is_at_most_max_batch_items() -> None:
    run = Recorder()
    batches: Batches[int, int] = Batches(run, lanes=1, max_batch=2)
    futures = [batches.submit(n) for n in range(5)]
    run.release.set()
    assert await asyncio.gather(*futures) == [0, 10, 20, 30, 40]
    assert run.calls == [[0, 1], [2, 3], [4]]


async def test_a_failed_call_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    run = Recorder()
    batches: Batches[int, int] = Batches(run, lanes=1)
    run.fail = RuntimeError("database gone")
    doomed = [batches.submit(n) for n in (1, 2)]
    run.release.set()
    for future in doomed:
        with pytest.raises(RuntimeError, match="database gone"):
            await future
    run.fail = None
    assert await batches.submit(3) == 30


async def test_results_of_the_wrong_length_are_an_error_not_a_mismatch() -> None:
    async def short(batch: Sequence[int]) -> list[int]:
        return [0]

    batches: Batches[int, int] = Batches(short, lanes=1)
    futures = [batches.submit(n) for n in (1, 2)]
    for future in futures:
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            await future


async def test_a_caller_that_stops_waiting_does_not_stop_its_item() -> None:
    run = Recorder()
    batches: Batches[int, int] = Batches(run, lanes=1)
    future = batches.submit(7)
    waiter = asyncio.ensure_future(asyncio.shield(future))
    await asyncio.sleep(0)
    waiter.cancel()
    run.release.set()
    assert await future == 70
    assert run.calls == [[7]]


# -- the calls' pool on PostgreSQL ---------------------------------------------------------


async def test_a_call_connection_given_back_inside_a_transaction_is_rolled_back() -> None:
    """The calls' pool skips asyncpg's four-statement reset on every release (the calls
    set no session state), but a connection given back inside a transaction is still rolled
    back before anyone else gets it: its locks are gone and its writes never happened."""
    from openclaw_orchestrator.server.stores.postgres import PostgresStore

    from ..storage_faults import postgres_database

    async with postgres_database() as url:
        store = PostgresStore(url)
        await store.open()
        try:
            async with store._calling() as conn:
                transaction = conn.transaction()
                await transaction.start()
                await conn.execute("CREATE TABLE left_behind (x int)")
                pid = await conn.fetchval("SELECT pg_backend_pid()")
            async with store._calling() as other:
                state = await other.fetchval(
                    "SELECT state FROM pg_stat_activity WHERE pid = $1 AND pid <> pg_backend_pid()",
                    pid,
                )
                table = await other.fetchval("SELECT to_regclass('left_behind')::text")
        finally:
            await store.aclose()
    assert state in ("idle", None)  # None: the same connection asks (it is this one)
    assert table is None
