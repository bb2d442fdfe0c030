"""``SqliteRuns``: the runs' store (:class:`~.runs.RunStore`) in a :class:`~.sqlite.SqliteStore`.

Every write runs on the store's writer thread, so no two writes interleave: a claim's
select-and-update, or an event's ``max(seq) + 1``, needs no further locking. Concurrent writes
are committed together (group commit, :class:`~.group_commit.Batches`): a run is three writes
(submit with its first event, claim with the start and its event, finish with the last
events), and a transaction of its own each made the writer's ``fsync`` the limit of the
submit rate. A claim starts its runs in one UPDATE and one INSERT of their events, and a
write's events are one INSERT (:func:`_append_all`), not a statement each.
A write fails alone: each one's changes are its last statement (SQLite undoes a failed
statement only, the transaction goes on), and if a whole batch fails its writes are retried
one transaction each, so only the offender gets the error. ``get_run`` is a primary-key lookup,
inline on the store's reader; listings go to its reader threads. All three translate storage
failures into the store's own errors (:func:`~.sqlite.storage_error`).

Leases are judged by this process's clock (``time.time()``), as the store's own leases are:
one process serves the file. JSON columns are text, written by orjson.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ...domain.runs import TERMINAL, EventType, RunEvent, RunRecord
from ...errors import ConflictError, NotFoundError, OrchestratorError
from .group_commit import Batches
from .runs import (
    MAX_EVENTS_PAGE,
    MAX_RUNS_PAGE,
    UPDATABLE,
    NewEvent,
    RunPage,
    RunQuery,
    running_event,
)
from .tables import run_events, runs

if TYPE_CHECKING:
    from .sqlite import SqliteStore

__all__ = ["RUN_COLUMNS", "SqliteRuns"]

RUN_COLUMNS = (
    "id", "kind", "state", "request", "created_at", "updated_at", "deadline_at", "started_at",
    "finished_at", "attempts", "delivered", "idempotency_key", "instance", "result", "error",
    "cancel_requested", "holder", "held_until", "epoch", "callback",
)  # fmt: skip
"""The columns of ``orchestrator_runs``, in :class:`RunRecord`'s field order (same names)."""

_JSON = frozenset({"request", "result", "error", "callback"})
_BOOL = frozenset({"delivered", "cancel_requested"})
_R = runs.name
_E = run_events.name
_COLS = ", ".join(RUN_COLUMNS)
_FINISHED = ", ".join(f"'{state}'" for state in sorted(TERMINAL))
_LIVE = f"state NOT IN ({_FINISHED})"
RENEW_CHUNK = 400  # 2 parameters a run: well under SQLite's 32,766 per statement
EVENT_CHUNK = 400  # 5 parameters an event
START_CHUNK = 500  # 1 parameter a run

