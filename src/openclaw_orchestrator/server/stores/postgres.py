"""``PostgresStore``: the PostgreSQL store, on SQLAlchemy Core and asyncpg.

For several orchestrator replicas sharing the load (a SQLite file is served by
:class:`~.sqlite.SqliteStore`; ``runtime.open_store`` chooses). Every method is one
transaction on a pooled connection; PostgreSQL serializes the writers itself, and the
primary key (session_id, seq) refuses a position two replicas both tried to take.

**When the database cannot be reached or its disk is full**, :func:`storage_error` turns
the driver's failure (a refused or reset connection, an invalidated pooled connection,
PostgreSQL shutting down or starting up, ``disk_full``) into ``StorageUnavailableError``
(503) or ``StorageFullError`` (507), in one place, and the store's
:class:`~.health.StoreHealth` refuses sends until a probe write succeeds. SQLAlchemy's pool
drops connections that failed as disconnects, so the store reconnects by itself: no restart.
Connecting gives up after ``CONNECT_TIMEOUT`` seconds (asyncpg's own default is 60).

**At open** the schema is brought to the newest revision (:mod:`.migrations`) in one
transaction holding a transaction-scoped advisory lock: of replicas starting together one
migrates, the others wait for its COMMIT and then find nothing to do.

**Leases** (:mod:`.leases`) are judged by the server's ``now()``: the replicas' own clocks
never decide who holds a lease, so replicas whose clocks disagree still agree on it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, make_url, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from ...domain.sessions import MessageRecord, SessionRecord
from ...errors import SessionExistsError, StorageFullError, StorageUnavailableError
from .base import DEFAULT_SESSION_QUERY, SessionQuery, append_conflict, appended
from .health import FULL_ERRNOS, StoreHealth, StoreState, StoreStatus
from .leases import Lease, LeaseSql, check_lease, lease_of
from .migrations import migrate_locked
from .rows import JSON_AS_VALUES, MESSAGE_COLUMNS, SESSION_COLUMNS, select_sessions
from .tables import PROBE_ROW, TOUCH_PROBE, messages, sessions, store_probe

__all__ = ["PostgresStore", "storage_error"]

POOL_SIZE = 10
POOL_OVERFLOW = 10
CONNECT_TIMEOUT = 5.0
PROBE_RESERVE_BYTES = 1024 * 1024  # random, so that compression cannot shrink it
RESERVE_ROW = "reserve"

# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_DISK_FULL = "53100"  # "could not extend file ...: No space left on device"
_PG_UNAVAILABLE_CLASSES = ("08", "57P")  # connection exception; admin/crash shutdown, starting
_PG_UNAVAILABLE = frozenset({"53200", "53300", "25006"})  # out of memory, too many
# connections, read-only (a standby): the database cannot take writes now.

_ROWS = JSON_AS_VALUES
_SESSION = select(*(sessions.c[name] for name in SESSION_COLUMNS))
_MESSAGE = select(*(messages.c[name] for name in MESSAGE_COLUMNS))
_UPDATE_SESSION = (
    update(sessions)
    .where(sessions.c.id == bindparam("b_id"))
    .values(
        messages=bindparam("b_messages"),
        last_active_at=bindparam("b_last_active_at"),
        instance=bindparam("b_instance"),
    )
)

_LEASES = LeaseSql.with_clock(now="now()", until="now() + make_interval(secs => :ttl)")
_ACQUIRE_LEASE = text(_LEASES.acquire)
_RELEASE_LEASE = text(_LEASES.release)
_GET_LEASE = text(_LEASES.get)


def _seconds(expires_at: datetime) -> float:
    """A ``timestamptz`` (asyncpg: an aware ``datetime``) as seconds since the epoch."""
    return expires_at.timestamp()


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
        if exc.errno in FULL_ERRNOS:
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


class PostgresStore:
    """Sessions and histories in a PostgreSQL database; see the module docstring."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise ValueError(f"PostgresStore needs a PostgreSQL URL, not {url!r}")
        self.url = url
        self._engine = create_async_engine(
            parsed,
            echo=echo,
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            connect_args={"timeout": CONNECT_TIMEOUT}
            if parsed.get_driver_name() == "asyncpg"
            else {},
        )
        self._health = StoreHealth(self._probe, storage_error)

    def __repr__(self) -> str:
        url = self._engine.url.render_as_string(hide_password=True)
        return f"<PostgresStore {url} [{self._health.state}]>"

    async def open(self) -> None:
        """Migrate the schema to the newest revision, one replica at a time (ConfigError
        when the database is at a revision this code does not know)."""
        async with self._engine.begin() as conn:
            await conn.run_sync(migrate_locked)

    async def aclose(self) -> None:
        """Stop recovering, then close every pooled connection."""
        await self._health.aclose()
        await self._engine.dispose()

    # -- health ----------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Refuse (503/507 with ``retry_after``) while the store is unavailable or full."""
        self._health.check()

    def status(self) -> StoreStatus:
        """ok, or unavailable/full and why, as the last operation or probe found it."""
        return self._health.status()

    async def _probe(self) -> None:
        """Can it write again? One real committed write; after a full disk, also room for
        ``PROBE_RESERVE_BYTES``, written then rolled back (the files grow before the
        rollback), so a row that fit in a page does not pass for free space."""
        async with self._writing() as conn:
            await conn.execute(text(TOUCH_PROBE), {"id": PROBE_ROW, "at": time.time()})
        if self._health.state is StoreState.FULL:
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
            async with self._engine.begin() as conn:
                yield conn

    # -- the Store -------------------------------------------------------------------------

    async def create_session(self, record: SessionRecord) -> None:
        """Insert; SessionExistsError when the id is taken."""
        values = dict(zip(SESSION_COLUMNS, _ROWS.session_row(record), strict=True))
        try:
            async with self._writing() as conn:
                await conn.execute(insert(sessions).values(values))
        except IntegrityError as exc:
            raise SessionExistsError(
                f"session {record.id!r} already exists", field="session_id"
            ) from exc

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""
        async with self._reading() as conn:
            row = (await conn.execute(_SESSION.where(sessions.c.id == session_id))).first()
        return None if row is None else _ROWS.session(row)

    async def list_sessions(
        self, query: SessionQuery = DEFAULT_SESSION_QUERY
    ) -> list[SessionRecord]:
        """Filtered, most recently active first."""
        sql, params = select_sessions(query)
        statement = text(sql).columns(*_SESSION.selected_columns)  # typed: JSON decoded
        async with self._reading() as conn:
            rows = (await conn.execute(statement, params)).all()
        return [_ROWS.session(r) for r in rows]

    async def append(self, record: SessionRecord, *entries: MessageRecord) -> SessionRecord:
        """Insert the entries and update the session, in one transaction; a taken
        position or idempotency key is a ``ConflictError`` and records nothing."""
        updated = appended(record, entries)
        rows: list[dict[str, Any]] = [
            dict(zip(MESSAGE_COLUMNS, _ROWS.message_row(e), strict=True)) for e in entries
        ]
        session = {
            "b_id": updated.id,
            "b_messages": updated.messages,
            "b_last_active_at": updated.last_active_at,
            "b_instance": updated.instance,
        }
        try:
            async with self._writing() as conn:
                if rows:
                    await conn.execute(insert(messages), rows)
                await conn.execute(_UPDATE_SESSION, session)
        except IntegrityError as exc:
            raise append_conflict(record) from exc
        return updated

    async def find_by_key(self, session_id: str, idempotency_key: str) -> MessageRecord | None:
        """The earlier message with this key, if any."""
        query = _MESSAGE.where(
            messages.c.session_id == session_id, messages.c.idempotency_key == idempotency_key
        )
        async with self._reading() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _ROWS.message(row)

    async def history(
        self, session_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[MessageRecord]:
        """Oldest first."""
        query = (
            _MESSAGE.where(messages.c.session_id == session_id)
            .order_by(messages.c.seq)
            .offset(offset)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return [_ROWS.message(r) for r in rows]

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
            row = (await conn.execute(_SESSION.where(sessions.c.id == session_id))).first()
        return None if row is None else _ROWS.session(row)

    async def expire_idle(self, now: float) -> list[SessionRecord]:
        """Expire open sessions whose last activity plus TTL is in the past."""
        idle = (sessions.c.state == "open") & (sessions.c.last_active_at + sessions.c.ttl < now)
        async with self._writing() as conn:
            rows = (await conn.execute(_SESSION.where(idle))).all()
            if rows:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id.in_([r[0] for r in rows]), sessions.c.state == "open")
                    .values(state="expired", closed_at=now)
                )
        return [_ROWS.session(r) for r in rows]

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

    # -- the LeaseStore (judged by the server's now()) -------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Take, take over or renew ``name`` for ``ttl`` seconds of the server's clock; None
        while another holder's lease is live (see :class:`~.leases.LeaseStore`)."""
        check_lease(name, holder, ttl)
        params = {"name": name, "holder": holder, "ttl": float(ttl)}
        async with self._writing() as conn:
            row = (await conn.execute(_ACQUIRE_LEASE, params)).first()
        return None if row is None else lease_of(row, _seconds)

    async def release_lease(self, name: str, holder: str, epoch: int) -> bool:
        """Expire ``name`` now if ``holder`` still holds it at ``epoch``."""
        check_lease(name, holder)
        params = {"name": name, "holder": holder, "epoch": epoch}
        async with self._writing() as conn:
            result = await conn.execute(_RELEASE_LEASE, params)
        return bool(result.rowcount)

    async def get_lease(self, name: str) -> Lease | None:
        """The live lease on ``name``, or None."""
        check_lease(name)
        async with self._reading() as conn:
            row = (await conn.execute(_GET_LEASE, {"name": name})).first()
        return None if row is None else lease_of(row, _seconds)
