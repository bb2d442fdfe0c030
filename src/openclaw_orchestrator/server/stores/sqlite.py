"""``SqliteStore``: the SQLite store, on the standard library's ``sqlite3``, one writer thread.

WAL and ``synchronous=FULL``: a commit is on disk before it is acknowledged, so an
acknowledged send survives ``kill -9`` and power loss alike. No SQLAlchemy async layer or
per-statement thread hand-offs, which were most of the CPU of a session send:

- **Writes** go to ONE dedicated thread that owns the only writing connection. Appends from
  any number of sessions are queued; the thread takes everything queued, writes it in one
  transaction (one multi-row INSERT, one multi-row UPDATE, one fsync) and only
  then resolves the callers' futures, with one hand-off back to the event loop per batch.
  While a batch commits, the next one gathers (group commit). A batch that hits a constraint
  is rolled back and its appends retried one transaction each, so only the offender gets the
  ``ConflictError``. Other writes (create, close, expire, purge) are single transactions on
  the same thread, in submission order.
- **Point reads** (``get_session``, ``find_by_key``: one primary-key / unique-index lookup)
  run inline on the event loop on a reader connection: in WAL mode a reader never waits for
  the writer, and a lookup costs a few microseconds, far less than a thread hand-off. They
  see every acknowledged write (the future is resolved after the commit).
- **Bulk reads** (``history``, ``list_sessions``) can return many rows, so they run on a
  small pool of reader threads, each with its own connection.

A file only: the writer, the reader and the reader threads each open it (``:memory:`` would
give each its own empty database). The tables are :mod:`.tables`', brought to the newest
revision by the :mod:`.migrations` at open (through SQLAlchemy's stdlib ``sqlite3``
dialect), the rows :mod:`.rows`'.

**One process per file.** The writer thread's group commit and the inline reads are correct
because this process is the only writer; a second orchestrator on the same file would break
that. So :class:`SqliteFileLock` takes ``<db>.lock`` (``flock``, exclusive, non-blocking) for
the store's lifetime, and another process opening the file gets a ``ConfigError`` saying to
use PostgreSQL for replicas. The OS drops the lock with its process: ``kill -9`` leaves none.

**When the disk fills or the file becomes unusable**, :func:`storage_error` turns the
``sqlite3``/``OSError`` failure into ``StorageFullError`` (507) or
``StorageUnavailableError`` (503), in one place, and the store's :class:`~.health.StoreHealth`
refuses sends until a probe write succeeds again. :meth:`SqliteStore.check_writable` also
reads the free space of the database's filesystem (cached for a second) and reports
*full* below ``min_free_bytes``, so the first send after the disk fills is refused before
it is delivered.

**Leases** (:mod:`.leases`) are judged by this process's clock (``time.time()``): a SQLite
file serves one process, so there is no other clock to agree with. ``expires_at`` is stored
as UTC text in SQLAlchemy's SQLite ``DateTime`` format, fixed-width, so it compares in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import create_engine, make_url

from ...domain.sessions import MessageRecord, SessionRecord
from ...errors import SessionExistsError, StorageFullError, StorageUnavailableError
from ...settings import ConfigError
from .base import DEFAULT_SESSION_QUERY, SessionQuery, append_conflict, appended
from .callbacks_sqlite import SqliteCallbacks
from .health import DEFAULT_MIN_FREE_BYTES, FULL_ERRNOS, DiskSpace, StoreHealth, StoreStatus
from .leases import Lease, LeaseSql, check_lease, lease_of
from .migrations import migrate
from .rows import JSON_AS_TEXT, MESSAGE_COLUMNS, SESSION_COLUMNS, select_sessions
from .runs_sqlite import SqliteRuns
from .tables import PROBE_ROW, TOUCH_PROBE, messages, sessions

__all__ = ["SqliteFileLock", "SqliteStore", "sqlite_path", "sqlite_url", "storage_error"]

READER_THREADS = 2
SQLITE_BUSY_TIMEOUT_MS = 10_000

_S = sessions.name
_M = messages.name
_SESSION_COLS = ", ".join(SESSION_COLUMNS)
_MESSAGE_COLS = ", ".join(MESSAGE_COLUMNS)
_ROWS = JSON_AS_TEXT
_SESSION_VALUES = f"({', '.join('?' * len(SESSION_COLUMNS))})"
_MESSAGE_VALUES = f"({', '.join('?' * len(MESSAGE_COLUMNS))})"
_GET_SESSION = f"SELECT {_SESSION_COLS} FROM {_S} WHERE id = ?"  # noqa: S608  # constants
_FIND_BY_KEY = f"SELECT {_MESSAGE_COLS} FROM {_M} WHERE session_id = ? AND idempotency_key = ?"  # noqa: S608
_INSERT_SESSION = f"INSERT INTO {_S} ({_SESSION_COLS}) VALUES {_SESSION_VALUES}"  # noqa: S608
_LEASES = LeaseSql.with_clock(now=":now", until=":until")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DateTime: text, sorts as time
CHUNK_ROWS = 500  # 10 parameters a row: well under SQLite's 32,766 per statement

# sqlite3 primary result codes (https://sqlite.org/rescode.html): the disk is full, or the
# file cannot be used now (I/O error, cannot open, locked past busy_timeout, read-only).
SQLITE_FULL = 13
_SQLITE_UNUSABLE = frozenset({5, 6, 8, 10, 14, 15})  # BUSY LOCKED READONLY IOERR CANTOPEN PROTOCOL
_SQLITE_IOERR = 10


def storage_error(exc: BaseException, space: DiskSpace) -> StorageUnavailableError | None:
    """What ``exc`` means for the store: disk full, file unusable, or None (a conflict, a
    bug: not a storage failure). The one translation of ``sqlite3`` and OS errors here; an
    I/O error while the disk is short of space counts as full."""
    if isinstance(exc, StorageUnavailableError):
        return exc
    if isinstance(exc, OSError):
        if exc.errno in FULL_ERRNOS:
            return StorageFullError(f"disk full: {exc.strerror} ({space.path})")
        return StorageUnavailableError(f"cannot use the database file: {exc}")
    if not isinstance(exc, sqlite3.Error) or isinstance(exc, sqlite3.IntegrityError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    low = (free := space.free_bytes(fresh=True)) is not None and free < space.min_free_bytes
    if primary == SQLITE_FULL or (primary == _SQLITE_IOERR and low):
        return StorageFullError(f"disk full: {exc} ({space.path})")
    if primary in _SQLITE_UNUSABLE:
        return StorageUnavailableError(f"cannot use the database file: {exc}")
    return None


def _chunks(rows: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    return [rows[i : i + CHUNK_ROWS] for i in range(0, len(rows), CHUNK_ROWS)]


@functools.lru_cache(maxsize=64)
def _insert_messages(n: int) -> str:
    """One INSERT of ``n`` history rows."""
    values = ", ".join([_MESSAGE_VALUES] * n)
    return f"INSERT INTO {_M} ({_MESSAGE_COLS}) VALUES {values}"  # noqa: S608  # placeholders


@functools.lru_cache(maxsize=64)
def _update_sessions(n: int) -> str:
    """One UPDATE of ``n`` sessions (distinct ids): (messages, last_active_at, instance, id)."""
    values = ", ".join(["(?, ?, ?, ?)"] * n)
    return (
        f"UPDATE {_S} SET messages = v.column1, last_active_at = v.column2, "  # noqa: S608
        f"instance = v.column3 FROM (VALUES {values}) AS v WHERE {_S}.id = v.column4"
    )


def _sqlite_time(seconds: float) -> str:
    """Seconds since the epoch as the text ``expires_at`` holds (UTC)."""
    return datetime.fromtimestamp(seconds, UTC).strftime(_TIME_FORMAT)


def _seconds(stored: str) -> float:
    """The text ``expires_at`` holds, as seconds since the epoch."""
    return datetime.strptime(stored, _TIME_FORMAT).replace(tzinfo=UTC).timestamp()


def sqlite_url(data_dir: Path) -> str:
    """The default database: ``<data_dir>/orchestrator.db``."""
    return f"sqlite:///{data_dir / 'orchestrator.db'}"


def sqlite_path(url: str) -> str | None:
    """The database file of a SQLite URL; None for another database or ``:memory:``."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return None if parsed.database == ":memory:" else parsed.database


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "PRAGMA foreign_keys=ON",
    ):
        conn.execute(pragma)
    return conn


