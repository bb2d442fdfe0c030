"""One contract, both stores: SQLite (:class:`SqliteStore` on a real file) and PostgreSQL
(:class:`PostgresStore` on the real server, in a database of its own, dropped after).

PostgreSQL tests skip with the reason when no server answers, and fail in CI (CI=true),
where the server is part of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from openclaw_orchestrator.domain.sessions import MessageRecord, SessionRecord
from openclaw_orchestrator.errors import ConflictError, SessionExistsError
from openclaw_orchestrator.server.stores.base import SessionQuery, Store
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url

from ..storage_faults import postgres_database


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
        yield s


def session(sid: str = "s1", **kw: object) -> SessionRecord:
    """A session record with test defaults."""
    base: dict[str, object] = {
        "instance": "A", "token_hash": "h" * 64, "ttl": 60.0,
        "created_at": 1000.0, "last_active_at": 1000.0,
    }  # fmt: skip
    return SessionRecord(id=sid, **{**base, **kw})  # type: ignore[arg-type]


def message(seq: int, sid: str = "s1", **kw: object) -> MessageRecord:
    """A history entry with test defaults."""
    base: dict[str, object] = {"kind": "message", "instance": "A", "created_at": 1000.0 + seq}
    return MessageRecord(session_id=sid, seq=seq, **{**base, **kw})  # type: ignore[arg-type]


async def test_create_get_and_conflict(store: Store) -> None:
    """A created session reads back equal; the same id again is SessionExistsError."""
    record = session(metadata={"k": [1, 2]})
    await store.create_session(record)
    assert await store.get_session("s1") == record
    assert await store.get_session("nope") is None
    with pytest.raises(SessionExistsError):
        await store.create_session(session())


async def test_append_updates_count_activity_and_instance(store: Store) -> None:
    """append commits entries and moves the session's counters in one step."""
    record = session()
    await store.create_session(record)
    record = await store.append(record, message(1, data={"a": 1}, reply={"ok": True}))
    record = await store.append(
        record, message(2, kind="migration", instance="B"), message(3, instance="B", data=None)
    )
    assert (record.messages, record.instance, record.last_active_at) == (3, "B", 1003.0)
    assert await store.get_session("s1") == record
    history = await store.history("s1")
    assert [(m.seq, m.kind, m.instance) for m in history] == [
        (1, "message", "A"),
        (2, "migration", "B"),
        (3, "message", "B"),
    ]
    assert history[0].data == {"a": 1}
    assert history[0].reply == {"ok": True}
    assert [m.seq for m in await store.history("s1", offset=1, limit=1)] == [2]


async def test_same_seq_twice_is_refused(store: Store) -> None:
    """Two writers can never record the same position: a stale append fails whole."""
    record = session()
    await store.create_session(record)
    record = await store.append(record, message(1))
    stale = replace(record, messages=0)
    with pytest.raises(ConflictError, match="position 1 is taken"):
        await store.append(stale, message(1, data="again"))
    assert (await store.get_session("s1")).messages == 1  # type: ignore[union-attr]


async def test_find_by_idempotency_key(store: Store) -> None:
    """A message is found again by its idempotency key, per session."""
    record = session()
    await store.create_session(record)
    await store.append(record, message(1, idempotency_key="k1", reply="r1"))
    found = await store.find_by_key("s1", "k1")
    assert found is not None
    assert found.reply == "r1"
    assert await store.find_by_key("s1", "k2") is None
    assert await store.find_by_key("other", "k1") is None


