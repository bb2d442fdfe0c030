"""What only SqliteStore does (plain sqlite3, one writer thread): group commit, conflicts
found inside a batch, cancelled callers, durability settings, files written through
SQLAlchemy. The contract itself is ``test_store_contract``'s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select

from openclaw_orchestrator.domain.sessions import MessageRecord, SessionRecord
from openclaw_orchestrator.errors import ConflictError, SessionExistsError
from openclaw_orchestrator.server.stores.base import SessionQuery
from openclaw_orchestrator.server.stores.sqlite import CHUNK_ROWS, SqliteStore, sqlite_url
from openclaw_orchestrator.server.stores.tables import messages, sessions


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An opened SqliteStore in a fresh folder (created by ``open``)."""
    s = SqliteStore(sqlite_url(tmp_path / "data"))
    await s.open()
    yield s
    await s.aclose()


def _session(sid: str) -> SessionRecord:
    return SessionRecord(
        id=sid, instance="A", token_hash="h", ttl=60.0, failover="none",
        metadata={"m": [1]}, created_at=1.0, last_active_at=1.0,
    )  # fmt: skip


def _message(sid: str, seq: int, key: str | None = None) -> MessageRecord:
    return MessageRecord(
        session_id=sid, seq=seq, kind="message", instance="A", data={"n": seq},
        reply={"ok": True}, idempotency_key=key, created_at=2.0,
    )  # fmt: skip


async def test_concurrent_appends_share_transactions_and_are_durable(store: SqliteStore) -> None:
    """Fifty appends to fifty sessions at once: fewer transactions than appends, and all
    of them on disk for a fresh store on the same file."""
    records = [_session(f"s{i}") for i in range(50)]
    for record in records:
        await store.create_session(record)
    before = store.transactions
    updated = await asyncio.gather(*(store.append(r, _message(r.id, 1)) for r in records))
    assert [u.messages for u in updated] == [1] * 50
    assert store.transactions - before < 50
    reopened = SqliteStore(store.url)
    await reopened.open()
    try:
        for record in records:
            assert [m.seq for m in await reopened.history(record.id)] == [1]
            assert (await reopened.get_session(record.id)).messages == 1  # type: ignore[union-attr]
    finally:
        await reopened.aclose()


async def test_a_conflict_fails_only_its_own_append(store: SqliteStore) -> None:
    """A batch holding one taken position: that append is a conflict, the others commit."""
    a, b, c = _session("a"), _session("b"), _session("c")
    for r in (a, b, c):
        await store.create_session(r)
    await store.append(a, _message("a", 1))
    results = await asyncio.gather(
        store.append(b, _message("b", 1)),
        store.append(a, _message("a", 1)),  # position 1 of a is taken
        store.append(c, _message("c", 1)),
        return_exceptions=True,
    )
    assert isinstance(results[1], ConflictError)
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)
    assert [m.seq for m in await store.history("b")] == [1]
    assert [m.seq for m in await store.history("c")] == [1]
    assert [m.data for m in await store.history("a")] == [{"n": 1}]
    assert "0 appends queued" in repr(store)


async def test_unknown_session_and_reused_key_are_conflicts(store: SqliteStore) -> None:
    """No session row (foreign key) or a used idempotency key: ConflictError, nothing kept."""
    with pytest.raises(ConflictError):
        await store.append(_session("ghost"), _message("ghost", 1))
    a = _session("a")
    await store.create_session(a)
    a = await store.append(a, _message("a", 1, key="k"))
    with pytest.raises(ConflictError):
        await store.append(a, _message("a", 2, key="k"))
    assert (await store.get_session("a")).messages == 1  # type: ignore[union-attr]
    with pytest.raises(SessionExistsError):
        await store.create_session(_session("a"))


async def test_a_cancelled_caller_does_not_cancel_its_append(store: SqliteStore) -> None:
    """The caller gives up; its append is still committed, and nothing is logged."""
    a = _session("a")
    await store.create_session(a)
    task = asyncio.create_task(store.append(a, _message("a", 1)))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.aclose()  # drains the queue
    await store.open()
    assert [m.seq for m in await store.history("a")] == [1]


async def test_reads_and_writes_rows_of_sqlalchemys_json_type(tmp_path: Path) -> None:
    """Files written through SQLAlchemy (as earlier versions did, and as the schema's JSON
    type encodes) read back equal, and what SqliteStore writes SQLAlchemy reads."""
    url = sqlite_url(tmp_path)
    store = SqliteStore(url)
    await store.open()
    await store.aclose()
    a, first = _session("a"), _message("a", 1, key="k")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(sessions).values(**{**asdict(a), "messages": 1}))
            conn.execute(insert(messages).values(**asdict(first)))
        await store.open()
        try:
            a = replace(a, messages=1)
            assert await store.get_session("a") == a
            assert await store.find_by_key("a", "k") == first
            a = await store.append(
                a, MessageRecord(session_id="a", seq=2, kind="migration", instance="B")
            )
        finally:
            await store.aclose()
        with engine.connect() as conn:
            rows = conn.execute(select(messages.c.data, messages.c.reply).order_by(messages.c.seq))
            assert [tuple(r) for r in rows] == [({"n": 1}, {"ok": True}), (None, None)]
            assert conn.execute(select(sessions.c.instance, sessions.c.messages)).one() == ("B", 2)
    finally:
        engine.dispose()


async def test_journal_is_wal_and_sync_full(store: SqliteStore) -> None:
    """The durability settings of every connection: WAL, synchronous=FULL (2)."""
    assert store._reader is not None
    assert store._reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._reader.execute("PRAGMA synchronous").fetchone()[0] == 2


async def test_two_appends_to_one_session_in_one_batch(store: SqliteStore) -> None:
    """Consecutive positions of one session in the same batch: both kept, the later count
    wins (one multi-row UPDATE must not pick the earlier one)."""
    a = _session("a")
    await store.create_session(a)
    first = await asyncio.gather(
        store.append(a, _message("a", 1)),
        store.append(replace(a, messages=1), _message("a", 2)),
    )
    assert [u.messages for u in first] == [1, 2]
    assert (await store.get_session("a")).messages == 2  # type: ignore[union-attr]
    assert [m.seq for m in await store.history("a")] == [1, 2]


async def test_a_batch_bigger_than_one_statement(store: SqliteStore) -> None:
    """More rows than CHUNK_ROWS in one batch: split over several statements, all kept."""
    records = [_session(f"s{i}") for i in range(CHUNK_ROWS + 20)]
    for record in records:
        await store.create_session(record)
    await asyncio.gather(*(store.append(r, _message(r.id, 1)) for r in records))
    for record in records[:: CHUNK_ROWS // 4]:
        assert (await store.get_session(record.id)).messages == 1  # type: ignore[union-attr]
    assert len(await store.list_sessions(SessionQuery(limit=10_000))) == len(records)
