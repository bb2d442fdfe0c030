"""Durable runs in PostgreSQL: :class:`PostgresRuns`, the :class:`~.runs.RunStore` of
:class:`~.postgres.PostgresStore`, on ``orchestrator_runs`` and ``orchestrator_run_events``
(:mod:`.tables`), in SQLAlchemy Core on the store's pool.

Every method is one transaction with nothing kept on the connection after it (no advisory
locks, no temporary tables), so it works through PgBouncer in transaction mode. Leases are
judged by the server's ``now()`` in epoch seconds. A claim is one statement, ``UPDATE … WHERE
id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING …``: a run another replica is claiming at
that moment is skipped, never taken twice. An event's number is computed under the run's
row lock (``FOR NO KEY UPDATE``), taken first in the same transaction: one statement's
snapshot alone would let two writers compute the same ``max + 1``.

Driver failures go through the store's health (``watching``, its one translation into
``StorageUnavailableError`` / ``StorageFullError``), as the store's own methods do.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import (
    Float,
    Row,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ...domain.runs import TERMINAL, EventType, RunEvent, RunRecord
from ...errors import ConflictError, NotFoundError
from .runs import MAX_EVENTS_PAGE, MAX_RUNS_PAGE, UPDATABLE, RunPage, RunQuery
from .tables import run_events, runs

__all__ = ["PostgresRuns"]

Watching = Callable[[], contextlib.AbstractContextManager[None]]
"""The store's health watch (:meth:`~.health.StoreHealth.watching`): raises driver failures
as the store's errors, after recording them."""

_C = runs.c
_E = run_events.c
_RUN = select(*runs.c)
_NOW = cast(func.extract("epoch", func.now()), DOUBLE_PRECISION)
_TTL = bindparam("b_ttl", type_=Float)  # typed: bound untyped, 0.5 s would be sent as 0
_AT = bindparam("b_at", type_=Float)
_OPEN = _C.state.not_in(sorted(TERMINAL))
_FREE = or_(_C.holder.is_(None), _C.held_until <= _NOW)
_FENCED = (_C.holder == bindparam("b_holder")) & (_C.epoch == bindparam("b_epoch")) & _OPEN
_NEWEST = (_C.created_at.desc(), _C.id.desc())

_CLAIMABLE = (
    select(_C.id)
    .where(_C.state.in_(("queued", "running")), _FREE)
    .order_by(_C.created_at, _C.id)
    .limit(bindparam("b_limit"))
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    update(runs)
    .where(_C.id.in_(_CLAIMABLE))
    .values(holder=bindparam("b_holder"), held_until=_NOW + _TTL, epoch=_C.epoch + 1)
    .returning(*runs.c)
)
_RELEASE = (
    update(runs).where(_C.id == bindparam("b_id"), _FENCED).values(holder=null(), held_until=_NOW)
)
_AT_ONCE = (_C.state == "queued") & _FREE
"""A cancel that needs no holder to act on it: queued, and nobody holds it."""
_CANCEL = (
    update(runs)
    .where(_C.id == bindparam("b_id"), _OPEN)
    .values(
        state=case((_AT_ONCE, literal("cancelled")), else_=_C.state),
        finished_at=case((_AT_ONCE, _AT), else_=_C.finished_at),
        holder=case((_AT_ONCE, null()), else_=_C.holder),
        held_until=case((_AT_ONCE, null()), else_=_C.held_until),
        cancel_requested=true(),
        updated_at=_AT,
    )
    .returning(*runs.c)
)
_LOCK_RUN = select(_C.id).where(_C.id == bindparam("b_id")).with_for_update(key_share=True)
_NEXT_SEQ = (
    select(func.coalesce(func.max(_E.seq), 0) + 1)
    .where(_E.run_id == bindparam("b_id"))
    .scalar_subquery()
)
_ADD_EVENT = (
    insert(run_events)
    .values(
        run_id=bindparam("b_id"),
        seq=_NEXT_SEQ,
        type=bindparam("b_type"),
        data=bindparam("b_data", type_=run_events.c.data.type),
        at=_AT,
    )
    .returning(_E.seq)
)
_EVENTS = (
    select(_E.run_id, _E.seq, _E.type, _E.data, _E.at)
    .where(_E.run_id == bindparam("b_id"), _E.seq > bindparam("b_after"))
    .order_by(_E.seq)
    .limit(bindparam("b_limit"))
)
_PURGEABLE = (
    select(_C.id)
    .where(_C.finished_at < bindparam("b_before", type_=Float), _C.state.in_(sorted(TERMINAL)))
    .limit(bindparam("b_limit"))
    .with_for_update(skip_locked=True)
)
_PURGE = delete(runs).where(_C.id.in_(_PURGEABLE))  # events go by ON DELETE CASCADE


