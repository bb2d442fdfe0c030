"""The fleet's shared rows on PostgreSQL: run-time registrations and health verdicts, and
the one query replicas poll to learn what changed (:mod:`..core.shared_fleet` uses them).

**One counter orders everything.** Every write takes the next value of the single row of
``orchestrator_fleet_version`` first, in its own transaction, and stamps the row it writes
with it. The counter's row lock is held to COMMIT, so writers commit in version order: a
poller that has seen version V has seen every commit up to V, and ``version > V`` is the
whole of what changed since (an unregistration leaves its row, ``spec`` NULL, to carry its
version). Writes are rare (a registration, a heartbeat, a change of verdict), so one
serializing row costs nothing that matters; reads never wait for it.

**The database's clock judges** heartbeats: ``expires_at`` is ``extract(epoch from now())``
plus the TTL, and every poll returns that clock's *now*, against which a replica expires
what it holds. Statements are plain text with named parameters and no session state
(no advisory locks, no temporary tables, nothing that relies on a prepared statement
surviving the transaction), so a PgBouncer in transaction mode is fine.

``spec`` holds the registration as it was posted, credentials included (a replica needs
them to call the instance): nothing here logs or returns a spec to a caller.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .postgres import storage_error
from .tables import FLEET_REASON_MAX, fleet_instances, fleet_verdicts, fleet_version

__all__ = ["Changes", "FleetStore", "InstanceRow", "Registered", "VerdictRow"]

_V, _I, _D = fleet_version.name, fleet_instances.name, fleet_verdicts.name
_NOW = "extract(epoch from now())::float8"
_NEXT = (
    f"INSERT INTO {_V} (id, version) VALUES (1, 1) "  # noqa: S608  # constants only
    f"ON CONFLICT (id) DO UPDATE SET version = {_V}.version + 1 "
    f"RETURNING version, {_NOW} AS now"
)
"""The next version, and the database's now: the first statement of every write."""

