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

import asyncio
import contextlib
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from sqlalchemy import (
    Float,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    make_url,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ...domain.sessions import MessageRecord, SessionRecord
from ...errors import SessionExistsError, StorageFullError, StorageUnavailableError
from .base import DEFAULT_SESSION_QUERY, SessionQuery, append_conflict, appended
from .callbacks_postgres import PostgresCallbacks
from .group_commit import Batches
from .health import FULL_ERRNOS, StoreHealth, StoreState, StoreStatus
from .leases import Lease, LeaseSql, check_lease, lease_of
from .migrations import migrate_locked
from .rows import JSON_AS_VALUES, MESSAGE_COLUMNS, SESSION_COLUMNS, select_sessions
from .runs_postgres import PostgresRuns
from .session_leases import Claim, lease_lost
from .tables import DONE, PENDING, PROBE_ROW, TOUCH_PROBE, messages, sessions, store_probe

__all__ = ["PostgresStore", "storage_error"]

POOL_SIZE = 5
POOL_OVERFLOW = 5
CALL_POOL_SIZE = 10
"""Connections for the send's calls (claim, record): each held for one round trip, so ten
serve thousands of sends a second; with ``POOL_SIZE + POOL_OVERFLOW`` a replica uses at
most 20 of the server's ``max_connections``."""
CALL_STATEMENT_CACHE = 16
CALL_LANES = 4
"""Batched calls in flight at once, each for claims and for records (group commit): eight
of the ``CALL_POOL_SIZE`` connections at most."""
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

# Session leases (:mod:`.session_leases`), judged by the server's clock in epoch seconds.
_NOW = func.extract("epoch", func.now())
_MINE = sessions.c.holder == bindparam("b_holder")
_AT_EPOCH = (
    (sessions.c.id == bindparam("b_id")) & _MINE & (sessions.c.epoch == bindparam("b_epoch"))
)
_LIVE = sessions.c.held_until > _NOW
_TTL = bindparam("b_ttl", type_=Float)  # typed: bound untyped, 0.5 s would be sent as 0
_RENEW_LEASE = update(sessions).where(_AT_EPOCH).values(held_until=_NOW + _TTL)
_RELEASE_SESSION = update(sessions).where(_AT_EPOCH).values(held_until=_NOW)
_AT_PENDING = (
    (messages.c.session_id == bindparam("b_id"))
    & (messages.c.seq == bindparam("b_seq"))
    & (messages.c.status == PENDING)
)
_MOVE_ON = (
    update(sessions)
    .where(_AT_EPOCH)
    .values(
        messages=bindparam("b_messages"),
        last_active_at=bindparam("b_last_active_at"),
        instance=bindparam("b_instance"),
        held_until=case((bindparam("b_release"), _NOW), else_=sessions.c.held_until),
    )
)
_ABANDON = delete(messages).where(_AT_PENDING, exists().where(_AT_EPOCH))
_SHIFT_PENDING = update(messages).where(_AT_PENDING).values(seq=messages.c.seq + 1)
_BUMP_EPOCH = (
    update(sessions).where(_AT_EPOCH).values(epoch=sessions.c.epoch + 1).returning(sessions.c.epoch)
)
_CLOSE_LEASED = (
    update(sessions)
    .where(_AT_EPOCH)
    .values(
        state=case((sessions.c.state == "open", "closed"), else_=sessions.c.state),
        closed_at=func.coalesce(sessions.c.closed_at, bindparam("b_at")),
        epoch=sessions.c.epoch + 1,
        held_until=_NOW,
    )
    .returning(*_SESSION.selected_columns, sessions.c.epoch)
)
_ORPHANED = (
    select(sessions.c.id)
    .where(
        sessions.c.state == "open",
        or_(sessions.c.held_until.is_(None), sessions.c.held_until <= _NOW),
        exists().where(messages.c.session_id == sessions.c.id, messages.c.status == PENDING),
    )
    .limit(bindparam("b_limit"))
)

_LEASES = LeaseSql.with_clock(now="now()", until="now() + make_interval(secs => :ttl)")
_ACQUIRE_LEASE = text(_LEASES.acquire)
_RELEASE_LEASE = text(_LEASES.release)
_GET_LEASE = text(_LEASES.get)


def _unique_statement_name() -> str:
    return f"__oc_{uuid.uuid4().hex}__"


def _connect_args(driver: str, transaction_pooling: bool) -> dict[str, Any]:
    """asyncpg's connection arguments. Behind a pooler in transaction mode (PgBouncer before
    1.21 keeps no prepared statements across transactions, and hands each transaction any
    server connection): no statement cache (asyncpg's nor SQLAlchemy's), and every
    statement prepared under a fresh name, so that a name prepared on one server
    connection never collides with one already there from another client."""
    if driver != "asyncpg":
        return {}
    args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT}
    if transaction_pooling:
        args |= {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": _unique_statement_name,
        }
    return args


