"""``SqliteRuns``: the runs' store (:class:`~.runs.RunStore`) in a :class:`~.sqlite.SqliteStore`.

Every write is one job on the store's writer thread, so each method's statements are one
transaction and no two writes interleave: a claim's select-and-update, or an event's
``max(seq) + 1``, needs no further locking. ``get_run`` is a primary-key lookup, inline on
the store's reader; listings go to its reader threads. All three translate storage failures
into the store's own errors (:func:`~.sqlite.storage_error`).

Leases are judged by this process's clock (``time.time()``), as the store's own leases are:
one process serves the file. JSON columns are text, written by orjson.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ...domain.runs import TERMINAL, EventType, RunEvent, RunRecord
from ...errors import ConflictError, NotFoundError
from .runs import MAX_EVENTS_PAGE, MAX_RUNS_PAGE, UPDATABLE, RunPage, RunQuery
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

_GET = f"SELECT {_COLS} FROM {_R} WHERE id = ?"  # noqa: S608  # constants
_EXISTS = f"SELECT 1 FROM {_R} WHERE id = ?"  # noqa: S608
_BY_KEY = f"SELECT {_COLS} FROM {_R} WHERE idempotency_key = ?"  # noqa: S608
_INSERT = (
    f"INSERT INTO {_R} ({_COLS}) VALUES ({', '.join('?' * len(RUN_COLUMNS))}) "  # noqa: S608
    f"RETURNING {_COLS}"
)
_CLAIM = (
    f"UPDATE {_R} SET holder = :holder, held_until = :until, epoch = epoch + 1 "  # noqa: S608
    f"WHERE id IN (SELECT id FROM {_R} WHERE state IN ('queued', 'running') "
    "AND (holder IS NULL OR held_until <= :now) ORDER BY created_at, id LIMIT :limit) "
    f"RETURNING {_COLS}"
)
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
_NEXT_SEQ = f"SELECT coalesce(max(seq), 0) + 1 FROM {_E} WHERE run_id = ?"  # noqa: S608
_INSERT_EVENT = f"INSERT INTO {_E} (run_id, seq, type, data, at) VALUES (?, ?, ?, ?, ?)"  # noqa: S608
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


def _column(name: str, value: Any) -> Any:
    """``value`` as the column ``name`` stores it."""
    if name in _JSON:
        return None if value is None else _dumps(value)
    return int(value) if name in _BOOL else value


def _row(run: RunRecord) -> tuple[Any, ...]:
    """``run`` in :data:`RUN_COLUMNS` order."""
    return tuple(_column(name, getattr(run, name)) for name in RUN_COLUMNS)


def _record(row: Sequence[Any]) -> RunRecord:
    """The record of a row selected as :data:`RUN_COLUMNS`."""
    values: dict[str, Any] = dict(zip(RUN_COLUMNS, row, strict=True))
    for name in _JSON:
        values[name] = _loads(values[name])
    for name in _BOOL:
        values[name] = bool(values[name])
    return RunRecord(**values)


def _update(changes: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The fenced UPDATE … RETURNING that applies ``changes``, and its parameters; a move
    to a finished state drops the lease in the same statement."""
    unknown = sorted(set(changes) - UPDATABLE)
    if unknown:
        raise ValueError(f"update_run cannot change {', '.join(unknown)}")
    sets = [f"{name} = :set_{name}" for name in changes] or ["epoch = epoch"]  # none: a check
    if changes.get("state") in TERMINAL:
        sets += ["holder = NULL", "held_until = NULL"]
    sql = (
        f"UPDATE {_R} SET {', '.join(sets)} "  # noqa: S608  # names checked against UPDATABLE
        f"WHERE id = :id AND holder = :holder AND epoch = :epoch AND {_LIVE} "
        f"RETURNING {_COLS}"
    )
    return sql, {f"set_{name}": _column(name, value) for name, value in changes.items()}


def _renew(n: int) -> str:
    """One fenced UPDATE of ``n`` (id, epoch) pairs, returning the ids renewed."""
    values = ", ".join(["(?, ?)"] * n)
    return (
        f"UPDATE {_R} SET held_until = ? FROM (VALUES {values}) AS v "  # noqa: S608
        f"WHERE {_R}.id = v.column1 AND {_R}.epoch = v.column2 AND holder = ? "
        f"AND {_LIVE} RETURNING {_R}.id"
    )