def _try_flock(fd: int, mode: int) -> bool:
    """Take ``flock(mode)`` on ``fd`` without waiting; False when another holder prevents it."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class SqliteFileLock:
    """``<db>.lock``, held exclusively by the one process that uses the database. ``flock``:
    the OS drops it when the process ends however it ends (``kill -9`` leaves no stale lock),
    and its descriptor is not inherited by child processes (PEP 446). The rule is one
    *process* per file, so the stores of one process share the lock (a test reopening the
    file while its first store is open): counted in :data:`_HELD`, released by the last."""

    _HELD: ClassVar[dict[str, tuple[int, int]]] = {}  # lock path -> (descriptor, holders)
    _GUARD: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, database: str) -> None:
        self.path = os.path.realpath(f"{database}.lock")
        self._holding = False

    def __repr__(self) -> str:
        return f"<SqliteFileLock {self.path} [{'held' if self.is_held else 'not held'}]>"

    def __enter__(self) -> SqliteFileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def is_held(self) -> bool:
        """Whether this object holds the lock."""
        return self._holding

    def acquire(self) -> None:
        """Take the lock now, or ConfigError: another process is using the database."""
        with self._GUARD:
            if self._holding:
                return
            fd, holders = self._HELD.get(self.path, (-1, 0))
            if not holders:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                if not _try_flock(fd, fcntl.LOCK_EX):
                    os.close(fd)
                    raise self._taken()
            self._HELD[self.path] = (fd, holders + 1)
            self._holding = True

    def release(self) -> None:
        """Let another process have the database once no store of this one uses it (closing
        the descriptor drops the lock)."""
        with self._GUARD:
            if not self._holding:
                return
            self._holding = False
            fd, holders = self._HELD.pop(self.path)
            if holders > 1:
                self._HELD[self.path] = (fd, holders - 1)
            else:
                os.close(fd)

    def check_free(self) -> None:
        """The ConfigError :meth:`acquire` would raise, found without taking the lock (a
        shared probe, dropped at once; no file created): to refuse before anything starts."""
        if self.path in self._HELD:
            return  # this process has it
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            if not _try_flock(fd, fcntl.LOCK_SH):
                raise self._taken()
        finally:
            os.close(fd)

    def _taken(self) -> ConfigError:
        database = self.path.removesuffix(".lock")
        return ConfigError(
            f"{database}: another orchestrator process is using this SQLite database (it holds "
            f"{self.path}); a SQLite store is for one process: stop the other one, or use "
            "PostgreSQL (database_url) for several replicas"
        )


@dataclass(slots=True)
class _Append:
    """One queued ``append``: its rows, and the future its caller awaits."""

    record: SessionRecord
    rows: list[tuple[Any, ...]]
    update: tuple[Any, ...]
    done: asyncio.Future[Any]


@dataclass(slots=True)
class _Job:
    """Any other write: ``run(conn)`` inside one transaction; its result to ``done``."""

    run: Callable[[sqlite3.Connection], Any]
    done: asyncio.Future[Any]


_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    """On the event loop: resolve the futures of one committed round."""
    for fut, result, exc in outcomes:
        if fut.done():  # its caller was cancelled; the write stands
            continue
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)
            fut.exception()  # retrieved here: a caller who gave up logs nothing


class _Writer:
    """The writer thread: owns the writing connection, commits queued work in rounds."""

    def __init__(self, path: str, on_commit: Callable[[float, int], None] | None = None) -> None:
        self._path = path
        self._on_commit = on_commit  # (seconds, items) of each transaction, from this thread
        self._cond = threading.Condition()
        self._pending: list[_Append | _Job] = []
        self._closing = False
        self.transactions = 0  # committed or rolled back; for tests and repr
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, op: _Append | _Job) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("the store is closed")
            self._pending.append(op)
            if len(self._pending) == 1:
                self._cond.notify()

    def stop(self) -> None:
        """Finish what is queued, then end the thread (blocking: call from a thread)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        conn = _connect(self._path)
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._cond.wait()
                    if not self._pending:
                        return
                    ops, self._pending = self._pending, []
                outcomes: list[_Outcome] = []
                try:
                    self._round(conn, ops, outcomes)
                except Exception as exc:  # never leave a caller waiting forever
                    settled = {id(o[0]) for o in outcomes}
                    outcomes.extend(
                        (op.done, None, exc) for op in ops if id(op.done) not in settled
                    )
                by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
                for outcome in outcomes:
                    by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
                for loop, theirs in by_loop.items():
                    try:
                        loop.call_soon_threadsafe(_settle, theirs)
                    except RuntimeError:  # that loop is closed: nobody is waiting
                        pass
        finally:
            conn.close()

    def _round(
        self, conn: sqlite3.Connection, ops: list[_Append | _Job], outcomes: list[_Outcome]
    ) -> None:
        """Consecutive appends as one batch; any other write alone, in submission order."""
        batch: list[_Append] = []
        for op in ops:
            if isinstance(op, _Append):
                batch.append(op)
                continue
            if batch:
                self._appends(conn, batch, outcomes)
                batch = []
            self._job(conn, op, outcomes)
        if batch:
            self._appends(conn, batch, outcomes)

    def _transaction(
        self, conn: sqlite3.Connection, body: Callable[[], Any], items: int = 1
    ) -> Any:
        self.transactions += 1
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            conn.execute("COMMIT")  # WAL + synchronous=FULL: on disk when this returns
            if self._on_commit is not None:
                self._on_commit(time.perf_counter() - started, items)
        except BaseException:
            # A failed COMMIT (disk full, I/O error) may have rolled back already; one that
            # did not must not leave the connection inside a transaction for good.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return result

    def _appends(
        self, conn: sqlite3.Connection, batch: list[_Append], outcomes: list[_Outcome]
    ) -> None:
        def write(items: list[_Append]) -> None:
            # A constant number of statements per batch, not one step per row: each step
            # gives up the GIL and this thread must win it back from a busy event loop
            # (up to the 5 ms switch interval each time), so per-row steps made big
            # batches slow exactly when the server was busiest.
            rows = [row for item in items for row in item.rows]
            for chunk in _chunks(rows):
                conn.execute(_insert_messages(len(chunk)), [v for row in chunk for v in row])
            latest = {item.update[3]: item.update for item in items}  # the last one wins
            for chunk in _chunks(list(latest.values())):
                conn.execute(_update_sessions(len(chunk)), [v for row in chunk for v in row])

        try:
            self._transaction(conn, lambda: write(batch), len(batch))
        except sqlite3.IntegrityError as exc:
            if len(batch) > 1:  # one of them conflicts: find which, alone
                for item in batch:
                    self._appends(conn, [item], outcomes)
                return
            item = batch[0]
            conflict = append_conflict(item.record)
            conflict.__cause__ = exc
            outcomes.append((item.done, None, conflict))
            return
        except Exception as exc:
            outcomes.extend((item.done, None, exc) for item in batch)
            return
        outcomes.extend((item.done, None, None) for item in batch)

    def _job(self, conn: sqlite3.Connection, job: _Job, outcomes: list[_Outcome]) -> None:
        try:
            result = self._transaction(conn, lambda: job.run(conn))
        except Exception as exc:
            outcomes.append((job.done, None, exc))
        else:
            outcomes.append((job.done, result, None))


