"""The callbacks' store contract (:class:`~.stores.callbacks.CallbackStore`), both engines,
on a real SQLite file and a PostgreSQL database of its own: stored with a run, claimed only
once the run finished and the callback is due, every attempt recorded before it is sent and
answered after, writes fenced by the lease, a dead holder's callback claimed again once its
lease ran out, and two PostgreSQL replicas never claiming one at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openclaw_orchestrator.domain.callbacks import CallbackAttempt, CallbackRecord
from openclaw_orchestrator.domain.runs import RunRecord
from openclaw_orchestrator.errors import NotFoundError
from openclaw_orchestrator.server.stores.callbacks import CallbackStore
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url

from ..storage_faults import postgres_database

TTL = 30.0
NOW = 5000.0
Store = SqliteStore | PostgresStore


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty, opened store of each kind."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            s: Store = PostgresStore(await stack.enter_async_context(postgres_database()))
        else:
            s = SqliteStore(sqlite_url(tmp_path / "data"))
        await s.open()
        stack.push_async_callback(s.aclose)
        assert isinstance(s.callbacks, CallbackStore)
        yield s


async def a_run(store: Store, rid: str = "r1", *, finished: bool = True) -> RunRecord:
    """A stored run, finished (by its holder, as the service does) unless told."""
    run = RunRecord(
        id=rid, kind="route", state="queued", request={}, created_at=1.0, updated_at=1.0,
        deadline_at=10**10,
    )  # fmt: skip
    await store.runs.create_run(run)
    if finished:
        (claimed,) = await store.runs.claim_runs("runner", TTL, 1)
        done = {"state": "succeeded", "finished_at": 2.0}
        assert await store.runs.update_run(rid, "runner", claimed.epoch, done) is not None
    return run


def callback(rid: str = "r1", **kw: Any) -> CallbackRecord:
    base: dict[str, Any] = {
        "url": "http://127.0.0.1:9/hook", "secret": "s" * 16, "delivery_id": f"d-{rid}",
        "created_at": 1.0,
    }  # fmt: skip
    return CallbackRecord(run_id=rid, **{**base, **kw})


async def test_a_callback_reads_back_and_a_replay_keeps_the_first(store: Store) -> None:
    await a_run(store)
    first = await store.callbacks.add_callback(callback())
    assert first == callback()
    again = await store.callbacks.add_callback(callback(url="http://127.0.0.1:9/other"))
    assert again == first
    assert await store.callbacks.get_callback("r1") == first
    assert await store.callbacks.get_callback("nope") is None
    assert "s" * 16 not in repr(first)
    with pytest.raises(NotFoundError):
        await store.callbacks.add_callback(callback("unknown"))


async def test_only_due_callbacks_of_finished_runs_are_claimed_once(store: Store) -> None:
    await a_run(store, "done")
    await a_run(store, "later")
    await a_run(store, "running", finished=False)
    for rid, due in (("done", 0.0), ("later", NOW + 60), ("running", 0.0)):
        await store.callbacks.add_callback(callback(rid, next_at=due))
    claimed = await store.callbacks.claim_callbacks("h1", TTL, NOW, 10)
    assert [(c.run_id, c.holder, c.epoch) for c in claimed] == [("done", "h1", 1)]
    assert await store.callbacks.claim_callbacks("h2", TTL, NOW, 10) == []
    assert [c.run_id for c in await store.callbacks.claim_callbacks("h2", TTL, NOW + 61, 10)] == [
        "later"
    ]


async def test_an_attempt_is_recorded_before_and_answered_after(store: Store) -> None:
    await a_run(store)
    await store.callbacks.add_callback(callback())
    (held,) = await store.callbacks.claim_callbacks("h1", TTL, NOW, 1)
    n = await store.callbacks.begin_attempt("r1", "h1", held.epoch, NOW)
    assert n == 1
    assert await store.callbacks.attempts("r1") == [CallbackAttempt(run_id="r1", n=1, at=NOW)]
    answered = CallbackAttempt(run_id="r1", n=1, at=NOW, status=500, latency_ms=3.5)
    ended = await store.callbacks.end_attempt(
        "r1", "h1", held.epoch, attempt=answered, state="pending", next_at=NOW + 1, at=NOW
    )
    assert ended
    after = await store.callbacks.get_callback("r1")
    assert after is not None
    assert (after.state, after.attempts, after.next_at, after.holder) == (
        "pending",
        1,
        NOW + 1,
        None,
    )
    assert await store.callbacks.attempts("r1") == [answered]
    (again,) = await store.callbacks.claim_callbacks("h1", TTL, NOW + 1, 1)
    assert await store.callbacks.begin_attempt("r1", "h1", again.epoch, NOW + 1) == 2
    ok = CallbackAttempt(run_id="r1", n=2, at=NOW + 1, status=204, latency_ms=1.0)
    assert await store.callbacks.end_attempt(
        "r1", "h1", again.epoch, attempt=ok, state="delivered", next_at=NOW + 1, at=NOW + 2
    )
    final = await store.callbacks.get_callback("r1")
    assert final is not None
    assert (final.state, final.ended_at) == ("delivered", NOW + 2)
    assert await store.callbacks.claim_callbacks("h1", TTL, NOW + 10**6, 1) == []


async def test_a_dead_holders_callback_is_claimed_again_and_its_writes_are_fenced(
    store: Store,
) -> None:
    await a_run(store)
    await store.callbacks.add_callback(callback())
    (dead,) = await store.callbacks.claim_callbacks("dead", 0.2, NOW, 1)
    assert await store.callbacks.begin_attempt("r1", "dead", dead.epoch, NOW) == 1
    assert await store.callbacks.claim_callbacks("h2", TTL, NOW, 1) == []  # still held
    await asyncio.sleep(0.3)
    (taken,) = await store.callbacks.claim_callbacks("h2", TTL, NOW, 1)
    assert (taken.holder, taken.epoch, taken.attempts) == ("h2", dead.epoch + 1, 1)
    assert await store.callbacks.begin_attempt("r1", "dead", dead.epoch, NOW) is None
    assert not await store.callbacks.end_attempt(
        "r1", "dead", dead.epoch, attempt=None, state="failed", next_at=NOW, at=NOW
    )
    assert await store.callbacks.begin_attempt("r1", "h2", taken.epoch, NOW + 1) == 2
    attempts = await store.callbacks.attempts("r1")
    assert [(a.n, a.status) for a in attempts] == [(1, None), (2, None)]  # 1: never answered


async def test_a_purged_run_takes_its_callback_and_attempts_along(store: Store) -> None:
    await a_run(store)
    await store.callbacks.add_callback(callback())
    (held,) = await store.callbacks.claim_callbacks("h1", TTL, NOW, 1)
    await store.callbacks.begin_attempt("r1", "h1", held.epoch, NOW)
    assert await store.runs.purge_runs(10.0, 10) == 1
    assert await store.callbacks.get_callback("r1") is None
    assert await store.callbacks.attempts("r1") == []


async def test_two_postgres_replicas_never_claim_the_same_callback() -> None:
    async with postgres_database() as url:
        one, two = PostgresStore(url), PostgresStore(url)
        await one.open()
        await two.open()
        try:
            for n in range(40):
                await a_run(one, f"r{n}")
                await one.callbacks.add_callback(callback(f"r{n}"))
            got: list[list[CallbackRecord]] = await asyncio.gather(
                *(
                    s.callbacks.claim_callbacks(f"h{i}", TTL, NOW, 7)
                    for i, s in enumerate([one, two, one, two, one, two, one, two])
                )
            )
            ids = [c.run_id for batch in got for c in batch]
            assert len(ids) == len(set(ids)) == 40
        finally:
            await one.aclose()
            await two.aclose()


async def test_a_sqlite_claim_reads_the_due_callbacks_not_every_finished_run(
    tmp_path: Path,
) -> None:
    """The claim walks the due callbacks (their partial index), each one's run by its key:
    never the finished runs kept for retention, whose number it would grow with. And with
    nothing due it writes nothing (no transaction each time a run finishes)."""
    import sqlite3

    from openclaw_orchestrator.server.stores import callbacks_sqlite

    store = SqliteStore(sqlite_url(tmp_path / "data"))
    await store.open()
    try:
        for n in range(3):
            await a_run(store, f"r{n}")
        before = store._writer.transactions if store._writer is not None else 0
        assert await store.callbacks.claim_callbacks("h1", TTL, NOW, 10) == []
        assert store._writer is not None
        assert store._writer.transactions == before
        conn = sqlite3.connect(store.path)
        try:
            params = {"holder": "h", "until": 0.0, "now": NOW, "clock": NOW, "limit": 10}
            plan = " / ".join(
                row[3]
                for row in conn.execute("EXPLAIN QUERY PLAN " + callbacks_sqlite._CLAIM, params)
            )
        finally:
            conn.close()
        assert "ix_run_callbacks_due" in plan, plan
        assert "ix_runs_state_created" not in plan, plan
    finally:
        await store.aclose()
