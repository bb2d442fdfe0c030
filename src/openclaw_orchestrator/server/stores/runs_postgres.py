"""Durable runs in PostgreSQL: :class:`PostgresRuns`, the :class:`~.runs.RunStore` of
:class:`~.postgres.PostgresStore`, on ``orchestrator_runs`` and ``orchestrator_run_events``
(:mod:`.tables`), on the store's pool.

**The hot writes are batched** (:class:`~.group_commit.Batches`: whatever arrives while a
call is in flight goes in the next one): each alone cost a transaction, a WAL flush and
SQLAlchemy's per-statement work (about 10 ms of CPU per run in all, 130 submissions/s on two
cores). ``create_run``, ``add_event`` and ``update_run`` (one batch per set of changed
fields) are each ONE statement over ``unnest`` of the batch's arrays, straight on the pooled
asyncpg connection: one round trip, no ``BEGIN``/``COMMIT`` (a statement is its own
transaction); a run's events go in the same statement as its insert or update
(data-modifying CTEs). ``get_run``, the claim and the lease renewal are asyncpg too; the
rest stay SQLAlchemy Core statements.

Every method is one transaction with nothing kept on the connection after it (no advisory
locks, no temporary tables), so it works through PgBouncer in transaction mode. Leases are
judged by the server's ``now()`` in epoch seconds. A claim is one statement, ``UPDATE … FROM
(SELECT … FOR UPDATE SKIP LOCKED) … RETURNING …``: a run another replica is claiming at that
moment is skipped, never taken twice; with :meth:`PostgresRuns.start_runs` the same statement
starts the runs that need no decision and adds their ``running`` events.

**Events are numbered optimistically**: from the statement's snapshot, each run's in the
batch's order above its last. Every batched write that locks runs locks them in id order
(no deadlock between batches, nor with the keeper's renewal). If another writer numbered one
of the runs' events at the same moment, the primary key refuses the statement whole: an
update batch is then done again (a new snapshot), a batch of events alone is done again
under the row locks of its runs (``FOR NO KEY UPDATE``, taken first, in id order), as is
one naming an unknown run.

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
_AT = bindparam("b_at", type_=Float)
_OPEN = _C.state.not_in(sorted(TERMINAL))
_FREE = or_(_C.holder.is_(None), _C.held_until <= _NOW)
_FENCED = (_C.holder == bindparam("b_holder")) & (_C.epoch == bindparam("b_epoch")) & _OPEN
_NEWEST = (_C.created_at.desc(), _C.id.desc())

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
    f"WITH added AS (INSERT INTO {_RT} ({', '.join(COLUMNS)}) "  # noqa: S608  # constants
    f"SELECT {', '.join(_cast(c) for c in COLUMNS)} FROM {_unnest(COLUMNS)} "
    "ON CONFLICT DO NOTHING RETURNING id), "
    f"firsts AS (INSERT INTO {_ET} (run_id, seq, type, data, at) "
    "SELECT e.run_id, 1, e.type, e.data::json, e.at FROM "
    f"unnest(${len(COLUMNS) + 1}::text[], ${len(COLUMNS) + 2}::text[], "
    f"${len(COLUMNS) + 3}::text[], ${len(COLUMNS) + 4}::float8[]) AS e(run_id, type, data, at) "
    "JOIN added ON added.id = e.run_id) "
    "SELECT id FROM added"
)
"""The batch's new runs and their first events (numbered 1: the runs are new), one
statement, so one round trip and no BEGIN/COMMIT: the events' foreign key is checked at
the statement's end, when its runs are there."""
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


