"""``SqliteCallbacks``: the callbacks' store (:class:`~.callbacks.CallbackStore`) in a
:class:`~.sqlite.SqliteStore`: every write one job on the store's writer thread (so each
method is one transaction and a claim's select-and-update needs no further locking),
reads on its reader. Leases are judged by this process's clock, as the runs' are.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any

from ...domain.callbacks import CallbackAttempt, CallbackRecord, CallbackState
from ...domain.runs import TERMINAL
from ...errors import NotFoundError
from .callbacks import (
    ADD,
    ANSWER,
    ATTEMPTS,
    BEGIN,
    CALLBACK_COLUMNS,
    END,
    GET,
    START,
    answer_params,
    as_attempt,
    as_record,
    end_params,
)
from .tables import run_callbacks, runs

if TYPE_CHECKING:
    from .sqlite import SqliteStore

__all__ = ["SqliteCallbacks"]

_CB = run_callbacks.name
_FINISHED = ", ".join(f"'{state}'" for state in sorted(TERMINAL))
_RUN_EXISTS = f"SELECT 1 FROM {runs.name} WHERE id = ?"  # noqa: S608  # constants
# CROSS JOIN: SQLite then keeps the written order, the due callbacks (their partial index)
# first and each one's run by its key. With a plain JOIN, and no statistics, the planner
# chose to walk every finished run (the index on state) looking for a callback: a claim grew
# with the table kept for retention (2 ms at 8,000 runs, against 15 µs), and the deliverer
# claims whenever a run finishes.
_CLAIM = (
    f"UPDATE {_CB} SET holder = :holder, held_until = :until, epoch = epoch + 1 "  # noqa: S608
    f"WHERE run_id IN (SELECT c.run_id FROM {_CB} c CROSS JOIN {runs.name} r "
    "ON r.id = c.run_id "
    f"WHERE c.state = 'pending' AND c.next_at <= :now AND r.state IN ({_FINISHED}) "
    "AND (c.holder IS NULL OR c.held_until <= :clock) ORDER BY c.next_at LIMIT :limit) "
    f"RETURNING {', '.join(CALLBACK_COLUMNS)}"
)
_ANY_DUE = f"SELECT 1 FROM {_CB} WHERE state = 'pending' AND next_at <= ? LIMIT 1"  # noqa: S608


class SqliteCallbacks:
    """The callbacks of one :class:`~.sqlite.SqliteStore` (the module docstring)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"<SqliteCallbacks {self._store.path}>"

    async def add_callback(self, record: CallbackRecord) -> CallbackRecord:
        """Insert unless the run has one; the stored one. NotFoundError for an unknown run."""
        values = {name: getattr(record, name) for name in CALLBACK_COLUMNS}

        def write(conn: sqlite3.Connection) -> tuple[Any, ...]:
            if conn.execute(_RUN_EXISTS, (record.run_id,)).fetchone() is None:
                raise NotFoundError(f"run {record.run_id!r} not found", field="run_id")
            conn.execute(ADD, values)
            return tuple(conn.execute(GET, {"id": record.run_id}).fetchone())

        return as_record(await self._store._write(write))

    async def get_callback(self, run_id: str) -> CallbackRecord | None:
        row = self._store._read_one(GET, {"id": run_id})
        return None if row is None else as_record(row)

    async def attempts(self, run_id: str) -> list[CallbackAttempt]:
        return [as_attempt(r) for r in await self._store._read_many(ATTEMPTS, {"id": run_id})]

    async def claim_callbacks(
        self, holder: str, ttl: float, now: float, limit: int
    ) -> list[CallbackRecord]:
        """Take up to ``limit`` due callbacks at ``epoch + 1``, soonest due first."""
        if limit < 1:
            return []
        if self._store._read_one(_ANY_DUE, (now,)) is None:
            # Nothing due: no write transaction (a hop to the writer thread and back, each
            # time a run finishes). A callback committed after this read is claimed at the
            # deliverer's next wake or poll, as after a claim made a moment earlier.
            return []
        clock = time.time()
        params = {"holder": holder, "until": clock + ttl, "now": now, "clock": clock}
        params["limit"] = limit
        rows = await self._store._write(lambda conn: conn.execute(_CLAIM, params).fetchall())
        return sorted((as_record(r) for r in rows), key=lambda r: (r.next_at, r.run_id))

    async def begin_attempt(self, run_id: str, holder: str, epoch: int, at: float) -> int | None:
        """The attempt's number once recorded, or None when the lease moved on."""
        params: dict[str, Any] = {"id": run_id, "holder": holder, "epoch": epoch, "at": at}

        def write(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(BEGIN, params).fetchone()
            if row is None:
                return None
            conn.execute(START, {"id": run_id, "n": row[0], "at": at})
            return int(row[0])

        result: int | None = await self._store._write(write)
        return result

    async def end_attempt(
        self,
        run_id: str,
        holder: str,
        epoch: int,
        *,
        attempt: CallbackAttempt | None,
        state: CallbackState,
        next_at: float,
        at: float,
    ) -> bool:
        """The attempt's answer, then the fenced move (see the protocol)."""
        params = end_params(run_id, holder, epoch, state, next_at, at)

        def write(conn: sqlite3.Connection) -> bool:
            if attempt is not None:
                conn.execute(ANSWER, answer_params(attempt))
            return conn.execute(END, params).rowcount > 0

        ended: bool = await self._store._write(write)
        return ended
