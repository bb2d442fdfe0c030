"""Leases in the store (:mod:`openclaw_orchestrator.server.stores.leases`): taken, renewed,
taken over after expiry with the next epoch, released; one winner among concurrent holders;
judged by the database's clock. Both stores; PostgreSQL in a database of its own (skipped
with the reason when no server answers, failed in CI)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from openclaw_orchestrator.server.stores.leases import LeaseStore, holder_id
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url

from ..storage_faults import postgres_database

SKEW = 86_400.0  # a caller's clock a day ahead


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LeaseStore]:
    """An empty, opened store of each kind."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            s: SqliteStore | PostgresStore = PostgresStore(
                await stack.enter_async_context(postgres_database())
            )
        else:
            s = SqliteStore(sqlite_url(tmp_path / "data"))
        await s.open()
        stack.push_async_callback(s.aclose)
        yield s


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database, migrated to head (dropped after)."""
    async with postgres_database() as url:
        store = PostgresStore(url)
        await store.open()
        await store.aclose()
        yield url


@contextlib.asynccontextmanager
async def replicas(url: str, n: int) -> AsyncIterator[list[PostgresStore]]:
    """``n`` opened PostgresStores on ``url``: separate pools, as separate replicas have."""
    stores = [PostgresStore(url) for _ in range(n)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        yield stores
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))


async def database_now(url: str) -> float:
    """PostgreSQL's ``now()``, in seconds since the epoch."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return float((await conn.execute(text("SELECT extract(epoch FROM now())"))).one()[0])
    finally:
        await engine.dispose()


async def test_a_free_lease_is_taken_at_epoch_one_and_renewed_at_the_same_epoch(
    store: LeaseStore,
) -> None:
    """The first holder gets epoch 1; renewing keeps the epoch and moves the expiry on."""
    assert await store.get_lease("sweeper") is None
    first = await store.acquire_lease("sweeper", "a", 5)
    assert first is not None
    assert (first.name, first.holder, first.epoch) == ("sweeper", "a", 1)
    assert await store.get_lease("sweeper") == first
    await asyncio.sleep(0.05)
    renewed = await store.acquire_lease("sweeper", "a", 5)
    assert renewed is not None
    assert renewed.epoch == 1
    assert renewed.expires_at > first.expires_at
    assert await store.get_lease("sweeper") == renewed


async def test_another_holder_is_refused_while_the_lease_is_live(store: LeaseStore) -> None:
    """A live lease is nobody else's: acquire gives None and the holder stays."""
    held = await store.acquire_lease("probe:A", "a", 5)
    assert await store.acquire_lease("probe:A", "b", 5) is None
    assert await store.get_lease("probe:A") == held
    assert await store.acquire_lease("probe:B", "b", 5) is not None  # names are independent


async def test_an_expired_lease_is_taken_over_with_the_next_epoch(store: LeaseStore) -> None:
    """A holder that stops renewing loses the lease at expiry: another takes it at epoch + 1;
    the old holder's renewal then fails and its release at the old epoch does nothing."""
    old = await store.acquire_lease("sweeper", "a", 0.2)
    assert old is not None
    await asyncio.sleep(0.3)
    assert await store.get_lease("sweeper") is None  # expired: free
    new = await store.acquire_lease("sweeper", "b", 5)
    assert new is not None
    assert (new.holder, new.epoch) == ("b", old.epoch + 1)
    assert await store.acquire_lease("sweeper", "a", 5) is None
    assert await store.release_lease("sweeper", "a", old.epoch) is False
    assert await store.get_lease("sweeper") == new


async def test_a_holder_taking_back_its_expired_lease_gets_a_new_epoch(
    store: LeaseStore,
) -> None:
    """Once expired, the lease was not held: taking it again is a new tenure (epoch + 1),
    since work fenced at the old epoch may have been judged abandoned meanwhile."""
    old = await store.acquire_lease("sweeper", "a", 0.2)
    assert old is not None
    await asyncio.sleep(0.3)
    again = await store.acquire_lease("sweeper", "a", 5)
    assert again is not None
    assert again.epoch == old.epoch + 1


async def test_release_lets_another_take_it_at_once(store: LeaseStore) -> None:
    """Released by its holder at its epoch, the lease is free now, not at its expiry; a
    second release, or one at a wrong epoch or by another holder, is refused."""
    held = await store.acquire_lease("sweeper", "a", 60)
    assert held is not None
    assert await store.release_lease("sweeper", "a", held.epoch + 1) is False
    assert await store.release_lease("sweeper", "b", held.epoch) is False
    assert await store.release_lease("sweeper", "a", held.epoch) is True
    assert await store.release_lease("sweeper", "a", held.epoch) is False
    assert await store.get_lease("sweeper") is None
    taken = await store.acquire_lease("sweeper", "b", 60)
    assert taken is not None
    assert (taken.holder, taken.epoch) == ("b", held.epoch + 1)
    assert await store.release_lease("nothing", "a", 1) is False