@functools.cache
def _update_batch(names: tuple[str, ...]) -> str:
    """The fenced UPDATE of a batch whose runs change ``names`` (a move to a finished
    state also drops the lease: ``state`` is then among the names and checked per row),
    with the events of the runs it updated, in one statement: one round trip, no
    BEGIN/COMMIT. The runs are locked first, in id order (``locked``: every row the UPDATE
    writes comes out of it, locked, sorted before it is locked), as every batched write
    and the keeper lock theirs: no deadlock. An event is numbered from the statement's
    snapshot: a writer that numbered one of the run's events meanwhile makes it a unique
    violation, and the batch is done again (:meth:`PostgresRuns._update_batch`)."""
    sets = [f"{n} = {_cast(n)}" for n in names] or ["epoch = r.epoch"]
    if "state" in names:
        sets += [
            f"holder = CASE WHEN v.state IN ({_FINISHED}) THEN NULL ELSE r.holder END",
            f"held_until = CASE WHEN v.state IN ({_FINISHED}) THEN NULL ELSE r.held_until END",
        ]
    keys = ("b_id", "b_holder", "b_epoch", *names)
    unnest = _unnest(keys).replace("$3::text[]", "$3::int8[]", 1)
    e = len(keys) + 1
    return (
        f"WITH v AS (SELECT * FROM {unnest}), "  # noqa: S608  # names checked
        f"locked AS MATERIALIZED (SELECT id FROM {_RT} WHERE id IN (SELECT b_id FROM v) "
        "ORDER BY id FOR NO KEY UPDATE), "
        f"u AS (UPDATE {_RT} r SET {', '.join(sets)} FROM v JOIN locked ON locked.id = v.b_id "
        "WHERE r.id = v.b_id AND r.holder = v.b_holder AND r.epoch = v.b_epoch "
        f"AND r.state NOT IN ({_FINISHED}) RETURNING {_OUT}), "
        f"ev AS (SELECT * FROM unnest(${e}::text[], ${e + 1}::text[], ${e + 2}::text[], "
        f"${e + 3}::float8[]) WITH ORDINALITY AS ev(run_id, type, data, at, i)), "
        f"top AS (SELECT run_id, max(seq) AS top FROM {_ET} WHERE run_id IN (SELECT id FROM u) "
        "GROUP BY run_id), "
        f"added AS (INSERT INTO {_ET} (run_id, seq, type, data, at) "
        "SELECT ev.run_id, coalesce(top.top, 0) + row_number() OVER (PARTITION BY ev.run_id "
        "ORDER BY ev.i), ev.type, ev.data::json, ev.at FROM ev JOIN u ON u.id = ev.run_id "
        "LEFT JOIN top ON top.run_id = ev.run_id) "
        "SELECT * FROM u"
    )


_EPOCH_NOW = "extract(epoch FROM now())::float8"
_CLAIM_RAW = (
    f"WITH picked AS (SELECT id, (state = 'queued' AND NOT cancel_requested "  # noqa: S608
    f"AND deadline_at > $4) AS go FROM {_RT} WHERE state IN ('queued', 'running') "
    f"AND (holder IS NULL OR held_until <= {_EPOCH_NOW}) "
    "ORDER BY created_at, id LIMIT $3 FOR UPDATE SKIP LOCKED), "
    f"claimed AS (UPDATE {_RT} r SET holder = $1, held_until = {_EPOCH_NOW} + $2, "
    "epoch = r.epoch + 1, "
    "state = CASE WHEN p.go AND $5 THEN 'running' ELSE r.state END, "
    "delivered = r.delivered OR (p.go AND $5), "
    "attempts = r.attempts + (p.go AND $5)::int, "
    "started_at = CASE WHEN p.go AND $5 THEN coalesce(r.started_at, $4) ELSE r.started_at END, "
    "updated_at = CASE WHEN p.go AND $5 THEN $4 ELSE r.updated_at END "
    f"FROM picked p WHERE r.id = p.id RETURNING p.go AND $5 AS started, {_OUT}), "
    f"begun AS (INSERT INTO {_ET} (run_id, seq, type, data, at) "
    f"SELECT c.id, coalesce((SELECT max(seq) FROM {_ET} e WHERE e.run_id = c.id), 0) + 1, "
    "'state', json_build_object('state', 'running', 'attempt', c.attempts), $4 "
    "FROM claimed c WHERE c.started) "
    "SELECT * FROM claimed"
)
"""The claim (module docstring), and with ``$5`` the start of the claimed runs that need no
decision (:meth:`~.runs.RunStore.start_runs`) with their ``running`` events: one statement,
straight on asyncpg. Nobody else writes events of a queued run, so the number computed
from the statement's snapshot is the next one."""
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


