"""Idempotency keys across replicas (:mod:`openclaw_orchestrator.server.core.shared_idempotency`)
on a fresh PostgreSQL database, each "replica" a PostgresStore of its own; and the rules both
sides of the :class:`~openclaw_orchestrator.server.core.idempotency.IdempotencyKeys` seam
share (the in-process cache and the shared store). Skipped with the reason when no
PostgreSQL answers (failed in CI)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from openclaw_orchestrator.errors import ConflictError, InvalidRequestError
from openclaw_orchestrator.server.core.idempotency import IdempotencyCache, IdempotencyKeys
from openclaw_orchestrator.server.core.shared_idempotency import SharedIdempotency
from openclaw_orchestrator.server.stores.idempotency_sql import IdempotencySql
from openclaw_orchestrator.server.stores.postgres import PostgresStore

from ..storage_faults import postgres_database

Result = dict[str, Any]


def decode(raw: bytes) -> Result:
    value: Result = orjson.loads(raw)
    return value


@contextlib.asynccontextmanager
async def replicas(n: int, *, lease: float = 5.0) -> AsyncIterator[list[SharedIdempotency[Result]]]:
    """``n`` shared key stores on one fresh database, each on its own PostgresStore pool."""
    async with postgres_database() as url, contextlib.AsyncExitStack() as stack:
        keys = []
        for _ in range(n):
            store = PostgresStore(url)
            await store.open()
            stack.push_async_callback(store.aclose)
            shared: SharedIdempotency[Result] = SharedIdempotency(
                IdempotencySql(store.engine), ttl=60.0, max_bytes=10_000, lease=lease
            )
            keys.append(await stack.enter_async_context(shared))
        yield keys


@contextlib.asynccontextmanager
async def one_side(kind: str) -> AsyncIterator[list[IdempotencyKeys[Result]]]:
    """Three handles on one side of the seam: the in-process cache (one object, as three
    requests in one process see it) or three replicas sharing PostgreSQL."""
    if kind == "memory":
        cache: IdempotencyCache[Result] = IdempotencyCache(ttl=60.0, clock=time.monotonic)
        yield [cache, cache, cache]
    else:
        async with replicas(3) as shared:
            yield list(shared)


def counting(
    runs: list[int],
    *,
    gate: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
) -> Callable[[], Awaitable[Result]]:
    """Work that counts its runs, says it ``started`` and (with ``gate``) waits for it
    before answering."""

    async def work() -> Result:
        runs.append(1)
        if started is not None:
            started.set()
        if gate is not None:
            await gate.wait()
        return {"run": len(runs)}

    return work


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_nine_concurrent_duplicates_run_once(kind: str) -> None:
    """Nine requests with one key, three per replica, while the first still works: one
    execution, eight replays of its result."""
    async with one_side(kind) as sides:
        runs: list[int] = []
        gate, started = asyncio.Event(), asyncio.Event()
        work = counting(runs, gate=gate, started=started)
        calls = [
            asyncio.create_task(sides[i % 3].run("route:k1", "d1", work, decode=decode))
            for i in range(9)
        ]
        await started.wait()
        await asyncio.sleep(0.2)  # every duplicate is waiting by now
        gate.set()
        results = await asyncio.gather(*calls)
    assert len(runs) == 1
    assert sorted(replayed for _, replayed in results) == [False] + [True] * 8
    assert {orjson.dumps(r) for r, _ in results} == {b'{"run":1}'}


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_a_key_reused_with_another_body_is_a_conflict(kind: str) -> None:
    """The same key with another fingerprint, on any replica, is a 409, finished or not."""
    async with one_side(kind) as sides:
        runs: list[int] = []
        await sides[0].run("route:k", "d1", counting(runs), decode=decode)
        with pytest.raises(ConflictError) as caught:
            await sides[1].run("route:k", "d2", counting(runs), decode=decode)
    assert caught.value.status == 409
    assert len(runs) == 1


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_failures_are_not_remembered(kind: str) -> None:
    """A run that fails leaves nothing: the retry, on another replica, runs again."""
    async with one_side(kind) as sides:
        attempts: list[int] = []

        async def failing() -> Result:
            attempts.append(1)
            raise RuntimeError("instance exploded")

        with pytest.raises(RuntimeError):
            await sides[0].run("fanout:k", "d", failing, decode=decode)
        runs: list[int] = []
        assert await sides[1].run("fanout:k", "d", counting(runs), decode=decode) == (
            {"run": 1},
            False,
        )
    assert len(attempts) == 1
    assert len(runs) == 1


async def test_a_waiter_runs_the_work_when_the_first_run_fails() -> None:
    """Duplicates waiting on another replica's run that fails: one of them runs it, once."""
    async with replicas(2) as (first, second):
        gate = asyncio.Event()

        async def failing() -> Result:
            await gate.wait()
            raise RuntimeError("boom")

        failed = asyncio.create_task(first.run("route:k", "d", failing, decode=decode))
        await asyncio.sleep(0.1)
        runs: list[int] = []
        waiters = [
            asyncio.create_task(second.run("route:k", "d", counting(runs), decode=decode))
            for _ in range(3)
        ]
        await asyncio.sleep(0.1)
        assert not runs  # they wait for the first run
        gate.set()
        with pytest.raises(RuntimeError):
            await failed
        results = await asyncio.gather(*waiters)
    assert len(runs) == 1
    assert sorted(replayed for _, replayed in results) == [False, True, True]