async def test_one_of_many_concurrent_holders_wins(store: LeaseStore) -> None:
    """Twenty holders asking at once on one store: exactly one gets the lease."""
    results = await asyncio.gather(*(store.acquire_lease("sweeper", f"h{i}", 5) for i in range(20)))
    assert len([r for r in results if r is not None]) == 1


async def test_one_of_twenty_replicas_wins_each_round(postgres_url: str) -> None:
    """Twenty replicas (separate stores, separate pools) asking at the same instant: exactly
    one wins, on a fresh lease and, round after round, on one just released; each new
    winner's epoch is one more than the last."""
    async with replicas(postgres_url, 20) as stores:
        await asyncio.gather(*(s.get_lease("warm") for s in stores))  # connections open
        for epoch in range(1, 6):
            results = await asyncio.gather(
                *(s.acquire_lease("sweeper", f"replica-{i}", 5) for i, s in enumerate(stores))
            )
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, results
            [won] = winners
            assert won.epoch == epoch
            assert await stores[0].release_lease("sweeper", won.holder, won.epoch)


@pytest.mark.parametrize("skew", [SKEW, -SKEW])
async def test_postgres_judges_leases_by_its_own_clock(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """A replica whose clock is a day off grants and reads leases exactly as one whose
    clock is right: ``expires_at`` is the server's ``now()`` plus the ttl, and a live lease
    stays live (and refused to others) whatever the callers' clocks say."""
    async with replicas(postgres_url, 2) as (skewed, right):
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + skew)
        lease = await skewed.acquire_lease("sweeper", "skewed", 30)
        seen = await skewed.get_lease("sweeper")
        monkeypatch.undo()
        assert lease is not None
        assert seen == lease
        assert abs(lease.expires_at - 30 - await database_now(postgres_url)) < 5
        assert await right.acquire_lease("sweeper", "right", 30) is None


async def test_sqlite_judges_leases_by_its_own_process_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite store serves one process, whose clock is the only one: moved a day on, it
    finds the lease expired and lets another holder take it."""
    store = SqliteStore(sqlite_url(tmp_path))
    await store.open()
    try:
        lease = await store.acquire_lease("sweeper", "a", 30)
        assert lease is not None
        assert abs(lease.expires_at - 30 - time.time()) < 5
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + SKEW)
        assert await store.get_lease("sweeper") is None
        taken = await store.acquire_lease("sweeper", "b", 30)
        assert taken is not None
        assert taken.epoch == lease.epoch + 1
    finally:
        await store.aclose()


LONG = "x" * 201


@pytest.mark.parametrize(
    ("argument", "call"),
    [
        ("name", lambda s: s.acquire_lease("", "h", 1)),
        ("name", lambda s: s.acquire_lease(LONG, "h", 1)),
        ("holder", lambda s: s.acquire_lease("n", "", 1)),
        ("holder", lambda s: s.acquire_lease("n", LONG, 1)),
        ("ttl", lambda s: s.acquire_lease("n", "h", 0.05)),
        ("ttl", lambda s: s.acquire_lease("n", "h", 3600.5)),
        ("ttl", lambda s: s.acquire_lease("n", "h", math.nan)),
        ("name", lambda s: s.release_lease(LONG, "h", 1)),
        ("holder", lambda s: s.release_lease("n", LONG, 1)),
        ("name", lambda s: s.get_lease(LONG)),
    ],
)
async def test_bounds_are_refused_naming_the_argument(
    store: LeaseStore, argument: str, call: Callable[[LeaseStore], Awaitable[object]]
) -> None:
    """A name or holder outside 1 to 200 characters, a ttl outside 0.1 s to an hour:
    ValueError naming the argument, and nothing written."""
    with pytest.raises(ValueError, match=rf"\blease {argument}\b"):
        await call(store)
    assert await store.get_lease("n") is None


async def test_the_largest_values_in_bounds_round_trip(store: LeaseStore) -> None:
    """200-character names and holders and an hour's ttl fit the table."""
    name, holder = "n" * 200, "h" * 200
    lease = await store.acquire_lease(name, holder, 3600)
    assert lease is not None
    assert await store.get_lease(name) == lease
    assert lease.expires_at - time.time() == pytest.approx(3600, abs=5)


def test_holder_ids_are_distinct_per_call_and_name_the_process() -> None:
    """Two replicas on one host (even with one pid, in containers) never share an id."""
    ids = {holder_id() for _ in range(100)}
    assert len(ids) == 100
    host, pid, suffix = next(iter(ids)).split(":")
    assert (pid, len(suffix) >= 8) == (str(os.getpid()), True)
    assert host
    assert all(len(i) <= 200 for i in ids)