_ABORTED: tuple[type[Exception], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


async def _retrying(
    call: Callable[[], Awaitable[T]], aborted: tuple[type[Exception], ...] = _ABORTED
) -> T:
    """``call()``, again (up to :data:`RETRIES` tries) when it failed with ``aborted``."""
    for attempt in range(1, RETRIES + 1):
        try:
            return await call()
        except aborted:
            if attempt == RETRIES:
                raise
    raise AssertionError("unreachable")


_Event = tuple[str, str, str, float]
_EVENT_KEYS = ("run_id", "type", "data", "at")


def _numbered(batch: Sequence[_Event], known: set[str], rows: Sequence[Any]) -> list[_Outcome]:
    """Each event's number (a run's numbers go to its events in the batch's order), or a
    ``NotFoundError`` for an event of a run not in ``known``."""
    seqs: dict[str, list[int]] = {}
    for run_id, seq in rows:
        seqs.setdefault(run_id, []).append(seq)
    for numbers in seqs.values():
        numbers.sort(reverse=True)  # popped lowest first
    return [(seqs[e[0]].pop(), None) if e[0] in known else (None, _unknown(e[0])) for e in batch]


_Update = tuple[str, str, int, tuple[Any, ...], Sequence[NewEvent]]
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
        """One statement inserts the batch and the new runs' first events; a run whose
        idempotency key was used is answered with that run (looked up after: the conflict
        waited for its writer's commit)."""
        rows = [tuple(_column(c, getattr(run, c)) for c in COLUMNS) for run, _ in batch]
        firsts = list({run.id: _event(run.id, e) for run, e in batch[::-1] if e}.values())
        async with self._raw() as conn:
            added = {
                r[0]
                for r in await conn.fetch(
                    _INSERT_RUNS, *_arrays(COLUMNS, rows), *_arrays(_EVENT_KEYS, firsts)
                )
            }
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
        arrays = _arrays(_EVENT_KEYS, batch)
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
                return known, await conn.fetch(_ADD_EVENTS, *_arrays(_EVENT_KEYS, mine))

        known, rows = await _retrying(add)
        return _numbered(batch, known, rows)

    async def _update_batch(
        self, names: tuple[str, ...], batch: Sequence[_Update]
    ) -> list[_Outcome]:
        """One fenced UPDATE of the batch with its events (a run twice in one batch: one at
        a time); done again if another writer numbered an event of its runs meanwhile."""
        if len({u[0] for u in batch}) < len(batch):
            out: list[_Outcome] = []
            for item in batch:
                out += await self._update_batch(names, [item])
            return out
        rows = sorted(
            (run_id, holder, epoch, *values) for run_id, holder, epoch, values, _e in batch
        )
        keys = ("b_id", "b_holder", "b_epoch", *names)
        events = [_event(u[0], e) for u in batch for e in u[4]]
        arrays = [*_arrays(keys, rows), *_arrays(_EVENT_KEYS, events)]

        async def update() -> list[Any]:
            async with self._raw() as conn:
                return await conn.fetch(_update_batch(names), *arrays)  # type: ignore[no-any-return]

        found = await _retrying(update, (*_ABORTED, asyncpg.UniqueViolationError))
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
        started, claimed = await self._claim(holder, ttl, limit, None)
        return sorted([*started, *claimed], key=lambda r: (r.created_at, r.id))

    async def start_runs(
        self, holder: str, ttl: float, limit: int, at: float
    ) -> tuple[list[RunRecord], list[RunRecord]]:
        """:meth:`claim_runs`, the runs that need no decision started in the same statement."""
        return await self._claim(holder, ttl, limit, at)

    async def _claim(
        self, holder: str, ttl: float, limit: int, start_at: float | None
    ) -> tuple[list[RunRecord], list[RunRecord]]:
        if limit <= 0:
            return [], []
        at = 0.0 if start_at is None else float(start_at)
        async with self._raw() as conn:
            rows = await conn.fetch(_CLAIM_RAW, holder, float(ttl), limit, at, start_at is not None)
        started = sorted((_raw_record(r[1:]) for r in rows if r[0]), key=_age)
        return started, sorted((_raw_record(r[1:]) for r in rows if not r[0]), key=_age)

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
        events: Sequence[NewEvent] = (),
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
            batches, (run_id, holder, epoch, values, events)
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


def _age(run: RunRecord) -> tuple[float, str]:
    return run.created_at, run.id


def _unknown(run_id: str) -> NotFoundError:
    return NotFoundError(f"run {run_id!r} not found", details={"run_id": run_id})
