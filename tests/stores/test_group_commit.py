"""SqlStore's group commit on SQLite: batched, each caller acknowledged only once durable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openclaw_orchestrator.domain.sessions import MessageRecord, SessionRecord
from openclaw_orchestrator.errors import ConflictError
from openclaw_orchestrator.stores.sql import SqlStore, sqlite_url


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    """An opened SQLite store in a fresh folder."""
    s = SqlStore(sqlite_url(tmp_path))
    await s.open()
    yield s
    await s.aclose()


def _session(sid: str) -> SessionRecord:
    return SessionRecord(
        id=sid, instance="A", token_hash="h", ttl=60.0, failover="none",
        metadata={}, created_at=1.0, last_active_at=1.0,
    )  # fmt: skip


def _message(sid: str, seq: int, key: str | None = None) -> MessageRecord:
    return MessageRecord(
        session_id=sid, seq=seq, kind="message", instance="A", data={"n": seq},
        reply={"ok": True}, idempotency_key=key, created_at=2.0,
    )  # fmt: skip


async def test_concurrent_appends_commit_in_fewer_transactions(store: SqlStore) -> None:
    """Fifty appends to fifty sessions at once: all durable, in fewer transactions than
    appends (the first goes alone, the rest gather behind it)."""
    records = [_session(f"s{i}") for i in range(50)]
    for record in records:
        await store.create_session(record)
    transactions = 0
    original = store._write

    async def counting(conn: object, batch: list[object]) -> None:
        nonlocal transactions
        transactions += 1
        await original(conn, batch)  # type: ignore[arg-type]  # passes through

    store._write = counting  # type: ignore[method-assign]  # instrumented for this test
    updated = await asyncio.gather(*(store.append(r, _message(r.id, 1)) for r in records))
    assert [u.messages for u in updated] == [1] * 50
    assert transactions < 50
    reopened = SqlStore(store.url)
    await reopened.open()
    try:
        for record in records:
            assert [m.seq for m in await reopened.history(record.id)] == [1]
            assert (await reopened.get_session(record.id)).messages == 1  # type: ignore[union-attr]  # exists
    finally:
        await reopened.aclose()


async def test_a_conflict_fails_only_its_own_append(store: SqlStore) -> None:
    """A batch holding one taken position: that append is a conflict, the others commit."""
    a, b = _session("a"), _session("b")
    await store.create_session(a)
    await store.create_session(b)
    await store.append(a, _message("a", 1))
    results = await asyncio.gather(
        store.append(a, _message("a", 1)),  # position 1 of a is taken
        store.append(b, _message("b", 1)),
        return_exceptions=True,
    )
    assert isinstance(results[0], ConflictError)
    assert not isinstance(results[1], BaseException)
    assert [m.seq for m in await store.history("b")] == [1]
    assert [m.data for m in await store.history("a")] == [{"n": 1}]
    assert "0 appends queued" in repr(store)
