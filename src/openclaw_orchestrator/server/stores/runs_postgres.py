"""Durable runs in PostgreSQL: :class:`PostgresRuns`, the :class:`~.runs.RunStore` of
:class:`~.postgres.PostgresStore`, on ``orchestrator_runs`` and ``orchestrator_run_events``
(:mod:`.tables`), on the store's pool.

**The hot writes are batched** (:class:`~.group_commit.Batches`: whatever arrives while a
call is in flight goes in the next one): a run is a submit, three events and two updates,
and each of them alone cost a transaction, a WAL flush and SQLAlchemy's per-statement work
(about 10 ms of CPU per run in all, 130 submissions/s on two cores). ``create_run``,
``add_event`` and ``update_run`` (one batch per set of changed fields) are each one
statement over ``unnest`` of the batch's arrays, straight on the pooled asyncpg connection;
``get_run`` too. The rest stay SQLAlchemy Core statements.

Every method is one transaction with nothing kept on the connection after it (no advisory
locks, no temporary tables), so it works through PgBouncer in transaction mode. Leases are
judged by the server's ``now()`` in epoch seconds. A claim is one statement, ``UPDATE … WHERE
id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING …``: a run another replica is claiming at
that moment is skipped, never taken twice. An event's number is computed under the run's
row lock (``FOR NO KEY UPDATE``), taken first in the same transaction: one statement's
snapshot alone would let two writers compute the same ``max + 1``.

A batch of events is numbered in one statement, each run's in the batch's order above its
last; if that fails (another writer numbered one of its runs' events at the same moment, or
a run is unknown) it is rolled back and done again under the row locks of its runs, taken in
id order as every batched write takes them (no deadlock between batches).

Driver failures go through the store's health (``watching``, its one translation into
``StorageUnavailableError`` / ``StorageFullError``), as the store's own methods do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import asyncpg
import orjson
from sqlalchemy import (
    Float,
    Row,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    null,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ...domain.runs import TERMINAL, EventType, RunEvent, RunRecord
from ...errors import ConflictError, NotFoundError
from .group_commit import Batches
from .runs import MAX_EVENTS_PAGE, MAX_RUNS_PAGE, UPDATABLE, NewEvent, RunPage, RunQuery
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


# -- the batched statements, on asyncpg --------------------------------------------------

COLUMNS = tuple(f.name for f in fields(RunRecord))
"""``orchestrator_runs``' columns, named and ordered as :class:`RunRecord`'s fields."""
_JSON = frozenset({"request", "result", "error", "callback"})
_TYPES = {
    **dict.fromkeys(("created_at", "updated_at", "deadline_at", "started_at"), "float8"),
    **dict.fromkeys(("finished_at", "held_until"), "float8"),
    "attempts": "int4",
    "epoch": "int8",
    "delivered": "bool",
    "cancel_requested": "bool",
}
"""Array types of the columns that are not text (JSON goes as text, cast after unnest)."""
_RT = runs.name
_ET = run_events.name
_OUT = ", ".join(f"r.{c}::text" if c in _JSON else f"r.{c}" for c in COLUMNS)
_FINISHED = ", ".join(f"'{state}'" for state in sorted(TERMINAL))
BATCH_LANES = 1
"""Calls of one kind in flight at once. Each holds a connection of the store's pool (5, and
5 more opened and closed on demand): with two lanes each, the four kinds of batches alone
kept the pool past its size, and opening connections cost more than the larger batches."""


def _unnest(names: Sequence[str], first: int = 1) -> str:
    """``unnest($1::type[], …) AS v(names…)``."""
    arrays = ", ".join(f"${i}::{_TYPES.get(n, 'text')}[]" for i, n in enumerate(names, first))
    return f"unnest({arrays}) AS v({', '.join(names)})"


def _cast(name: str) -> str:
    return f"v.{name}::json" if name in _JSON else f"v.{name}"


def _column(name: str, value: Any) -> Any:
    """``value`` as a batch's array carries it (JSON as its text)."""
    if name in _JSON:
        return None if value is None else orjson.dumps(value).decode()
    return value


