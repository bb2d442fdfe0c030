"""Run callbacks in PostgreSQL: :class:`PostgresCallbacks`, the :class:`~.callbacks.CallbackStore`
of :class:`~.postgres.PostgresStore`, on the store's pool.

Every method is one transaction with nothing kept on the connection after it (PgBouncer in
transaction mode works). Leases are judged by the server's ``now()`` in epoch seconds. A
claim is one statement, ``UPDATE … WHERE run_id IN (SELECT … FOR UPDATE OF c SKIP LOCKED)
RETURNING …``: a callback another replica is claiming at that moment is skipped, never
taken twice. Driver failures go through the store's health (``watching``), as the runs' do.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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

__all__ = ["PostgresCallbacks"]

Watching = Callable[[], contextlib.AbstractContextManager[None]]

_CB = run_callbacks.name
_FINISHED = ", ".join(f"'{state}'" for state in sorted(TERMINAL))
_NOW = "CAST(extract(epoch FROM now()) AS double precision)"
_CLAIM = text(
    f"UPDATE {_CB} SET holder = :holder, epoch = epoch + 1, "  # noqa: S608  # constants
    f"held_until = {_NOW} + CAST(:ttl AS double precision) "
    f"WHERE run_id IN (SELECT c.run_id FROM {_CB} c JOIN {runs.name} r ON r.id = c.run_id "
    "WHERE c.state = 'pending' AND c.next_at <= CAST(:now AS double precision) "
    f"AND r.state IN ({_FINISHED}) AND (c.holder IS NULL OR c.held_until <= {_NOW}) "
    "ORDER BY c.next_at LIMIT :limit FOR UPDATE OF c SKIP LOCKED) "
    f"RETURNING {', '.join(CALLBACK_COLUMNS)}"
)
_GET, _ADD, _ATTEMPTS = text(GET), text(ADD), text(ATTEMPTS)
_BEGIN, _START, _ANSWER, _END = text(BEGIN), text(START), text(ANSWER), text(END)


@dataclass(frozen=True, slots=True)
class PostgresCallbacks:
    """The callbacks' statements on ``engine`` (the store's pool), failures through
    ``watching`` (the store's health)."""

    engine: AsyncEngine
    watching: Watching

    def __repr__(self) -> str:
        return f"<PostgresCallbacks {self.engine.url.render_as_string(hide_password=True)}>"

    @contextlib.asynccontextmanager
    async def _connection(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        with self.watching():
            async with self.engine.begin() if write else self.engine.connect() as conn:
                yield conn

    async def add_callback(self, record: CallbackRecord) -> CallbackRecord:
        """Insert unless the run has one; the stored one. NotFoundError for an unknown run
        (the foreign key refuses the insert)."""
        values = {name: getattr(record, name) for name in CALLBACK_COLUMNS}
        try:
            async with self._connection(write=True) as conn:
                await conn.execute(_ADD, values)
                row = (await conn.execute(_GET, {"id": record.run_id})).one()
        except IntegrityError as exc:
            raise NotFoundError(f"run {record.run_id!r} not found", field="run_id") from exc
        return as_record(row)

    async def get_callback(self, run_id: str) -> CallbackRecord | None:
        async with self._connection(write=False) as conn:
            row = (await conn.execute(_GET, {"id": run_id})).first()
        return None if row is None else as_record(row)

    async def attempts(self, run_id: str) -> list[CallbackAttempt]:
        async with self._connection(write=False) as conn:
            rows = (await conn.execute(_ATTEMPTS, {"id": run_id})).all()
        return [as_attempt(r) for r in rows]

    async def claim_callbacks(
        self, holder: str, ttl: float, now: float, limit: int
    ) -> list[CallbackRecord]:
        """One statement; rows other claimers hold locked are skipped (module docstring)."""
        if limit < 1:
            return []
        params = {"holder": holder, "ttl": float(ttl), "now": float(now), "limit": limit}
        async with self._connection(write=True) as conn:
            rows = (await conn.execute(_CLAIM, params)).all()
        return sorted((as_record(r) for r in rows), key=lambda r: (r.next_at, r.run_id))

    async def begin_attempt(self, run_id: str, holder: str, epoch: int, at: float) -> int | None:
        """The attempt's number once recorded, or None when the lease moved on."""
        fence = {"id": run_id, "holder": holder, "epoch": epoch}
        async with self._connection(write=True) as conn:
            n = (await conn.execute(_BEGIN, fence)).scalar()
            if n is None:
                return None
            await conn.execute(_START, {"id": run_id, "n": n, "at": float(at)})
        return int(n)

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
        params: dict[str, Any] = end_params(run_id, holder, epoch, state, float(next_at), at)
        async with self._connection(write=True) as conn:
            if attempt is not None:
                await conn.execute(_ANSWER, answer_params(attempt))
            return bool((await conn.execute(_END, params)).rowcount)