_BUMP = text(_NEXT)
_OLD = text(
    f"SELECT spec->>'url', spec->>'driver', spec IS NOT NULL "  # noqa: S608  # constants
    f"AND (expires_at IS NULL OR expires_at > :now) FROM {_I} WHERE name = :name"
)
_INSTANCE_COLUMNS = "name, spec, heartbeat_at, expires_at, version"
_UPSERT = text(
    f"INSERT INTO {_I} (name, spec, source, heartbeat_at, expires_at, version) "  # noqa: S608
    "VALUES (:name, :spec, 'registered', :now, :expires_at, :version) "
    "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, heartbeat_at = excluded.heartbeat_at, "
    "expires_at = excluded.expires_at, version = excluded.version "
    f"RETURNING {_INSTANCE_COLUMNS}"
).bindparams(bindparam("spec", type_=JSON))
_UNREGISTER = text(
    f"WITH v AS ({_NEXT}) UPDATE {_I} AS i SET spec = NULL, heartbeat_at = NULL, "  # noqa: S608
    "expires_at = NULL, version = v.version FROM v WHERE i.name = :name "
    "AND i.spec IS NOT NULL AND (i.expires_at IS NULL OR i.expires_at > v.now) "
    "RETURNING i.name, i.spec, i.heartbeat_at, i.expires_at, i.version"
)
_VERDICT_COLUMNS = "instance, state, reason, changed_at, origin, version"
_VERDICT_SET = (
    "state = excluded.state, reason = excluded.reason, changed_at = excluded.changed_at, "
    "origin = excluded.origin, version = excluded.version"
)
_RESET = text(
    f"INSERT INTO {_D} ({_VERDICT_COLUMNS}) "  # noqa: S608
    "VALUES (:instance, 'unknown', :reason, :now, :origin, :version) "
    f"ON CONFLICT (instance) DO UPDATE SET {_VERDICT_SET}"
)
_ARGS = (
    "CAST(:instance AS varchar), {state}, CAST(:reason AS varchar), v.now, "
    "CAST(:origin AS varchar), v.version"
)
"""A verdict row's values, typed: asyncpg deduces one type per parameter, and ``:origin``
is also compared with a column."""
_DOWN = "'down'"
_MARK_DOWN = text(
    f"WITH v AS ({_NEXT}) INSERT INTO {_D} ({_VERDICT_COLUMNS}) "  # noqa: S608
    f"SELECT {_ARGS.format(state=_DOWN)} FROM v "
    f"ON CONFLICT (instance) DO UPDATE SET {_VERDICT_SET} WHERE {_D}.state <> 'down' "
    f"RETURNING {_VERDICT_COLUMNS}"
)
_DECIDE = text(
    f"WITH v AS ({_NEXT}) INSERT INTO {_D} ({_VERDICT_COLUMNS}) "  # noqa: S608
    f"SELECT {_ARGS.format(state='CAST(:state AS varchar)')} FROM v "
    "WHERE EXISTS (SELECT 1 FROM orchestrator_leases AS l WHERE l.name = :lease "
    "AND l.holder = :origin AND l.expires_at > now()) "
    f"ON CONFLICT (instance) DO UPDATE SET {_VERDICT_SET} "
    f"WHERE {_D}.version <= :based_on OR {_D}.origin = excluded.origin "
    f"RETURNING {_VERDICT_COLUMNS}"
)
_VERDICT = text(f"SELECT {_VERDICT_COLUMNS} FROM {_D} WHERE instance = :instance")  # noqa: S608
_CHANGES = text(
    f"SELECT n.now, c.* FROM (SELECT {_NOW} AS now) AS n LEFT JOIN ("  # noqa: S608
    f"SELECT 'i' AS kind, name, spec::text AS spec, heartbeat_at, expires_at, "
    f"NULL AS state, NULL AS reason, NULL::float8 AS changed_at, NULL AS origin, version "
    f"FROM {_I} WHERE version > :since UNION ALL "
    f"SELECT 'v', instance, NULL, NULL, NULL, state, reason, changed_at, origin, version "
    f"FROM {_D} WHERE version > :since) AS c ON true ORDER BY c.version"
)


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """A registration as stored. ``spec`` is None once unregistered; times are epoch
    seconds by the database's clock. Its repr leaves the spec (credentials) out."""

    name: str
    spec: Mapping[str, Any] | None
    heartbeat_at: float | None
    expires_at: float | None
    version: int

    def __repr__(self) -> str:
        live = "unregistered" if self.spec is None else f"expires_at={self.expires_at}"
        return f"<InstanceRow {self.name} v{self.version} {live}>"

    def is_live(self, now: float) -> bool:
        """Registered and, if it heartbeats, not expired at the database's ``now``."""
        return self.spec is not None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True)
class VerdictRow:
    """The latest verdict on an instance: its state, why, when (database clock), which
    replica decided it, and its version."""

    instance: str
    state: str
    reason: str | None
    changed_at: float
    origin: str
    version: int


@dataclass(frozen=True, slots=True)
class Changes:
    """What a poll found: the database's ``now`` and every row written since the version
    asked about, in version order; ``version`` is the newest seen (the next poll's start)."""

    now: float
    instances: list[InstanceRow]
    verdicts: list[VerdictRow]
    version: int


@dataclass(frozen=True, slots=True)
class Registered:
    """A registration written: the row, the database's now, and whether it is new to the
    fleet (no live registration had the name, or it was another process: URL or driver)."""

    row: InstanceRow
    now: float
    created: bool
    fresh: bool