def _arrays(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] or [[] for _ in names]


def _raw_record(row: Sequence[Any]) -> RunRecord:
    """A run from a row selected as :data:`_OUT` (JSON columns as text)."""
    values = dict(zip(COLUMNS, row, strict=True))
    for name in _JSON:
        if values[name] is not None:
            values[name] = orjson.loads(values[name])
    return RunRecord(**values)


_INSERT_RUNS = (
    f"INSERT INTO {_RT} ({', '.join(COLUMNS)}) "  # noqa: S608  # constants
    f"SELECT {', '.join(_cast(c) for c in COLUMNS)} FROM {_unnest(COLUMNS)} "
    "ON CONFLICT DO NOTHING RETURNING id"
)
_BY_KEYS = f"SELECT {_OUT} FROM {_RT} r WHERE r.idempotency_key = ANY($1::text[])"  # noqa: S608
_GET_RAW = f"SELECT {_OUT} FROM {_RT} r WHERE r.id = $1"  # noqa: S608
_LOCK_RUNS = f"SELECT id FROM {_RT} WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE"  # noqa: S608
_ADD_EVENTS = (
    f"WITH v AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[]) "  # noqa: S608
    "WITH ORDINALITY AS v(run_id, type, data, at, i)), "
    f"top AS (SELECT run_id, max(seq) AS top FROM {_ET} WHERE run_id = ANY($1::text[]) "
    "GROUP BY run_id) "
    f"INSERT INTO {_ET} (run_id, seq, type, data, at) "
    "SELECT v.run_id, coalesce(top.top, 0) + row_number() OVER (PARTITION BY v.run_id "
    "ORDER BY v.i), v.type, v.data::json, v.at FROM v LEFT JOIN top USING (run_id) "
    "RETURNING run_id, seq"
)


def _update_batch(names: tuple[str, ...]) -> str:
    """The fenced UPDATE of a batch whose runs change ``names`` (a move to a finished
    state also drops the lease: ``state`` is then among the names and checked per row)."""
    sets = [f"{n} = {_cast(n)}" for n in names] or ["epoch = r.epoch"]
    if "state" in names:
        sets += [
            f"holder = CASE WHEN v.state IN ({_FINISHED}) THEN NULL ELSE r.holder END",
            f"held_until = CASE WHEN v.state IN ({_FINISHED}) THEN NULL ELSE r.held_until END",
        ]
    keys = ("b_id", "b_holder", "b_epoch", *names)
    unnest = _unnest(keys).replace("$3::text[]", "$3::int8[]", 1)
    return (
        f"UPDATE {_RT} r SET {', '.join(sets)} FROM {unnest} "  # noqa: S608  # checked names
        "WHERE r.id = v.b_id AND r.holder = v.b_holder AND r.epoch = v.b_epoch "
        f"AND r.state NOT IN ({_FINISHED}) RETURNING {_OUT}"
    )


_RENEW = (
    f"UPDATE {_RT} r SET held_until = extract(epoch FROM now())::float8 + $4::float8 "  # noqa: S608
    "FROM unnest($1::text[], $2::int8[]) AS v(id, epoch) "
    f"WHERE r.id = v.id AND r.epoch = v.epoch AND r.holder = $3 AND r.state NOT IN ({_FINISHED}) "
    "RETURNING r.id, r.cancel_requested"
)
RETRIES = 3
"""Tries of a batch that PostgreSQL aborted to break a deadlock (rolled back whole). The
batches lock their runs in id order, so none is expected; the claims skip locked rows."""

T = TypeVar("T")


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    for attempt in range(1, RETRIES + 1):
        try:
            return await call()
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == RETRIES:
                raise
    raise AssertionError("unreachable")


_Event = tuple[str, str, str, float]


def _numbered(batch: Sequence[_Event], known: set[str], rows: Sequence[Any]) -> list[_Outcome]:
    """Each event's number (a run's numbers go to its events in the batch's order), or a
    ``NotFoundError`` for an event of a run not in ``known``."""
    seqs: dict[str, list[int]] = {}
    for run_id, seq in rows:
        seqs.setdefault(run_id, []).append(seq)
    for numbers in seqs.values():
        numbers.sort(reverse=True)  # popped lowest first
    return [(seqs[e[0]].pop(), None) if e[0] in known else (None, _unknown(e[0])) for e in batch]