class SqliteStore:
    """Sessions and histories in one SQLite file; see the module docstring. ``on_commit``
    hears of every committed write transaction: ``(seconds, items)`` (metrics)."""

    ENGINE = "sqlite"

    def __init__(
        self,
        url: str,
        *,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        on_commit: Callable[[float, int], None] | None = None,
    ) -> None:
        self._on_commit = on_commit
        path = sqlite_path(url)
        if path is None:
            raise ValueError(f"SqliteStore needs a SQLite file URL, not {url!r}")
        self.url = url
        self.path = path
        self._lock = SqliteFileLock(path)
        self._lock.check_free()  # refused before anything starts (serve: one line, exit 2)
        self._space = DiskSpace(str(Path(path).parent), min_free_bytes=min_free_bytes)
        self._health = StoreHealth(self._probe, functools.partial(storage_error, space=self._space))
        self._writer: _Writer | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_conns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self.runs = SqliteRuns(self)  # the durable runs, on the same file and writer
        self.callbacks = SqliteCallbacks(self)  # the runs' callbacks, likewise

    def __repr__(self) -> str:
        queued = 0 if self._writer is None else self._writer.queued
        return f"<SqliteStore {self.path} [{queued} appends queued, {self._health.state}]>"

    @property
    def transactions(self) -> int:
        """Write transactions so far (a batch of appends is one)."""
        return 0 if self._writer is None else self._writer.transactions

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the folder, take the file's lock (ConfigError if another process has it),
        bring the schema to the newest revision, start the writer thread."""
        await asyncio.to_thread(self._prepare)
        self._reader = _connect(self.path)
        self._pool = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="sqlite-reader")
        self._writer = _Writer(self.path, self._on_commit)
        self._writer.start()

    def _prepare(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            _connect(self.path).close()  # WAL is a property of the file: set it first
            engine = create_engine(f"sqlite:///{self.path}")
            try:
                with engine.begin() as conn:
                    migrate(conn)
            finally:
                engine.dispose()
        except BaseException:
            self._lock.release()
            raise

    async def aclose(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        await self._health.aclose()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.stop)
            self._writer = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for conn in self._pool_conns:
            conn.close()
        self._pool_conns.clear()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._lock.release()

    # -- health ----------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Refuse (507/503 with ``retry_after``) while the store is full or unusable, or
        the disk has less than ``min_free_bytes`` free (read at most once a second)."""
        self._health.check()
        try:
            self._space.check()
        except StorageFullError as exc:
            raise self._health.record_failure(exc) from None

    def status(self) -> StoreStatus:
        """ok, or full/unavailable and why; notices a full disk without any traffic."""
        with contextlib.suppress(StorageUnavailableError):
            self.check_writable()
        return self._health.status()

    async def _probe(self) -> None:
        """Can it write again? Enough free space, then one real committed write."""
        self._space.check(fresh=True)
        await self._write(
            lambda conn: conn.execute(TOUCH_PROBE, {"id": PROBE_ROW, "at": time.time()}) and None
        )

    # -- plumbing --------------------------------------------------------------------------

    def _submit(self, op: _Append | _Job) -> None:
        if self._writer is None:
            raise RuntimeError("the store is not open")
        self._writer.submit(op)

    async def _write(self, run: Callable[[sqlite3.Connection], Any]) -> Any:
        job = _Job(run, asyncio.get_running_loop().create_future())
        self._submit(job)
        with self._health.watching():
            return await asyncio.shield(job.done)  # a cancelled caller does not cancel it

    def _read_one(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any]
    ) -> tuple[Any, ...] | None:
        if self._reader is None:
            raise RuntimeError("the store is not open")
        with self._read_lock, self._health.watching():
            row: tuple[Any, ...] | None = self._reader.execute(sql, params).fetchone()
        return row

    def _pool_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
            self._pool_conns.append(conn)
        return conn

    async def _read_many(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        if self._pool is None:
            raise RuntimeError("the store is not open")

        def run() -> list[tuple[Any, ...]]:
            return self._pool_conn().execute(sql, params).fetchall()

        with self._health.watching():
            return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    # -- the Store -------------------------------------------------------------------------

    async def create_session(self, record: SessionRecord) -> None:
        """Insert; SessionExistsError when the id is taken."""
        values = _ROWS.session_row(record)
        try:
            await self._write(lambda conn: conn.execute(_INSERT_SESSION, values) and None)
        except sqlite3.IntegrityError as exc:
            raise SessionExistsError(
                f"session {record.id!r} already exists", field="session_id"
            ) from exc

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None (inline: one primary-key lookup)."""
        row = self._read_one(_GET_SESSION, (session_id,))
        return None if row is None else _ROWS.session(row)

    async def list_sessions(
        self, query: SessionQuery = DEFAULT_SESSION_QUERY
    ) -> list[SessionRecord]:
        """Filtered, most recently active first (on a reader thread)."""
        sql, params = select_sessions(query)
        return [_ROWS.session(r) for r in await self._read_many(sql, params)]

    async def append(self, record: SessionRecord, *entries: MessageRecord) -> SessionRecord:
        """Insert the entries and update the session, in one transaction shared with the
        concurrent appends (group commit); returns once committed."""
        updated = appended(record, entries)
        item = _Append(
            record,
            [_ROWS.message_row(e) for e in entries],
            (updated.messages, updated.last_active_at, updated.instance, updated.id),
            asyncio.get_running_loop().create_future(),
        )
        self._submit(item)
        with self._health.watching():
            await asyncio.shield(item.done)  # a cancelled caller does not cancel the batch
        return updated

    async def find_by_key(self, session_id: str, idempotency_key: str) -> MessageRecord | None:
        """The earlier message with this key, if any (inline: one unique-index lookup)."""
        row = self._read_one(_FIND_BY_KEY, (session_id, idempotency_key))
        return None if row is None else _ROWS.message(row)

    async def history(
        self, session_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[MessageRecord]:
        """Oldest first."""
        sql = (
            f"SELECT {_MESSAGE_COLS} FROM {_M} "  # noqa: S608
            "WHERE session_id = ? AND status = 'done' ORDER BY seq LIMIT ? OFFSET ?"
        )
        rows = await self._read_many(sql, (session_id, -1 if limit is None else limit, offset))
        return [_ROWS.message(r) for r in rows]

    async def set_state(
        self, session_id: str, state: str, *, closed_at: float
    ) -> SessionRecord | None:
        """Close or expire; an already closed session keeps its first closing time."""

        def run(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            conn.execute(
                f"UPDATE {_S} SET state = ?, closed_at = ? WHERE id = ? AND state = 'open'",  # noqa: S608
                (state, closed_at, session_id),
            )
            row: tuple[Any, ...] | None = conn.execute(_GET_SESSION, (session_id,)).fetchone()
            return row

        row = await self._write(run)
        return None if row is None else _ROWS.session(row)

    async def expire_idle(self, now: float) -> list[SessionRecord]:
        """Expire open sessions whose last activity plus TTL is in the past."""

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows = conn.execute(
                f"SELECT {_SESSION_COLS} FROM {_S} "  # noqa: S608
                "WHERE state = 'open' AND last_active_at + ttl < ?",
                (now,),
            ).fetchall()
            conn.executemany(
                f"UPDATE {_S} SET state = 'expired', closed_at = ? "  # noqa: S608
                "WHERE id = ? AND state = 'open'",
                [(now, r[0]) for r in rows],
            )
            return rows

        return [_ROWS.session(r) for r in await self._write(run)]

    async def purge(self, closed_before: float) -> int:
        """Delete old closed/expired sessions and their histories."""

        def run(conn: sqlite3.Connection) -> int:
            ids = [
                (r[0],)
                for r in conn.execute(
                    f"SELECT id FROM {_S} WHERE state != 'open' AND closed_at < ?",  # noqa: S608
                    (closed_before,),
                )
            ]
            conn.executemany(f"DELETE FROM {_M} WHERE session_id = ?", ids)  # noqa: S608
            conn.executemany(f"DELETE FROM {_S} WHERE id = ?", ids)  # noqa: S608
            return len(ids)

        result: int = await self._write(run)
        return result

    # -- the LeaseStore (judged by this process's clock) -----------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Take, take over or renew ``name`` for ``ttl`` seconds; None while another
        holder's lease is live (see :class:`~.leases.LeaseStore`)."""
        check_lease(name, holder, ttl)
        now = time.time()
        params = {
            "name": name, "holder": holder,
            "now": _sqlite_time(now), "until": _sqlite_time(now + ttl),
        }  # fmt: skip
        row = await self._write(lambda conn: conn.execute(_LEASES.acquire, params).fetchone())
        return None if row is None else lease_of(row, _seconds)

    async def release_lease(self, name: str, holder: str, epoch: int) -> bool:
        """Expire ``name`` now if ``holder`` still holds it at ``epoch``."""
        check_lease(name, holder)
        params = {"name": name, "holder": holder, "epoch": epoch, "now": _sqlite_time(time.time())}
        released: int = await self._write(
            lambda conn: conn.execute(_LEASES.release, params).rowcount
        )
        return released > 0

    async def get_lease(self, name: str) -> Lease | None:
        """The live lease on ``name``, or None (inline: one primary-key lookup)."""
        check_lease(name)
        row = self._read_one(_LEASES.get, {"name": name, "now": _sqlite_time(time.time())})
        return None if row is None else lease_of(row, _seconds)