_CLAIM_SESSIONS = (
    "SELECT * FROM orchestrator_claim_sessions("
    "$1::varchar[], $2::varchar[], $3::float8[], $4::float8[], $5::bool[], $6::bool[], "
    "$7::json[], $8::varchar[], $9::varchar[], $10::float8[])"
)
_RECORD_MESSAGES = (
    "SELECT * FROM orchestrator_record_messages("
    "$1::varchar[], $2::varchar[], $3::int8[], $4::int4[], $5::varchar[], $6::varchar[], "
    "$7::json[], $8::float8[], $9::float8[], $10::varchar[], $11::bool[])"
)
_NOT_CLAIMED = frozenset({"missing", "busy", "refused"})


def _json(value: Any) -> str:
    """A value for a ``json`` parameter (asyncpg takes JSON as text): JSON ``null`` for
    None, as SQLAlchemy's JSON type stores it."""
    return orjson.dumps(value).decode()


def _session_of(text_: str) -> SessionRecord:
    """A session from the function's ``row_to_json`` of its row."""
    row = orjson.loads(text_)
    return _ROWS.session([row[name] for name in SESSION_COLUMNS])


def _message_of(text_: str) -> MessageRecord:
    """A history entry from the function's ``row_to_json`` of its row."""
    row = orjson.loads(text_)
    return _ROWS.message([row[name] for name in MESSAGE_COLUMNS])