def _record(row: Row[Any]) -> RunRecord:
    """A run from a row of all of ``runs``' columns (named as the record's fields)."""
    return RunRecord(**row._mapping)


def _values(run: RunRecord) -> dict[str, Any]:
    return {f.name: getattr(run, f.name) for f in fields(run)}


def _changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The columns an update writes: ``changes`` checked against :data:`UPDATABLE`, and the
    lease let go with a change to a finished state."""
    for key in changes:
        if key not in UPDATABLE:
            raise ValueError(f"a run's {key!r} cannot be updated by its holder")
    values = dict(changes)
    if values.get("state") in TERMINAL:
        values |= {"holder": None, "held_until": None}
    return values


def _before(query: RunQuery) -> Sequence[Any]:
    """The listing's conditions: its filters, and strictly older than its cursor."""
    where: list[Any] = []
    if query.state is not None:
        where.append(_C.state == query.state)
    if query.kind is not None:
        where.append(_C.kind == query.kind)
    if query.before is not None:
        created_at, run_id = query.before
        where.append(tuple_(_C.created_at, _C.id) < tuple_(float(created_at), run_id))
    return where


@dataclass(frozen=True, slots=True)
class PostgresRuns:
    """The runs' statements on ``engine`` (the store's pool), failures through ``watching``
    (the store's health)."""

    engine: AsyncEngine
    watching: Watching

    def __repr__(self) -> str:
        return f"<PostgresRuns {self.engine.url.render_as_string(hide_password=True)}>"

    @contextlib.asynccontextmanager
    async def _connection(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A connection (in a transaction when ``write``) whose driver failures are raised
        as the store's errors."""
        with self.watching():
            async with self.engine.begin() if write else self.engine.connect() as conn:
                yield conn

    async def create_run(self, run: RunRecord) -> RunRecord:
        """Insert, or the run that already has this idempotency key; a taken id is a
        ``ConflictError`` (see :meth:`~.runs.RunStore.create_run`)."""
        add = pg_insert(runs).values(_values(run)).on_conflict_do_nothing().returning(*runs.c)
        async with self._connection(write=True) as conn:
            row = (await conn.execute(add)).first()
            if row is None and run.idempotency_key is not None:
                # a conflict waited for the other writer's commit, so this statement sees it
                row = (
                    await conn.execute(_RUN.where(_C.idempotency_key == run.idempotency_key))
                ).first()
        if row is None:
            raise ConflictError(f"run {run.id!r} already exists", field="id")
        return _record(row)

    async def get_run(self, run_id: str) -> RunRecord | None:
        async with self._connection(write=False) as conn:
            row = (await conn.execute(_RUN.where(_C.id == run_id))).first()
        return None if row is None else _record(row)

    async def list_runs(self, query: RunQuery) -> RunPage:
        """Newest first, one more than the page fetched to tell whether there are more."""
        limit = max(1, min(query.limit, MAX_RUNS_PAGE))
        statement = _RUN.where(*_before(query)).order_by(*_NEWEST).limit(limit + 1)
        async with self._connection(write=False) as conn:
            rows = (await conn.execute(statement)).all()
        return RunPage([_record(r) for r in rows[:limit]], more=len(rows) > limit)

    async def claim_runs(self, holder: str, ttl: float, limit: int) -> list[RunRecord]:
        """One statement; rows other claimers hold locked are skipped (module docstring)."""
        if limit <= 0:
            return []
        params = {"b_holder": holder, "b_ttl": float(ttl), "b_limit": limit}
        async with self._connection(write=True) as conn:
            rows = (await conn.execute(_CLAIM, params)).all()
        return sorted((_record(r) for r in rows), key=lambda r: (r.created_at, r.id))

    async def renew_runs(self, holder: str, held: Mapping[str, int], ttl: float) -> set[str]:
        if not held:
            return set()
        renew = (
            update(runs)
            .where(
                tuple_(_C.id, _C.epoch).in_(list(held.items())),
                _C.holder == holder,
                _OPEN,
            )
            .values(held_until=_NOW + _TTL)
            .returning(_C.id)
        )
        async with self._connection(write=True) as conn:
            rows = (await conn.execute(renew, {"b_ttl": float(ttl)})).all()
        return {r[0] for r in rows}

    async def update_run(
        self, run_id: str, holder: str, epoch: int, changes: Mapping[str, Any]
    ) -> RunRecord | None:
        # no changes: a no-op write (epoch to itself) that still answers whether it is held
        values = _changes(changes) or {"epoch": _C.epoch}
        statement = update(runs).where(_C.id == bindparam("b_id"), _FENCED).values(values)
        params = {"b_id": run_id, "b_holder": holder, "b_epoch": epoch}
        async with self._connection(write=True) as conn:
            row = (await conn.execute(statement.returning(*runs.c), params)).first()
        return None if row is None else _record(row)

    async def release_run(self, run_id: str, holder: str, epoch: int) -> bool:
        """Nobody holds it after, and its lease ended now: claimable at once."""
        params = {"b_id": run_id, "b_holder": holder, "b_epoch": epoch}
        async with self._connection(write=True) as conn:
            return bool((await conn.execute(_RELEASE, params)).rowcount)

    async def request_cancel(self, run_id: str, at: float) -> RunRecord | None:
        """One update decides, on the row as locked, between at once and asked; a finished
        or unknown run is read instead."""
        params = {"b_id": run_id, "b_at": float(at)}
        async with self._connection(write=True) as conn:
            row = (await conn.execute(_CANCEL, params)).first()
            if row is None:
                row = (await conn.execute(_RUN.where(_C.id == run_id))).first()
        return None if row is None else _record(row)

    async def add_event(self, run_id: str, type: EventType, data: dict[str, Any], at: float) -> int:
        """Under the run's row lock, numbered one above its last; an unknown run is a
        ``NotFoundError``."""
        params = {"b_id": run_id, "b_type": type, "b_data": data, "b_at": float(at)}
        try:
            async with self._connection(write=True) as conn:
                if (await conn.execute(_LOCK_RUN, params)).first() is None:
                    raise _unknown(run_id)
                return int((await conn.execute(_ADD_EVENT, params)).scalar_one())
        except IntegrityError as exc:  # the run went between the lock and the insert
            raise _unknown(run_id) from exc

    async def events(self, run_id: str, after: int, limit: int) -> list[RunEvent]:
        params = {"b_id": run_id, "b_after": after, "b_limit": max(0, min(limit, MAX_EVENTS_PAGE))}
        async with self._connection(write=False) as conn:
            rows = (await conn.execute(_EVENTS, params)).all()
        return [RunEvent(*r) for r in rows]

    async def purge_runs(self, finished_before: float, limit: int) -> int:
        """Finished runs only; rows another purger holds are skipped."""
        if limit <= 0:
            return 0
        params = {"b_before": float(finished_before), "b_limit": limit}
        async with self._connection(write=True) as conn:
            return int((await conn.execute(_PURGE, params)).rowcount)


def _unknown(run_id: str) -> NotFoundError:
    return NotFoundError(f"run {run_id!r} not found", details={"run_id": run_id})