async def test_list_filters_and_order(store: Store) -> None:
    """list_sessions filters by instance, state and activity, newest activity first."""
    await store.create_session(session("a", instance="A", last_active_at=1000.0))
    await store.create_session(session("b", instance="B", last_active_at=2000.0))
    await store.create_session(session("c", instance="A", last_active_at=3000.0))
    await store.set_state("c", "closed", closed_at=3001.0)
    assert [s.id for s in await store.list_sessions()] == ["c", "b", "a"]
    assert [s.id for s in await store.list_sessions(SessionQuery(instance="A"))] == ["c", "a"]
    assert [s.id for s in await store.list_sessions(SessionQuery(state="open"))] == ["b", "a"]
    since = SessionQuery(active_since=1500.0)
    assert [s.id for s in await store.list_sessions(since)] == ["c", "b"]
    every = SessionQuery(instance="A", state="open", active_since=500.0)
    assert [s.id for s in await store.list_sessions(every)] == ["a"]
    assert [s.id for s in await store.list_sessions(SessionQuery(limit=2))] == ["c", "b"]


async def test_list_reads_records_whole(store: Store) -> None:
    """A listed session equals the one read by id (JSON metadata decoded on both stores)."""
    await store.create_session(session(metadata={"k": [1, 2], "n": None}))
    assert await store.list_sessions() == [await store.get_session("s1")]


async def test_close_is_sticky(store: Store) -> None:
    """Closing twice keeps the first closing time; unknown ids give None."""
    await store.create_session(session())
    first = await store.set_state("s1", "closed", closed_at=5.0)
    again = await store.set_state("s1", "closed", closed_at=9.0)
    assert first is not None
    assert again is not None
    assert (first.state, first.closed_at, again.closed_at) == ("closed", 5.0, 5.0)
    assert await store.set_state("nope", "closed", closed_at=1.0) is None


async def test_expire_and_purge(store: Store) -> None:
    """Idle sessions expire at last activity + TTL; purge drops old closed ones with history."""
    idle = session("idle", ttl=10.0, last_active_at=100.0)
    busy = session("busy", ttl=10.0, last_active_at=195.0)
    await store.create_session(idle)
    await store.create_session(busy)
    await store.append(idle, message(1, sid="idle", created_at=100.0))
    expired = await store.expire_idle(200.0)
    assert [s.id for s in expired] == ["idle"]
    assert (await store.get_session("idle")).state == "expired"  # type: ignore[union-attr]
    assert (await store.get_session("busy")).state == "open"  # type: ignore[union-attr]
    assert await store.purge(closed_before=150.0) == 0
    assert await store.purge(closed_before=250.0) == 1
    assert await store.get_session("idle") is None
    assert await store.history("idle") == []


async def test_concurrent_appends_to_different_sessions(store: Store) -> None:
    """Many sessions appending at once all land, none lost."""
    records = [session(f"p{i}") for i in range(20)]
    for r in records:
        await store.create_session(r)

    async def fill(r: SessionRecord) -> None:
        for seq in range(1, 11):
            r = await store.append(r, message(seq, sid=r.id))

    await asyncio.gather(*(fill(r) for r in records))
    for r in records:
        assert len(await store.history(r.id)) == 10


async def test_every_field_reads_back_as_written(store: Store) -> None:
    """Each column of both tables, set to a value of its own (JSON of every shape), reads
    back equal: one mapping of records to rows serves both stores."""
    record = session(
        "every", instance="B", token_hash="t" * 64, ttl=7.5, failover="migrate",
        metadata={"nested": {"list": [1, "two", None, 3.5]}, "empty": {}},
        created_at=11.0, last_active_at=12.0,
    )  # fmt: skip
    await store.create_session(record)
    entries = [
        message(1, sid="every", data={"a": [1, 2]}, reply="text", latency_ms=1.25,
                request_id="req-1", idempotency_key="key-1", instance="B", created_at=13.0),
        message(2, sid="every", kind="migration", data=5, reply=2.5, created_at=14.0),
        message(3, sid="every", data="5", reply=[None, True], created_at=15.0),
        message(4, sid="every", data=None, reply=None, created_at=16.0),
    ]  # fmt: skip
    record = await store.append(record, *entries)
    assert await store.history("every") == entries
    assert await store.find_by_key("every", "key-1") == entries[0]
    assert await store.get_session("every") == record
    closed = await store.set_state("every", "closed", closed_at=17.0)
    assert closed == replace(record, state="closed", closed_at=17.0)
    assert await store.list_sessions() == [closed]