def _json(spec: str | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A ``json`` column's value: asyncpg hands text over, a typed column a mapping."""
    return json.loads(spec) if isinstance(spec, str) else spec


def _instance(row: Sequence[Any]) -> InstanceRow:
    name, spec, heartbeat_at, expires_at, version = row
    return InstanceRow(name, _json(spec), heartbeat_at, expires_at, int(version))


def _verdict(row: Sequence[Any]) -> VerdictRow:
    instance, state, reason, changed_at, origin, version = row
    return VerdictRow(instance, state, reason, float(changed_at), origin, int(version))


def _reason(reason: str) -> str:
    return reason if len(reason) <= FLEET_REASON_MAX else reason[: FLEET_REASON_MAX - 1] + "…"


class FleetStore:
    """The statements above on a PostgreSQL engine (the store's pool). Driver failures
    come out as the store's ``StorageUnavailableError`` (503), as from the store itself."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def __repr__(self) -> str:
        return f"<FleetStore {self._engine.url.render_as_string(hide_password=True)}>"

    async def changes(self, since: int) -> Changes:
        """Every registration and verdict written after version ``since``, and the database's
        now: one statement, no transaction (autocommit), one pooled connection."""
        async with self._connect(autocommit=True) as conn:
            rows = (await conn.execute(_CHANGES, {"since": since})).all()
        instances, verdicts, version = [], [], since
        for _now, kind, name, spec, hb, exp, state, reason, changed, origin, v in rows:
            if kind is None:
                continue
            version = max(version, int(v))
            if kind == "i":
                instances.append(InstanceRow(name, _json(spec), hb, exp, int(v)))
            else:
                verdicts.append(VerdictRow(name, state, reason, float(changed), origin, int(v)))
        return Changes(float(rows[0][0]), instances, verdicts, version)

    async def register(
        self, name: str, spec: Mapping[str, Any], ttl: float | None, origin: str
    ) -> Registered:
        """Insert or refresh (heartbeat) ``name``: expiry ``ttl`` seconds after the database's
        now. A fresh registration (new, expired, unregistered, or another URL or driver)
        also resets the instance's verdict to unknown: it is another process now."""
        async with self._connect() as conn, conn.begin():
            version, now = (await conn.execute(_BUMP)).one()
            old = (await conn.execute(_OLD, {"name": name, "now": now})).first()
            params = {
                "name": name,
                "spec": dict(spec),
                "now": now,
                "expires_at": None if ttl is None else now + ttl,
                "version": version,
            }
            row = _instance((await conn.execute(_UPSERT, params)).one())
            created = old is None or not old[2]
            same = old is not None and (old[0], old[1]) == (spec.get("url"), spec.get("driver"))
            fresh = created or not same
            if fresh:
                reset = {"instance": name, "now": now, "origin": origin, "version": version}
                await conn.execute(_RESET, {**reset, "reason": "registered"})
        return Registered(row, float(now), created, fresh)

    async def unregister(self, name: str) -> InstanceRow | None:
        """Mark ``name`` unregistered; the row it had, or None when no live one."""
        async with self._connect() as conn, conn.begin():
            row = (await conn.execute(_UNREGISTER, {"name": name})).first()
        return None if row is None else _instance(row)

    async def mark_down(self, instance: str, reason: str, origin: str) -> VerdictRow | None:
        """Record a down verdict (anyone may); None when it was down already."""
        params = {"instance": instance, "reason": _reason(reason), "origin": origin}
        return await self._write_verdict(_MARK_DOWN, params)

    async def decide(
        self, instance: str, state: str, reason: str, *, origin: str, lease: str, based_on: int
    ) -> VerdictRow | None:
        """Record the probe owner's verdict: only while ``origin`` holds ``lease`` (live, by
        the database's clock), and only over the verdict it last saw (``based_on``) or its
        own; None when refused (another replica's newer verdict stands, or not the owner)."""
        params = {
            "instance": instance,
            "state": state,
            "reason": _reason(reason),
            "origin": origin,
            "lease": lease,
            "based_on": based_on,
        }
        return await self._write_verdict(_DECIDE, params)

    async def verdict(self, instance: str) -> VerdictRow | None:
        """The stored verdict on ``instance``, or None."""
        async with self._connect(autocommit=True) as conn:
            row = (await conn.execute(_VERDICT, {"instance": instance})).first()
        return None if row is None else _verdict(row)

    async def _write_verdict(
        self, statement: TextClause, params: dict[str, Any]
    ) -> VerdictRow | None:
        async with self._connect() as conn, conn.begin():
            row = (await conn.execute(statement, params)).first()
        return None if row is None else _verdict(row)

    @contextlib.asynccontextmanager
    async def _connect(self, *, autocommit: bool = False) -> AsyncIterator[AsyncConnection]:
        """A pooled connection for one use (autocommit for reads: no BEGIN and ROLLBACK round
        trips); driver failures become the store's errors (:func:`~.postgres.storage_error`)."""
        try:
            async with self._engine.connect() as conn:
                if autocommit:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
        except Exception as exc:
            error = storage_error(exc)
            if error is None or error is exc:
                raise
            raise error from exc