_GET = f"SELECT {_COLS} FROM {_R} WHERE id = ?"  # noqa: S608  # constants
_BY_KEY = f"SELECT {_COLS} FROM {_R} WHERE idempotency_key = ?"  # noqa: S608
_INSERT = f"INSERT INTO {_R} ({_COLS}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"  # noqa: S608
_CLAIM = (
    f"UPDATE {_R} SET holder = :holder, held_until = :until, epoch = epoch + 1 "  # noqa: S608
    f"WHERE id IN (SELECT id FROM {_R} WHERE state IN ('queued', 'running') "
    "AND (holder IS NULL OR held_until <= :now) ORDER BY created_at, id LIMIT :limit) "
    f"RETURNING {_COLS}"
)
_CLAIM_QUEUED = _CLAIM.replace("state IN ('queued', 'running')", "state = 'queued'")
"""The claim when no running run's lease can have run out: only the queued runs are
looked at (the index on state and creation time), not every running one."""
_NEXT_EXPIRY = f"SELECT min(held_until) FROM {_R} WHERE state = 'running'"  # noqa: S608
_RELEASE = (
    f"UPDATE {_R} SET holder = NULL, held_until = :now "  # noqa: S608
    f"WHERE id = :id AND holder = :holder AND epoch = :epoch AND {_LIVE}"
)
_CANCEL_AT_ONCE = (
    f"UPDATE {_R} SET state = 'cancelled', finished_at = :at, updated_at = :at, "  # noqa: S608
    "cancel_requested = 1, holder = NULL, held_until = NULL "
    "WHERE id = :id AND state = 'queued' AND (holder IS NULL OR held_until <= :now)"
)
_CANCEL_ASKED = (
    f"UPDATE {_R} SET cancel_requested = 1, updated_at = :at "  # noqa: S608
    f"WHERE id = :id AND {_LIVE}"
)
# One statement: numbered one past the run's last; an unknown run fails its foreign key.
# (:func:`_events_sql` adds several without reading their numbers back.)
_ADD_EVENT = (
    f"INSERT INTO {_E} (run_id, seq, type, data, at) "  # noqa: S608
    f"SELECT :id, coalesce(max(seq), 0) + 1, :type, :data, :at FROM {_E} WHERE run_id = :id "
    "RETURNING seq"
)
_EVENTS = (
    f"SELECT run_id, seq, type, data, at FROM {_E} "  # noqa: S608
    "WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
# Events go with their run by ON DELETE CASCADE: every connection of the store turns
# foreign keys on (``sqlite._connect``).
_PURGE = (
    f"DELETE FROM {_R} WHERE id IN (SELECT id FROM {_R} "  # noqa: S608
    f"WHERE finished_at < ? AND state IN ({_FINISHED}) ORDER BY finished_at LIMIT ?)"
)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(value: Any) -> Any:
    # The JSON columns have NUMERIC affinity in SQLite: the text of a bare number comes back
    # as that number (as it does for the sessions' JSON columns, ``rows._loads``).
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _json(value: Any) -> str | None:
    """A JSON column's text (None stays NULL)."""
    return None if value is None else _dumps(value)


def _column(name: str, value: Any) -> Any:
    """``value`` as the column ``name`` stores it."""
    if name in _JSON:
        return _json(value)
    return int(value) if name in _BOOL else value


# _row and _record name each column rather than loop over RUN_COLUMNS: a run is turned into
# a row once and back into a record twice or three times on its way, and the loops (a dict,
# a call and two set lookups a column) cost twice the rest (tests/stores check the order).
def _row(run: RunRecord) -> tuple[Any, ...]:
    """``run`` in :data:`RUN_COLUMNS` order."""
    return (
        run.id, run.kind, run.state, _dumps(run.request), run.created_at, run.updated_at,
        run.deadline_at, run.started_at, run.finished_at, run.attempts, int(run.delivered),
        run.idempotency_key, run.instance, _json(run.result), _json(run.error),
        int(run.cancel_requested), run.holder, run.held_until, run.epoch, _json(run.callback),
    )  # fmt: skip


def _record(row: Sequence[Any]) -> RunRecord:
    """The record of a row selected as :data:`RUN_COLUMNS`."""
    (
        id_, kind, state, request, created_at, updated_at, deadline_at, started_at,
        finished_at, attempts, delivered, idempotency_key, instance, result, error,
        cancel_requested, holder, held_until, epoch, callback,
    ) = row  # fmt: skip
    return RunRecord(
        id=id_, kind=kind, state=state, request=_loads(request), created_at=created_at,
        updated_at=updated_at, deadline_at=deadline_at, started_at=started_at,
        finished_at=finished_at, attempts=attempts, delivered=bool(delivered),
        idempotency_key=idempotency_key, instance=instance, result=_loads(result),
        error=_loads(error), cancel_requested=bool(cancel_requested), holder=holder,
        held_until=held_until, epoch=epoch, callback=_loads(callback),
    )  # fmt: skip


def _update(changes: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The fenced UPDATE … RETURNING that applies ``changes``, and its parameters; a move
    to a finished state drops the lease in the same statement."""
    unknown = sorted(set(changes) - UPDATABLE)
    if unknown:
        raise ValueError(f"update_run cannot change {', '.join(unknown)}")
    sql = _update_sql(tuple(changes), changes.get("state") in TERMINAL)
    return sql, {f"set_{name}": _column(name, value) for name, value in changes.items()}


@functools.cache
def _update_sql(names: tuple[str, ...], finishing: bool) -> str:
    """The statement of :func:`_update` (a run's start and finish: two texts, built once)."""
    sets = [f"{name} = :set_{name}" for name in names] or ["epoch = epoch"]  # none: a check
    if finishing:
        sets += ["holder = NULL", "held_until = NULL"]
    return (
        f"UPDATE {_R} SET {', '.join(sets)} "  # noqa: S608  # names checked against UPDATABLE
        f"WHERE id = :id AND holder = :holder AND epoch = :epoch AND {_LIVE} "
        f"RETURNING {_COLS}"
    )


def _append(conn: sqlite3.Connection, run_id: str, event: NewEvent) -> int:
    """Add ``event`` to the run; its number (NotFoundError for an unknown run)."""
    type_, data, at = event
    params = {"id": run_id, "type": type_, "data": _dumps(data), "at": at}
    try:
        seq: int = conn.execute(_ADD_EVENT, params).fetchone()[0]
    except sqlite3.IntegrityError as exc:  # the foreign key: no such run
        raise NotFoundError(f"run {run_id!r} not found") from exc
    return seq


@functools.lru_cache(maxsize=64)
def _events_sql(n: int) -> str:
    """One INSERT of ``n`` events given as (run id, k, type, data, at): each numbered k past
    its run's last before the statement (k = 1, 2, ... among the run's events here)."""
    values = ", ".join(["(?, ?, ?, ?, ?)"] * n)
    return (
        f"INSERT INTO {_E} (run_id, seq, type, data, at) "  # noqa: S608  # placeholders
        f"SELECT v.column1, coalesce((SELECT max(seq) FROM {_E} WHERE run_id = v.column1), 0) "
        f"+ v.column2, v.column3, v.column4, v.column5 FROM (VALUES {values}) AS v"
    )


def _append_all(conn: sqlite3.Connection, events: Sequence[tuple[str, NewEvent]]) -> None:
    """Add each (run id, event), in order, numbered as :func:`_append` would, in one
    statement a chunk rather than one each: the runs' events are most of the writer's
    statements. The SELECT is read whole before a row goes in (SQL's rule for an INSERT
    reading its own table), hence k; a later chunk sees the earlier ones' rows."""
    rows: list[Any] = []
    counts: dict[str, int] = {}
    for run_id, (type_, data, at) in events:
        if len(rows) >= 5 * EVENT_CHUNK:
            conn.execute(_events_sql(len(rows) // 5), rows)
            rows, counts = [], {}
        k = counts[run_id] = counts.get(run_id, 0) + 1
        rows += (run_id, k, type_, _dumps(data), at)
    if rows:
        conn.execute(_events_sql(len(rows) // 5), rows)


_AT = {name: i for i, name in enumerate(RUN_COLUMNS)}


@functools.lru_cache(maxsize=64)
def _start_sql(n: int) -> str:
    """The start of ``n`` claimed runs (:func:`_start`): (at, at, id, id, ...)."""
    return (
        f"UPDATE {_R} SET state = 'running', delivered = 1, attempts = attempts + 1, "  # noqa: S608
        f"started_at = coalesce(started_at, ?), updated_at = ? WHERE id IN ({', '.join('?' * n)}) "
        f"RETURNING {_COLS}"
    )


def _is_ready(row: Sequence[Any], at: float) -> bool:
    """Whether a claimed run can start at once: queued, no cancel asked, before its
    deadline (else its holder decides: :func:`~openclaw_orchestrator.domain.runs.recovery`,
    a cancel, a timeout)."""
    return (
        row[_AT["state"]] == "queued"
        and not row[_AT["cancel_requested"]]
        and row[_AT["deadline_at"]] > at
    )


def _start(conn: sqlite3.Connection, rows: Sequence[Any], at: float) -> list[Any]:
    """Start the claimed ``rows`` (:meth:`~.runs.RunStore.start_runs`), each with its
    ``running`` event; the rows after. Two statements a chunk, whatever its size."""
    started: list[Any] = []
    ids = [row[_AT["id"]] for row in rows]
    for i in range(0, len(ids), START_CHUNK):
        chunk = ids[i : i + START_CHUNK]
        after = conn.execute(_start_sql(len(chunk)), (at, at, *chunk)).fetchall()
        events = [(r[_AT["id"]], running_event(r[_AT["attempts"]], at)) for r in after]
        _append_all(conn, events)
        started += after
    return started


def _oldest_first(rows: Sequence[Any]) -> list[RunRecord]:
    return sorted((_record(r) for r in rows), key=lambda r: (r.created_at, r.id))


def _renew(n: int) -> str:
    """One fenced UPDATE of ``n`` (id, epoch) pairs, returning the ids renewed and whether
    their cancel was asked."""
    values = ", ".join(["(?, ?)"] * n)
    return (
        f"UPDATE {_R} SET held_until = ? FROM (VALUES {values}) AS v "  # noqa: S608
        f"WHERE {_R}.id = v.column1 AND {_R}.epoch = v.column2 AND holder = ? "
        f"AND {_LIVE} RETURNING {_R}.id, {_R}.cancel_requested"
    )


Write = Callable[[sqlite3.Connection], Any]
"""One write's statements on the writer's connection; its result, or it raises."""
_Outcome = tuple[Any, BaseException | None]

WRITE_LANES = 2
"""Batches handed to the writer thread at once: one commits while the next waits its turn."""


def _attempt(conn: sqlite3.Connection, write: Write) -> _Outcome:
    """Run one write of a batch; its own error is its outcome, the batch goes on."""
    try:
        return write(conn), None
    except (OrchestratorError, sqlite3.IntegrityError) as exc:
        return None, exc


class SqliteRuns:
    """The runs of one :class:`~.sqlite.SqliteStore` (the module docstring)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._batches: Batches[Write, _Outcome] = Batches(self._commit, lanes=WRITE_LANES)
        self._expiry = 0.0
        """No running run's lease ends before this (store clock): till then a claim need not
        look at the running runs. Kept by this process's writes, the file's only writer."""

    async def _commit(self, writes: Sequence[Write]) -> list[_Outcome]:
        """The writes in one transaction; if it fails as a whole, each in its own."""
        try:
            outcomes: list[_Outcome] = await self._store._write(
                lambda conn: [_attempt(conn, write) for write in writes]
            )
            return outcomes
        except Exception:
            if len(writes) == 1:
                raise
        alone = await asyncio.gather(
            *(self._store._write(w) for w in writes), return_exceptions=True
        )
        return [(None, r) if isinstance(r, BaseException) else (r, None) for r in alone]

    async def _write(self, write: Write) -> Any:
        """``write`` committed with the other writes of its batch; its result."""
        result, error = await asyncio.shield(self._batches.submit(write))
        if error is not None:
            raise error
        return result

    def __repr__(self) -> str:
        return f"<SqliteRuns {self._store.path}>"

    async def create_run(self, run: RunRecord, *, event: NewEvent | None = None) -> RunRecord:
        """Insert; the earlier run with the same idempotency key instead, or ConflictError
        for a taken id (the key's lookup and the insert are one transaction)."""
        values = _row(run)

        def write(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            if run.idempotency_key is not None:
                earlier = conn.execute(_BY_KEY, (run.idempotency_key,)).fetchone()
                if earlier is not None:
                    return tuple(earlier)
            try:
                conn.execute(_INSERT, values)
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"run {run.id!r} already exists", field="id") from exc
            if event is not None:
                _append_all(conn, [(run.id, event)])
            return None

        earlier = await self._write(write)
        # Stored as given (every column written, JSON columns from JSON-ready values): the
        # record itself, rather than the row read back and its JSON parsed again.
        return run if earlier is None else _record(earlier)

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or None (inline: one primary-key lookup)."""
        row = self._store._read_one(_GET, (run_id,))
        return None if row is None else _record(row)

    async def list_runs(self, query: RunQuery) -> RunPage:
        """Newest first by (created_at, id), after the ``before`` cursor; one row more than
        the page is read to tell whether there are more."""
        limit = max(1, min(query.limit, MAX_RUNS_PAGE))
        where: list[str] = []
        params: list[Any] = []
        if query.state is not None:
            where.append("state = ?")
            params.append(query.state)
        if query.kind is not None:
            where.append("kind = ?")
            params.append(query.kind)
        if query.before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [query.before[0], query.before[0], query.before[1]]
        sql = f"SELECT {_COLS} FROM {_R}"  # noqa: S608  # constants
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        rows = await self._store._read_many(sql, (*params, limit + 1))
        return RunPage([_record(r) for r in rows[:limit]], more=len(rows) > limit)

    async def claim_runs(self, holder: str, ttl: float, limit: int) -> list[RunRecord]:
        """Take up to ``limit`` claimable runs, oldest first, at ``epoch + 1``."""
        started, claimed = await self._claim(holder, ttl, limit, None)
        return sorted([*started, *claimed], key=lambda r: (r.created_at, r.id))

    async def start_runs(
        self, holder: str, ttl: float, limit: int, at: float
    ) -> tuple[list[RunRecord], list[RunRecord]]:
        """:meth:`claim_runs`, the runs that need no decision started in the same write."""
        return await self._claim(holder, ttl, limit, at)

    async def _claim(
        self, holder: str, ttl: float, limit: int, start_at: float | None
    ) -> tuple[list[RunRecord], list[RunRecord]]:
        """(started, claimed only), each oldest first; none started without ``start_at``."""
        if limit < 1:
            return [], []
        now = time.time()
        params = {"holder": holder, "until": now + ttl, "now": now, "limit": limit}

        def write(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            if now < self._expiry:  # with 10,000 runs running, the full claim read them all
                rows = conn.execute(_CLAIM_QUEUED, params).fetchall()
            else:
                rows = conn.execute(_CLAIM, params).fetchall()
                self._expiry = conn.execute(_NEXT_EXPIRY).fetchone()[0] or float("inf")
            self._expiry = min(self._expiry, now + ttl)
            if start_at is None:
                return [], rows
            ready = [r for r in rows if _is_ready(r, start_at)]
            return _start(conn, ready, start_at), [r for r in rows if not _is_ready(r, start_at)]

        started, claimed = await self._write(write)
        return _oldest_first(started), _oldest_first(claimed)

    async def keep_runs(self, holder: str, held: Mapping[str, int], ttl: float) -> dict[str, bool]:
        """Extend the leases still ``holder``'s at the given epochs; for each run renewed,
        whether its cancel was asked."""
        pairs = list(held.items())
        if not pairs:
            return {}
        until = time.time() + ttl

        def write(conn: sqlite3.Connection) -> dict[str, bool]:
            renewed: dict[str, bool] = {}
            for i in range(0, len(pairs), RENEW_CHUNK):
                chunk = pairs[i : i + RENEW_CHUNK]
                params = [until, *(v for pair in chunk for v in pair), holder]
                renewed.update((r[0], bool(r[1])) for r in conn.execute(_renew(len(chunk)), params))
            return renewed

        result: dict[str, bool] = await self._write(write)
        return result

    async def update_run(
        self,
        run_id: str,
        holder: str,
        epoch: int,
        changes: Mapping[str, Any],
        *,
        events: Sequence[NewEvent] = (),
    ) -> RunRecord | None:
        """Apply ``changes`` if ``holder`` holds the unfinished run at ``epoch`` (and append
        ``events`` if so); the run after, or None (ValueError, naming it, for a field outside
        UPDATABLE)."""
        sql, params = _update(changes)
        params |= {"id": run_id, "holder": holder, "epoch": epoch}

        def write(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
            if row is not None and events:
                _append_all(conn, [(run_id, event) for event in events])
            return row

        row = await self._write(write)
        return None if row is None else _record(row)

    async def release_run(self, run_id: str, holder: str, epoch: int) -> bool:
        """Drop the lease now, if still ``holder``'s at ``epoch``; whether it was."""
        params = {"id": run_id, "holder": holder, "epoch": epoch, "now": time.time()}

        def write(conn: sqlite3.Connection) -> int:
            released: int = conn.execute(_RELEASE, params).rowcount
            if released:
                self._expiry = 0.0  # claimable at once, even if running
            return released

        released: int = await self._write(write)
        return released > 0

    async def request_cancel(self, run_id: str, at: float) -> RunRecord | None:
        """Cancel a queued run nobody holds at once; otherwise mark the cancel asked (a
        finished run is left as it is). The run after, or None when unknown."""
        params = {"id": run_id, "at": at, "now": time.time()}

        def write(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            if not conn.execute(_CANCEL_AT_ONCE, params).rowcount:
                conn.execute(_CANCEL_ASKED, params)
            row: tuple[Any, ...] | None = conn.execute(_GET, (run_id,)).fetchone()
            return row

        row = await self._write(write)
        return None if row is None else _record(row)

    async def add_event(self, run_id: str, type: EventType, data: dict[str, Any], at: float) -> int:
        """Append an event numbered one past the run's last (the writer thread serializes
        the read and the insert); NotFoundError for an unknown run."""
        result: int = await self._write(lambda conn: _append(conn, run_id, (type, data, at)))
        return result

    async def events(self, run_id: str, after: int, limit: int) -> list[RunEvent]:
        """Events numbered above ``after``, in order, at most ``limit`` (clamped)."""
        limit = max(0, min(limit, MAX_EVENTS_PAGE))
        rows = await self._store._read_many(_EVENTS, (run_id, after, limit))
        return [RunEvent(r[0], r[1], r[2], _loads(r[3]), r[4]) for r in rows]

    async def purge_runs(self, finished_before: float, limit: int) -> int:
        """Delete up to ``limit`` runs finished before ``finished_before``, oldest first,
        with their events; how many went."""
        deleted: int = await self._write(
            lambda conn: conn.execute(_PURGE, (finished_before, max(0, limit))).rowcount
        )
        return deleted