async def test_a_dead_replicas_claim_is_taken_over_after_its_lease() -> None:
    """A claim nobody renews (its replica died) holds the key only until it runs out by
    the database's clock; then a duplicate runs the work itself."""
    async with replicas(1, lease=0.5) as (live,):
        sql = live._claims  # the same rows a dead replica would have left
        dead = await sql.claim("route", "k", "d", "dead-replica:1", 0.5)
        assert dead is not None
        assert dead.status == "claimed"
        runs: list[int] = []
        result = await live.run("route:k", "d", counting(runs), decode=decode)
        assert result == ({"run": 1}, False)
        assert await sql.renew("route", "k", "dead-replica:1", 0.5) is False  # fenced out
        assert await sql.finish("route", "k", "dead-replica:1", b"{}", 60.0) is False
        assert await live.run("route:k", "d", counting(runs), decode=decode) == ({"run": 1}, True)
    assert len(runs) == 1


async def test_a_long_run_keeps_its_claim_by_renewing_it() -> None:
    """Work lasting several leases is not taken over while its replica renews the claim."""
    async with replicas(2, lease=0.3) as (first, second):
        runs: list[int] = []
        gate = asyncio.Event()
        running = asyncio.create_task(
            first.run("route:long", "d", counting(runs, gate=gate), decode=decode)
        )
        await asyncio.sleep(0.05)
        duplicate = asyncio.create_task(
            second.run("route:long", "d", counting(runs), decode=decode)
        )
        await asyncio.sleep(1.2)  # four leases
        gate.set()
        assert (await running)[1] is False
        assert (await duplicate)[1] is True
    assert len(runs) == 1


async def test_a_result_too_large_to_keep_runs_again_and_expired_rows_are_swept() -> None:
    """A result over ``max_bytes`` is answered, not kept; a kept result outlives nothing
    past its ttl and the sweep deletes it."""
    async with replicas(1) as (shared,):
        runs: list[int] = []

        async def big() -> Result:
            runs.append(1)
            return {"blob": "x" * 20_000}

        for _ in range(2):
            assert (await shared.run("route:big", "d", big, decode=decode))[1] is False
        assert len(runs) == 2
        short: SharedIdempotency[Result] = SharedIdempotency(
            shared._claims, ttl=0.2, max_bytes=10_000
        )
        await short.run("route:a", "d", counting(runs), decode=decode)
        await asyncio.sleep(0.3)
        assert await short.sweep() == 1
        assert (await short.run("route:a", "d", counting(runs), decode=decode))[1] is False


@pytest.mark.parametrize("key", ["route:", "route:" + "k" * 256, "x" * 40 + ":k"])
async def test_a_bad_key_is_refused_naming_the_header(key: str) -> None:
    async with replicas(1) as (shared,):
        with pytest.raises(InvalidRequestError) as caught:
            await shared.run(key, "d", counting([]), decode=decode)
    assert caught.value.field == "Idempotency-Key"