class SqliteRuns:
    """The runs of one :class:`~.sqlite.SqliteStore` (the module docstring)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"<SqliteRuns {self._store.path}>"

    async def create_run(self, run: RunRecord) -> RunRecord:
        """Insert; the earlier run with the same idempotency key instead, or ConflictError
        for a taken id (the key's lookup and the insert are one transaction)."""
        values = _row(run)

        def write(conn: sqlite3.Connection) -> tuple[Any, ...]:
            if run.idempotency_key is not None:
                earlier = conn.execute(_BY_KEY, (run.idempotency_key,)).fetchone()
                if earlier is not None:
                    return tuple(earlier)
            try:
                return tuple(conn.execute(_INSERT, values).fetchone())
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"run {run.id!r} already exists", field="id") from exc

        return _record(await self._store._write(write))

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
        if limit < 1:
            return []
        now = time.time()
        params = {"holder": holder, "until": now + ttl, "now": now, "limit": limit}
        rows = await self._store._write(lambda conn: conn.execute(_CLAIM, params).fetchall())
        return sorted((_record(r) for r in rows), key=lambda r: (r.created_at, r.id))

    async def renew_runs(self, holder: str, held: Mapping[str, int], ttl: float) -> set[str]:
        """Extend the leases still ``holder``'s at the given epochs; the ids renewed."""
        pairs = list(held.items())
        if not pairs:
            return set()
        until = time.time() + ttl

        def write(conn: sqlite3.Connection) -> set[str]:
            renewed: set[str] = set()
            for i in range(0, len(pairs), RENEW_CHUNK):
                chunk = pairs[i : i + RENEW_CHUNK]
                params = [until, *(v for pair in chunk for v in pair), holder]
                renewed.update(r[0] for r in conn.execute(_renew(len(chunk)), params))
            return renewed

        result: set[str] = await self._store._write(write)
        return result

    async def update_run(
        self, run_id: str, holder: str, epoch: int, changes: Mapping[str, Any]
    ) -> RunRecord | None:
        """Apply ``changes`` if ``holder`` holds the unfinished run at ``epoch``; the run
        after, or None (ValueError, naming it, for a field outside UPDATABLE)."""
        sql, params = _update(changes)
        params |= {"id": run_id, "holder": holder, "epoch": epoch}
        row = await self._store._write(lambda conn: conn.execute(sql, params).fetchone())
        return None if row is None else _record(row)

    async def release_run(self, run_id: str, holder: str, epoch: int) -> bool:
        """Drop the lease now, if still ``holder``'s at ``epoch``; whether it was."""
        params = {"id": run_id, "holder": holder, "epoch": epoch, "now": time.time()}
        released: int = await self._store._write(
            lambda conn: conn.execute(_RELEASE, params).rowcount
        )
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

        row = await self._store._write(write)
        return None if row is None else _record(row)

    async def add_event(self, run_id: str, type: EventType, data: dict[str, Any], at: float) -> int:
        """Append an event numbered one past the run's last (the writer thread serializes
        the read and the insert); NotFoundError for an unknown run."""
        encoded = _dumps(data)

        def write(conn: sqlite3.Connection) -> int:
            if conn.execute(_EXISTS, (run_id,)).fetchone() is None:
                raise NotFoundError(f"run {run_id!r} not found")
            seq: int = conn.execute(_NEXT_SEQ, (run_id,)).fetchone()[0]
            conn.execute(_INSERT_EVENT, (run_id, seq, type, encoded, at))
            return seq

        result: int = await self._store._write(write)
        return result

    async def events(self, run_id: str, after: int, limit: int) -> list[RunEvent]:
        """Events numbered above ``after``, in order, at most ``limit`` (clamped)."""
        limit = max(0, min(limit, MAX_EVENTS_PAGE))
        rows = await self._store._read_many(_EVENTS, (run_id, after, limit))
        return [RunEvent(r[0], r[1], r[2], _loads(r[3]), r[4]) for r in rows]

    async def purge_runs(self, finished_before: float, limit: int) -> int:
        """Delete up to ``limit`` runs finished before ``finished_before``, oldest first,
        with their events; how many went."""
        deleted: int = await self._store._write(
            lambda conn: conn.execute(_PURGE, (finished_before, max(0, limit))).rowcount
        )
        return deleted