_Update = tuple[str, str, int, tuple[Any, ...], NewEvent | None]
_Create = tuple[RunRecord, NewEvent | None]


def _event(run_id: str, event: NewEvent) -> _Event:
    """An event as a batch's arrays carry it (data as JSON text)."""
    return run_id, event[0], orjson.dumps(event[1]).decode(), float(event[2])


_Outcome = tuple[Any, BaseException | None]


def _record(row: Row[Any]) -> RunRecord:
    """A run from a row of all of ``runs``' columns (named as the record's fields)."""
    return RunRecord(**row._mapping)


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
    _creates: Batches[_Create, _Outcome] = field(init=False, repr=False)
    _events: Batches[_Event, _Outcome] = field(init=False, repr=False)
    _updates: dict[tuple[str, ...], Batches[_Update, _Outcome]] = field(
        init=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_creates", Batches(self._create_batch, lanes=BATCH_LANES))
        object.__setattr__(self, "_events", Batches(self._event_batch, lanes=BATCH_LANES))

    def __repr__(self) -> str:
        return f"<PostgresRuns {self.engine.url.render_as_string(hide_password=True)}>"

    @contextlib.asynccontextmanager
    async def _raw(self) -> AsyncIterator[asyncpg.Connection]:
        """The asyncpg connection of a pooled one (SQLAlchemy starts no transaction on it,
        so giving it back costs no rollback)."""
        with self.watching():
            async with self.engine.connect() as conn:
                raw = await conn.get_raw_connection()
                yield raw.driver_connection

    @staticmethod
    async def _batched(batches: Batches[Any, _Outcome], item: Any) -> Any:
        result, error = await asyncio.shield(batches.submit(item))
        if error is not None:
            raise error
        return result

    async def _create_batch(self, batch: Sequence[_Create]) -> list[_Outcome]:
        """One INSERT of the batch, and one of the new runs' first events, in one
        transaction; a run whose idempotency key was used is answered with that run (looked
        up after: the conflict waited for its writer's commit)."""
        rows = [tuple(_column(c, getattr(run, c)) for c in COLUMNS) for run, _ in batch]
        async with self._raw() as conn, conn.transaction():
            added = {r[0] for r in await conn.fetch(_INSERT_RUNS, *_arrays(COLUMNS, rows))}
            firsts = [_event(run.id, e) for run, e in batch if e is not None and run.id in added]
            if firsts:
                await conn.fetch(_ADD_EVENTS, *_arrays(("r", "t", "d", "a"), firsts))
            keys = [
                run.idempotency_key
                for run, _ in batch
                if run.id not in added and run.idempotency_key is not None
            ]
            earlier = {}
            if keys:
                for row in await conn.fetch(_BY_KEYS, keys):
                    found = _raw_record(row)
                    earlier[found.idempotency_key] = found
        out: list[_Outcome] = []
        for run, _ in batch:
            if run.id in added:
                out.append((run, None))
            elif run.idempotency_key in earlier:
                out.append((earlier[run.idempotency_key], None))
            else:
                out.append((None, ConflictError(f"run {run.id!r} already exists", field="id")))
        return out

    async def _event_batch(self, batch: Sequence[_Event]) -> list[_Outcome]:
        """Lock the batch's runs (in id order), then number and insert its events."""
        ids = sorted({e[0] for e in batch})
        arrays = _arrays(("r", "t", "d", "a"), batch)
        try:  # optimistic: one statement, no lock; a race or an unknown run fails it whole
            async with self._raw() as conn:
                rows = await conn.fetch(_ADD_EVENTS, *arrays)
            return _numbered(batch, set(ids), rows)
        except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError):
            pass

        async def add() -> tuple[set[str], list[Any]]:
            async with self._raw() as conn, conn.transaction():
                known = {r[0] for r in await conn.fetch(_LOCK_RUNS, ids)}
                mine = [e for e in batch if e[0] in known]
                if not mine:
                    return known, []
                return known, await conn.fetch(_ADD_EVENTS, *_arrays(("r", "t", "d", "a"), mine))

        known, rows = await _retrying(add)
        return _numbered(batch, known, rows)

    async def _update_batch(
        self, names: tuple[str, ...], batch: Sequence[_Update]
    ) -> list[_Outcome]:
        """One fenced UPDATE of the batch (a run twice in one batch: one at a time)."""
        if len({u[0] for u in batch}) < len(batch):
            out: list[_Outcome] = []
            for item in batch:
                out += await self._update_batch(names, [item])
            return out
        rows = sorted(
            (run_id, holder, epoch, *values) for run_id, holder, epoch, values, _e in batch
        )
        keys = ("b_id", "b_holder", "b_epoch", *names)
        events = {u[0]: u[4] for u in batch if u[4] is not None}

        async def update() -> list[Any]:
            async with self._raw() as conn, conn.transaction():
                await conn.execute(_LOCK_RUNS, [row[0] for row in rows])
                found: list[Any] = await conn.fetch(_update_batch(names), *_arrays(keys, rows))
                done = [_event(row[0], events[row[0]]) for row in found if row[0] in events]
                if done:  # under the row locks taken above
                    await conn.fetch(_ADD_EVENTS, *_arrays(("r", "t", "d", "a"), done))
                return found

        found = await _retrying(update)
        by_id = {record.id: record for record in map(_raw_record, found)}
        return [(by_id.get(u[0]), None) for u in batch]

    @contextlib.asynccontextmanager
    async def _connection(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A connection (in a transaction when ``write``) whose driver failures are raised
        as the store's errors."""
        with self.watching():
            async with self.engine.begin() if write else self.engine.connect() as conn:
                yield conn

    async def create_run(self, run: RunRecord, *, event: NewEvent | None = None) -> RunRecord:
        """Insert, or the run that already has this idempotency key; a taken id is a
        ``ConflictError`` (see :meth:`~.runs.RunStore.create_run`). Batched."""
        created: RunRecord = await self._batched(self._creates, (run, event))
        return created

    async def get_run(self, run_id: str) -> RunRecord | None:
        async with self._raw() as conn:
            row = await conn.fetchrow(_GET_RAW, run_id)
        return None if row is None else _raw_record(row)

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

    async def keep_runs(self, holder: str, held: Mapping[str, int], ttl: float) -> dict[str, bool]:
        """One UPDATE over the held runs, locked first in id order (the batched writes lock
        theirs so too: no deadlock with them); for each renewed, whether its cancel was
        asked."""
        if not held:
            return {}
        pairs = sorted(held.items())
        ids, epochs = [p[0] for p in pairs], [p[1] for p in pairs]

        async def renew() -> list[Any]:
            async with self._raw() as conn, conn.transaction():
                await conn.execute(_LOCK_RUNS, ids)
                rows: list[Any] = await conn.fetch(_RENEW, ids, epochs, holder, float(ttl))
                return rows

        return {row[0]: row[1] for row in await _retrying(renew)}

    async def update_run(
        self,
        run_id: str,
        holder: str,
        epoch: int,
        changes: Mapping[str, Any],
        *,
        event: NewEvent | None = None,
    ) -> RunRecord | None:
        """Batched with the concurrent updates that change the same fields (no changes: a
        no-op write, epoch to itself, that still answers whether it is held)."""
        _changes(changes)  # ValueError for a field outside UPDATABLE
        names = tuple(sorted(changes))
        batches = self._updates.get(names)
        if batches is None:
            batches = self._updates[names] = Batches(
                functools.partial(self._update_batch, names), lanes=BATCH_LANES
            )
        values = tuple(_column(n, changes[n]) for n in names)
        found: RunRecord | None = await self._batched(
            batches, (run_id, holder, epoch, values, event)
        )
        return found

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
        event = (run_id, type, orjson.dumps(data).decode(), float(at))
        seq: int = await self._batched(self._events, event)
        return seq

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
