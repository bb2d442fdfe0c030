"""``SqlStore``: the Store on SQLAlchemy Core, for SQLite (aiosqlite) and PostgreSQL (asyncpg).

The server uses it for PostgreSQL; a SQLite *file* is served by the faster
:class:`~.sqlite_writer.SqliteStore` (same schema, same behaviour; ``runtime.open_store``
chooses). SqlStore on SQLite stays correct and is kept for ``:memory:`` and direct use.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk before ``append``
returns, so an acknowledged send survives ``kill -9`` and power loss alike. SQLite has one
writer at a time; an in-process lock queues our writers instead of letting them fight over
the database lock. PostgreSQL needs no such lock.

On SQLite, appends are *group-committed*: the fsync per commit, not the SQL, is what limits
a single writer, so concurrent appends (from different sessions) are queued and written by
one flusher task in one transaction, one fsync for all of them. Each caller's ``append``
returns only after the transaction holding its entries has committed; while one batch is
being committed the next one gathers, so a lone append waits for nothing extra. When a
batch hits a constraint (a taken position, a reused idempotency key), it is rolled back and
its appends are retried one transaction each, so only the offending one fails.

**When the database cannot be reached or its disk is full**, :func:`storage_error` turns
the driver's failure (a refused or reset connection, an invalidated pooled connection,
PostgreSQL shutting down or starting up, ``disk_full``) into ``StorageUnavailableError``
(503) or ``StorageFullError`` (507), in one place, and the store's
:class:`~.health.StoreHealth` refuses sends until a probe write succeeds. SQLAlchemy's pool
drops connections that failed as disconnects, so the store reconnects by itself: no restart.
Connecting gives up after ``CONNECT_TIMEOUT`` seconds (asyncpg's own default is 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, event, insert, make_url, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..domain.sessions import MessageRecord, SessionRecord
from ..errors import (
    ConflictError,
    SessionExistsError,
    StorageFullError,
    StorageUnavailableError,
)
from .health import StoreHealth, StoreState, StoreStatus
from .tables import PROBE_ROW, TOUCH_PROBE, messages, metadata, sessions, store_probe

__all__ = ["SqlStore", "sqlite_url", "storage_error"]

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_POOL_SIZE = 32
CONNECT_TIMEOUT = 5.0
PROBE_RESERVE_BYTES = 1024 * 1024  # random, so that compression cannot shrink it
RESERVE_ROW = "reserve"

# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_DISK_FULL = "53100"  # "could not extend file ...: No space left on device"
_PG_UNAVAILABLE_CLASSES = ("08", "57P")  # connection exception; admin/crash shutdown, starting
_PG_UNAVAILABLE = frozenset({"53200", "53300", "25006"})  # out of memory, too many
# connections, read-only (a standby): the database cannot take writes now.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a driver error (asyncpg's own, or wrapped by SQLAlchemy), or ''."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def storage_error(exc: BaseException) -> StorageUnavailableError | None:
    """What ``exc`` means for the store: disk full, database unreachable, or None (a
    conflict, a bad statement, a bug: not a storage failure). The one translation of driver
    and socket errors for this store; the most specific check comes first."""
    if isinstance(exc, StorageUnavailableError):
        return exc
    if isinstance(exc, IntegrityError):
        return None
    state = _sqlstate(exc)
    if state == _PG_DISK_FULL or "No space left on device" in str(exc):
        return StorageFullError(f"the database's disk is full: {exc!s:.300}")
    if isinstance(exc, OSError):  # refused, reset, timed out connecting (raw, not wrapped)
        if exc.errno in _FULL_ERRNOS:
            return StorageFullError(f"the database's disk is full: {exc}")
        return StorageUnavailableError(f"cannot reach the database: {exc!r:.300}")
    if isinstance(exc, PoolTimeoutError):
        return StorageUnavailableError(f"no database connection free in time: {exc!s:.300}")
    unreachable = state.startswith(_PG_UNAVAILABLE_CLASSES) or state in _PG_UNAVAILABLE
    if isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    ):
        unreachable = True
    if unreachable:
        return StorageUnavailableError(f"cannot use the database: {exc!s:.300}")
    return None


def sqlite_url(data_dir: Path) -> str:
    """The default database: ``<data_dir>/orchestrator.db``."""
    return f"sqlite+aiosqlite:///{data_dir / 'orchestrator.db'}"


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "PRAGMA foreign_keys=ON",
    ):
        cursor.execute(pragma)
    cursor.close()


def _session(row: Row[Any]) -> SessionRecord:
    m = row._mapping
    return SessionRecord(
        id=m["id"],
        instance=m["instance"],
        token_hash=m["token_hash"],
        ttl=m["ttl"],
        failover=m["failover"],
        metadata=m["metadata"] or {},
        state=m["state"],
        created_at=m["created_at"],
        last_active_at=m["last_active_at"],
        closed_at=m["closed_at"],
        messages=m["messages"],
    )


def _message(row: Row[Any]) -> MessageRecord:
    m = row._mapping
    return MessageRecord(
        session_id=m["session_id"],
        seq=m["seq"],
        kind=m["kind"],
        instance=m["instance"],
        data=m["data"],
        reply=m["reply"],
        latency_ms=m["latency_ms"],
        request_id=m["request_id"],
        idempotency_key=m["idempotency_key"],
        created_at=m["created_at"],
    )


def _message_values(entry: MessageRecord) -> Mapping[str, Any]:
    return {
        "session_id": entry.session_id,
        "seq": entry.seq,
        "kind": entry.kind,
        "instance": entry.instance,
        "data": entry.data,
        "reply": entry.reply,
        "latency_ms": entry.latency_ms,
        "request_id": entry.request_id,
        "idempotency_key": entry.idempotency_key,
        "created_at": entry.created_at,
    }


@dataclass(slots=True)
class _Append:
    """One queued ``append``: what to write and the future its caller awaits."""

    record: SessionRecord
    entries: tuple[MessageRecord, ...]
    updated: SessionRecord
    done: asyncio.Future[None]


_UPDATE_SESSION = (
    update(sessions)
    .where(sessions.c.id == bindparam("b_id"))
    .values(
        messages=bindparam("b_messages"),
        last_active_at=bindparam("b_last_active_at"),
        instance=bindparam("b_instance"),
    )
)


def _session_values(item: _Append) -> dict[str, Any]:
    u = item.updated
    return {
        "b_id": u.id,
        "b_messages": u.messages,
        "b_last_active_at": u.last_active_at,
        "b_instance": u.instance,
    }


def _conflict(record: SessionRecord) -> ConflictError:
    return ConflictError(
        f"session {record.id!r} was written concurrently (position {record.messages + 1} "
        "is taken, or the idempotency key was used); nothing was recorded",
        field="session_id",
    )


class SqlStore:
    """Sessions and histories in SQLite or PostgreSQL, chosen by ``url``."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            # Every aiosqlite connection is a thread: a pool big enough for the concurrent
            # reads of a busy server keeps them (the default 5 + 10 overflow opened and
            # closed a connection, a thread and four PRAGMAs per read under load). Reads
            # never open a transaction and writes always end theirs, so a returned
            # connection needs no reset (a rollback: one more thread hop per read).
            self._engine: AsyncEngine = create_async_engine(
                url,
                echo=echo,
                pool_size=SQLITE_POOL_SIZE,
                max_overflow=0,
                pool_reset_on_return=None,
            )
            event.listen(self._engine.sync_engine, "connect", _on_sqlite_connect)
        else:
            is_asyncpg = make_url(url).get_driver_name() == "asyncpg"
            self._engine = create_async_engine(
                url,
                echo=echo,
                pool_size=10,
                max_overflow=10,
                connect_args={"timeout": CONNECT_TIMEOUT} if is_asyncpg else {},
            )
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._queue: list[_Append] = []
        self._flusher: asyncio.Task[None] | None = None
        self._health = StoreHealth(self._probe, storage_error)

    def __repr__(self) -> str:
        kind = "sqlite" if self.is_sqlite else self._engine.dialect.name
        url = self._engine.url.render_as_string(hide_password=True)
        queued = len(self._queue)
        return f"<SqlStore {kind} {url} [{queued} appends queued, {self._health.state}]>"

    async def open(self) -> None:
        """Create the folder (SQLite) and any missing tables."""
        if self.is_sqlite and (db := self._engine.url.database) and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def aclose(self) -> None:
        """Finish the appends in flight, then close every pooled connection."""
        await self._health.aclose()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._engine.dispose()

    # -- health ----------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Refuse (503/507 with ``retry_after``) while the store is unavailable or full."""
        self._health.check()

    def status(self) -> StoreStatus:
        """ok, or unavailable/full and why, as the last operation or probe found it."""
        return self._health.status()

    async def _probe(self) -> None:
        """Can it write again? One real committed write; after a full disk (PostgreSQL),
        also room for ``PROBE_RESERVE_BYTES``, written then rolled back (the files grow
        before the rollback), so a row that fit in a page does not pass for free space."""
        async with self._writing() as conn:
            await conn.execute(text(TOUCH_PROBE), {"id": PROBE_ROW, "at": time.time()})
        if self._health.state is StoreState.FULL and not self.is_sqlite:
            reserve = insert(store_probe).values(
                id=RESERVE_ROW, probed_at=0.0, reserve=os.urandom(PROBE_RESERVE_BYTES)
            )
            with self._health.watching():
                async with self._engine.connect() as conn, conn.begin() as tx:
                    await conn.execute(reserve)
                    await tx.rollback()

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        with self._health.watching():
            async with self._engine.connect() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        with self._health.watching():
            if self._write_lock is None:
                async with self._engine.begin() as conn:
                    yield conn
                return
            async with self._write_lock, self._engine.begin() as conn:
                yield conn

    async def create_session(self, record: SessionRecord) -> None:
        """Insert; SessionExistsError when the id is taken."""
        try:
            async with self._writing() as conn:
                await conn.execute(
                    insert(sessions).values(
                        id=record.id,
                        instance=record.instance,
                        token_hash=record.token_hash,
                        state=record.state,
                        ttl=record.ttl,
                        failover=record.failover,
                        metadata=dict(record.metadata),
                        created_at=record.created_at,
                        last_active_at=record.last_active_at,
                        closed_at=record.closed_at,
                        messages=record.messages,
                    )
                )
        except IntegrityError as exc:
            raise SessionExistsError(
                f"session {record.id!r} already exists", field="session_id"
            ) from exc

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""
        async with self._reading() as conn:
            row = (await conn.execute(select(sessions).where(sessions.c.id == session_id))).first()
        return None if row is None else _session(row)

    async def list_sessions(
        self,
        *,
        instance: str | None = None,
        state: str | None = None,
        active_since: float | None = None,
        limit: int = 1000,
    ) -> list[SessionRecord]:
        """Filtered, most recently active first."""
        query = select(sessions).order_by(sessions.c.last_active_at.desc()).limit(limit)
        if instance is not None:
            query = query.where(sessions.c.instance == instance)
        if state is not None:
            query = query.where(sessions.c.state == state)
        if active_since is not None:
            query = query.where(sessions.c.last_active_at >= active_since)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return [_session(r) for r in rows]

    async def append(self, record: SessionRecord, *entries: MessageRecord) -> SessionRecord:
        """Insert the entries and update the session, in one transaction (on SQLite shared
        with concurrent appends: group commit, see the module docstring)."""
        last = entries[-1] if entries else None
        updated = replace(
            record,
            messages=record.messages + len(entries),
            last_active_at=last.created_at if last else record.last_active_at,
            instance=last.instance if last else record.instance,
        )
        item = _Append(record, entries, updated, asyncio.get_running_loop().create_future())
        if not self.is_sqlite:
            await self._write_alone(item)
            await item.done  # raises what the write raised
            return updated
        self._queue.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="sql-group-commit")
        await asyncio.shield(item.done)  # a cancelled caller does not cancel the batch
        return updated

    async def _flush(self) -> None:
        """Commit queued appends, batch after batch, until the queue is empty."""
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                async with self._writing() as conn:
                    await self._write(conn, batch)
            except IntegrityError:
                for item in batch:  # one of them conflicts: find which, alone
                    await self._write_alone(item)
                continue
            except Exception as exc:
                for item in batch:
                    item.done.set_exception(exc)
                    item.done.exception()  # retrieved here: a cancelled caller logs nothing
                continue
            for item in batch:
                item.done.set_result(None)

    async def _write_alone(self, item: _Append) -> None:
        """``item`` in its own transaction; its outcome (a conflict named as such) goes to
        its future, marked retrieved so that a caller who gave up leaves no warning."""
        try:
            async with self._writing() as conn:
                await self._write(conn, [item])
        except IntegrityError as exc:
            conflict = _conflict(item.record)
            conflict.__cause__ = exc
            item.done.set_exception(conflict)
            item.done.exception()
        except Exception as exc:
            item.done.set_exception(exc)
            item.done.exception()
        else:
            item.done.set_result(None)

    @staticmethod
    async def _write(conn: AsyncConnection, batch: list[_Append]) -> None:
        """Every entry of ``batch`` in one INSERT, every session in one UPDATE."""
        rows = [_message_values(e) for item in batch for e in item.entries]
        if rows:
            await conn.execute(insert(messages), rows)
        await conn.execute(_UPDATE_SESSION, [_session_values(item) for item in batch])

    async def find_by_key(self, session_id: str, idempotency_key: str) -> MessageRecord | None:
        """The earlier message with this key, if any."""
        query = select(messages).where(
            messages.c.session_id == session_id, messages.c.idempotency_key == idempotency_key
        )
        async with self._reading() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _message(row)

    async def history(
        self, session_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[MessageRecord]:
        """Oldest first."""
        query = (
            select(messages)
            .where(messages.c.session_id == session_id)
            .order_by(messages.c.seq)
            .offset(offset)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return [_message(r) for r in rows]

    async def set_state(
        self, session_id: str, state: str, *, closed_at: float
    ) -> SessionRecord | None:
        """Close or expire; an already closed session keeps its first closing time."""
        async with self._writing() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id, sessions.c.state == "open")
                .values(state=state, closed_at=closed_at)
            )
            row = (await conn.execute(select(sessions).where(sessions.c.id == session_id))).first()
        return None if row is None else _session(row)

    async def expire_idle(self, now: float) -> list[SessionRecord]:
        """Expire open sessions whose last activity plus TTL is in the past."""
        idle = (sessions.c.state == "open") & (sessions.c.last_active_at + sessions.c.ttl < now)
        async with self._writing() as conn:
            rows = (await conn.execute(select(sessions).where(idle))).all()
            if rows:
                ids = [r._mapping["id"] for r in rows]
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id.in_(ids), sessions.c.state == "open")
                    .values(state="expired", closed_at=now)
                )
        return [_session(r) for r in rows]

    async def purge(self, closed_before: float) -> int:
        """Delete old closed/expired sessions and their histories."""
        old = (sessions.c.state != "open") & (sessions.c.closed_at < closed_before)
        async with self._writing() as conn:
            ids = [r[0] for r in (await conn.execute(select(sessions.c.id).where(old))).all()]
            if not ids:
                return 0
            await conn.execute(delete(messages).where(messages.c.session_id.in_(ids)))
            await conn.execute(delete(sessions).where(sessions.c.id.in_(ids)))
        return len(ids)