def _moved_on(holder: str, epoch: int, m: MessageRecord, release: bool) -> dict[str, Any]:
    """The parameters of ``_MOVE_ON``: the session moves on to entry ``m``, under the lease."""
    return {
        "b_id": m.session_id, "b_holder": holder, "b_epoch": epoch, "b_messages": m.seq,
        "b_last_active_at": m.created_at, "b_instance": m.instance, "b_release": release,
    }  # fmt: skip


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
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return StorageUnavailableError(f"lost the database connection: {exc!s:.300}")
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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the calls' pool does to a connection given back, after asyncpg has rolled back
    any transaction left open: nothing. Its default sends four statements (unlock advisory
    locks, close cursors, unlisten, reset settings) on every release, a round trip per
    batch; the calls set none of these."""


class PostgresStore:
    """Sessions and histories in a PostgreSQL database; see the module docstring.
    ``on_commit`` hears of every group-committed call: ``(seconds, items)`` (metrics)."""

    ENGINE = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        transaction_pooling: bool = False,
        on_commit: Callable[[float, int], None] | None = None,
    ) -> None:
        self._on_commit = on_commit
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise ValueError(f"PostgresStore needs a PostgreSQL URL, not {url!r}")
        self.url = url
        self._engine = create_async_engine(
            parsed,
            echo=echo,
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            connect_args=_connect_args(parsed.get_driver_name(), transaction_pooling),
        )
        # The send's two calls go straight to asyncpg (no per-statement SQLAlchemy work on
        # the hot path), from a pool of their own; behind a transaction-mode pooler with no
        # statement cache, as above.
        self._dsn = parsed.set(drivername="postgresql", query={}).render_as_string(
            hide_password=False
        )
        self._statement_cache = 0 if transaction_pooling else CALL_STATEMENT_CACHE
        self._calls: asyncpg.Pool | None = None
        self._claims: Batches[tuple[Any, ...], tuple[Any, ...]] = Batches(
            functools.partial(self._call_batched, _CLAIM_SESSIONS), lanes=CALL_LANES
        )
        self._records: Batches[tuple[Any, ...], tuple[Any, ...]] = Batches(
            functools.partial(self._call_batched, _RECORD_MESSAGES), lanes=CALL_LANES
        )
        self._background: set[asyncio.Task[None]] = set()
        self._health = StoreHealth(self._probe, storage_error)
        self.runs = PostgresRuns(self._engine, self._health.watching)
        self.callbacks = PostgresCallbacks(self._engine, self._health.watching)

    def __repr__(self) -> str:
        url = self._engine.url.render_as_string(hide_password=True)
        return f"<PostgresStore {url} [{self._health.state}]>"

    async def open(self) -> None:
        """Migrate the schema to the newest revision, one replica at a time (ConfigError
        when the database is at a revision this code does not know)."""
        async with self._engine.begin() as conn:
            await conn.run_sync(migrate_locked)
        with self._health.watching():
            self._calls = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=CALL_POOL_SIZE,
                timeout=CONNECT_TIMEOUT,
                statement_cache_size=self._statement_cache,
                reset=_keep_session,
            )

    async def aclose(self) -> None:
        """Stop recovering, then close every pooled connection."""
        await self._health.aclose()
        if self._calls is not None:
            await self._calls.close()
            self._calls = None
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
    async def _calling(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the calls' pool (each call its own transaction)."""
        if self._calls is None:
            raise RuntimeError("the store is not open")
        with self._health.watching():
            async with self._calls.acquire(timeout=CONNECT_TIMEOUT) as conn:
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
            messages.c.session_id == session_id,
            messages.c.idempotency_key == idempotency_key,
            messages.c.status == DONE,
        )
        async with self._reading() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _ROWS.message(row)

    async def history(
        self, session_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[MessageRecord]:
        """Oldest first."""
        query = (
            _MESSAGE.where(messages.c.session_id == session_id, messages.c.status == DONE)
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
        """Expire open sessions whose last activity plus TTL is in the past, except one a
        replica is serving now (its lease is live: the send decides, then it is idle)."""
        idle = (
            (sessions.c.state == "open")
            & (sessions.c.last_active_at + sessions.c.ttl < now)
            & or_(sessions.c.held_until.is_(None), sessions.c.held_until <= _NOW)
        )
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

    # -- the SessionLeaseStore (judged by the server's now()) -------------------------------

    async def claim_session(
        self,
        session_id: str,
        holder: str,
        ttl: float,
        *,
        check: Callable[[SessionRecord | None], SessionRecord],
        message: MessageRecord | None,
        sendable_at: float | None = None,
    ) -> Claim | None:
        """Take the lease and claim the next position, in one transaction shared with the
        concurrent claims (``orchestrator_claim_sessions``, group commit; see
        :class:`~.session_leases.SessionLeaseStore`)."""
        m = message
        args = (
            session_id, holder, float(ttl), sendable_at or 0.0, sendable_at is not None,
            m is not None, None if m is None else _json(m.data),
            None if m is None else m.request_id, None if m is None else m.idempotency_key,
            0.0 if m is None else m.created_at,
        )  # fmt: skip
        future = self._claims.submit(args)
        try:
            with self._health.watching():
                status, epoch, session, entry = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._forget_claim)  # a claim nobody will use
            raise
        record = None if session is None else _session_of(session)
        if status in _NOT_CLAIMED:
            check(record)  # raises for an unknown, closed or expired session
            return None  # leased to another replica: try again
        assert record is not None  # claimed: the row is there
        record = check(record)
        found = None if entry is None else _message_of(entry)
        if status == "orphan":
            return Claim(record, epoch, orphan=found)
        if status == "earlier":
            return Claim(record, epoch, earlier=found)
        return Claim(record, epoch, pending=found)

    def _forget_claim(self, future: asyncio.Future[tuple[Any, ...]]) -> None:
        """A claim whose caller was cancelled while it was in flight: give back what it
        took (its position, if it claimed one, and the lease) rather than leave them to
        expire and be settled as if the message had been sent."""
        if future.cancelled() or future.exception() is not None:
            return
        status, epoch, session, entry = future.result()
        if status in _NOT_CLAIMED:
            return
        row = orjson.loads(session)
        session_id, holder = row["id"], row["holder"]
        seq = orjson.loads(entry)["seq"] if status == "pending" else None

        async def give_back() -> None:
            with contextlib.suppress(Exception):  # best effort: the lease expires anyway
                if seq is None:
                    await self.release_session_lease(session_id, holder, epoch)
                else:
                    await self.abandon_message(session_id, holder, epoch, seq, release=True)

        task = asyncio.get_running_loop().create_task(give_back())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _call_batched(
        self, sql: str, batch: Sequence[tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """One call of a batched function (``orchestrator_claim_sessions`` or
        ``orchestrator_record_messages``): the batch's arguments as one array each, the
        rows (after their 1-based index) back in the batch's order."""
        columns = [list(column) for column in zip(*batch, strict=True)]
        started = time.perf_counter()
        async with self._calling() as conn:
            rows = await conn.fetch(sql, *columns)
        if self._on_commit is not None:
            self._on_commit(time.perf_counter() - started, len(batch))
        by_index = {row[0]: tuple(row[1:]) for row in rows}
        return [by_index[i] for i in range(1, len(batch) + 1)]

    async def renew_session_lease(
        self, session_id: str, holder: str, epoch: int, ttl: float
    ) -> bool:
        """Extend the lease if still ours at ``epoch``."""
        params = {"b_id": session_id, "b_holder": holder, "b_epoch": epoch, "b_ttl": float(ttl)}
        async with self._writing() as conn:
            result = await conn.execute(_RENEW_LEASE, params)
        return bool(result.rowcount)

    async def release_session_lease(self, session_id: str, holder: str, epoch: int) -> None:
        """Let the lease go now, if still ours at ``epoch``."""
        params = {"b_id": session_id, "b_holder": holder, "b_epoch": epoch}
        async with self._writing() as conn:
            await conn.execute(_RELEASE_SESSION, params)

    async def record_message(
        self,
        record: SessionRecord,
        holder: str,
        epoch: int,
        message: MessageRecord,
        *,
        release: bool,
    ) -> SessionRecord:
        """The pending position becomes ``message``; the session moves on to it, under the
        lease, in one transaction shared with the concurrent records
        (``orchestrator_record_messages``, group commit)."""
        m = message
        args = (
            m.session_id, holder, epoch, m.seq, m.kind, m.instance, _json(m.reply),
            m.latency_ms, m.created_at, m.request_id, release,
        )  # fmt: skip
        with self._health.watching():
            (recorded,) = await asyncio.shield(self._records.submit(args))
        if not recorded:
            raise lease_lost(record.id, epoch)
        return replace(appended(record, (message,)), messages=message.seq)

    async def abandon_message(
        self, session_id: str, holder: str, epoch: int, seq: int, *, release: bool
    ) -> None:
        """Drop the pending position (its message did not run), if the lease is ours."""
        lease = {"b_id": session_id, "b_holder": holder, "b_epoch": epoch}
        async with self._writing() as conn:
            await conn.execute(_ABANDON, {**lease, "b_seq": seq})
            if release:
                await conn.execute(_RELEASE_SESSION, lease)

    async def bump_epoch(self, session_id: str, holder: str, epoch: int) -> int:
        """The fence moved on under our lease: the new epoch."""
        params = {"b_id": session_id, "b_holder": holder, "b_epoch": epoch}
        async with self._writing() as conn:
            row = (await conn.execute(_BUMP_EPOCH, params)).first()
        if row is None:
            raise lease_lost(session_id, epoch)
        return int(row[0])

    async def record_migration(
        self, record: SessionRecord, holder: str, epoch: int, note: MessageRecord
    ) -> SessionRecord:
        """The move's note at ``note.seq``, a pending message there moved one on."""
        updated = appended(record, (note,))
        note_values = dict(zip(MESSAGE_COLUMNS, _ROWS.message_row(note), strict=True))
        async with self._writing() as conn:
            moved = await conn.execute(_MOVE_ON, _moved_on(holder, epoch, note, False))
            if moved.rowcount != 1:
                raise lease_lost(record.id, epoch)
            await conn.execute(_SHIFT_PENDING, {"b_id": record.id, "b_seq": note.seq})
            await conn.execute(insert(messages).values(**note_values))
        return replace(updated, messages=note.seq)

    async def close_leased(
        self, session_id: str, holder: str, epoch: int, closed_at: float
    ) -> tuple[SessionRecord, int]:
        """Closed, the epoch bumped and the lease released, if the lease is ours."""
        params = {"b_id": session_id, "b_holder": holder, "b_epoch": epoch, "b_at": closed_at}
        async with self._writing() as conn:
            row = (await conn.execute(_CLOSE_LEASED, params)).first()
        if row is None:
            raise lease_lost(session_id, epoch)
        return _ROWS.session(row[:-1]), int(row[-1])

    async def orphaned_sessions(self, limit: int) -> list[str]:
        """Open sessions with a pending position and no live lease."""
        async with self._reading() as conn:
            rows = (await conn.execute(_ORPHANED, {"b_limit": limit})).all()
        return [r[0] for r in rows]

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

    # -- for the shared state that keeps its own SQL (idempotency keys, retry budget) -------

    @property
    def engine(self) -> AsyncEngine:
        """The store's pool, so that the replicas' shared idempotency keys and retry budget
        (:mod:`.idempotency_sql`, :mod:`.budget_sql`) use its connections and settings."""
        return self._engine
