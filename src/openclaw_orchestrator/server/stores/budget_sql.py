"""The fleet's retry budget in PostgreSQL: the statements behind
:class:`~..core.fleet_budget.FleetBudget`, one row of ``orchestrator_retry_budget`` per
replica and time bucket, and one of ``orchestrator_retry_grants`` per replica (:mod:`.tables`).

A bucket is ``floor(epoch / width)`` by the server's clock, so every replica agrees on it.
:meth:`BudgetSql.exchange` is one transaction under a fixed advisory lock, so exchanges run
one at a time across the fleet: it reads every replica's sums over the window and the
grants the others hold, lets the caller decide (``settle``, no await in between) what it
publishes and the grant it takes, then adds the counts to the current bucket and replaces
this replica's grant. Nothing is kept on the connection between transactions, so it works
through PgBouncer in transaction mode. A grant outlives its exchange by the window and
:data:`GRANT_MARGIN` (the replica stops spending from it after the window by its own clock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .idempotency_sql import guarded
from .tables import retry_budget, retry_grants

__all__ = ["BUDGET_LOCK_KEY", "GRANT_MARGIN", "BudgetSql", "FleetTotals", "Publication"]

BUDGET_LOCK_KEY = 0x6F63_6C61_7762_7564  # "oclawbud": the fleet budget's advisory lock
GRANT_MARGIN = 1.0
"""Seconds a grant stays counted after its holder would stop spending from it."""

_T, _G = retry_budget.name, retry_grants.name
_READ = text(
    f"WITH locked AS (SELECT pg_advisory_xact_lock({BUDGET_LOCK_KEY})), "  # noqa: S608
    "clock AS (SELECT CAST(floor(extract(epoch FROM clock_timestamp())::double precision "
    "/ CAST(:width AS double precision)) AS bigint) AS bucket, clock_timestamp() AS at "
    "FROM locked) "
    "SELECT c.bucket, r.holder, COALESCE(SUM(r.requests), 0), COALESCE(SUM(r.retries), 0), "
    "NULL, NULL FROM clock c LEFT JOIN {T} r "
    "ON r.bucket > c.bucket - CAST(:buckets AS bigint) AND r.bucket <= c.bucket "
    "GROUP BY c.bucket, r.holder "
    "UNION ALL SELECT c.bucket, g.holder, 0, 0, g.granted, g.wanting FROM clock c "
    "JOIN {G} g ON g.expires_at > c.at AND g.holder <> :holder".format(T=_T, G=_G)
)
_PUBLISH = text(
    f"INSERT INTO {_T} AS t (holder, bucket, requests, retries) "  # noqa: S608
    "VALUES (:holder, :bucket, :requests, :retries) "
    "ON CONFLICT (holder, bucket) DO UPDATE SET requests = t.requests + excluded.requests, "
    "retries = t.retries + excluded.retries"
)
_GRANT = text(
    f"INSERT INTO {_G} AS g (holder, granted, wanting, expires_at) "  # noqa: S608
    "VALUES (:holder, :granted, :wanting, "
    "clock_timestamp() + make_interval(secs => CAST(:lasts AS double precision))) "
    "ON CONFLICT (holder) DO UPDATE SET granted = excluded.granted, "
    "wanting = excluded.wanting, expires_at = excluded.expires_at"
)
_RELEASE = text(f"DELETE FROM {_G} WHERE holder = :holder")  # noqa: S608
_SWEEP = text(
    f"DELETE FROM {_T} WHERE (holder, bucket) IN (SELECT holder, bucket FROM {_T} "  # noqa: S608
    "WHERE bucket < CAST(floor(extract(epoch FROM now())::double precision "
    "/ CAST(:width AS double precision)) AS bigint) - CAST(:keep AS bigint) "
    "LIMIT :limit FOR UPDATE SKIP LOCKED)"
)
_SWEEP_GRANTS = text(
    f"DELETE FROM {_G} WHERE holder IN (SELECT holder FROM {_G} "  # noqa: S608
    "WHERE expires_at < now() LIMIT :limit FOR UPDATE SKIP LOCKED)"
)


@dataclass(frozen=True, slots=True)
class FleetTotals:
    """The window's counts per replica (holder -> (first attempts, retries)) as committed
    before this exchange, the retries the *other* replicas hold granted (holder ->
    units), those of them that want retries, and the database's current bucket."""

    bucket: int
    by_holder: dict[str, tuple[int, int]]
    granted: dict[str, int]
    wanting: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Publication:
    """What one exchange writes: counts to add to the current bucket, the grant to hold
    and whether this replica wants retries (spent or was refused some lately)."""

    requests: int
    retries: int
    granted: int
    wanting: bool


@dataclass(frozen=True, slots=True)
class BudgetSql:
    """The budget statements on ``engine`` (a PostgreSQL pool, the store's)."""

    engine: AsyncEngine

    async def exchange(
        self,
        holder: str,
        *,
        width: float,
        buckets: int,
        settle: Callable[[FleetTotals], Publication],
    ) -> FleetTotals:
        """Under the fleet's lock: read the window's sums and the others' grants, publish
        what ``settle`` returns for them and replace ``holder``'s grant (module
        docstring)."""
        params = {"holder": holder, "width": width, "buckets": buckets}
        async with guarded(self.engine, write=True) as conn:
            rows = (await conn.execute(_READ, params)).all()
            counts = {r[1]: (int(r[2]), int(r[3])) for r in rows if r[4] is None and r[1]}
            granted = {r[1]: int(r[4]) for r in rows if r[4] is not None}
            wanting = frozenset(r[1] for r in rows if r[5])
            totals = FleetTotals(int(rows[0][0]), counts, granted, wanting)
            out = settle(totals)
            if out.requests or out.retries:
                publish = {
                    "holder": holder,
                    "bucket": totals.bucket,
                    "requests": out.requests,
                    "retries": out.retries,
                }
                await conn.execute(_PUBLISH, publish)
            lasts = width * buckets + GRANT_MARGIN
            grant = {
                "holder": holder,
                "granted": out.granted,
                "wanting": out.wanting,
                "lasts": lasts,
            }
            await conn.execute(_GRANT, grant)
        return totals

    async def release(self, holder: str) -> None:
        """Drop ``holder``'s grant (a replica leaving: the others may deal its units)."""
        async with guarded(self.engine, write=True) as conn:
            await conn.execute(_RELEASE, {"holder": holder})

    async def sweep(self, *, width: float, keep: int, limit: int) -> int:
        """Delete up to ``limit`` count rows more than ``keep`` buckets old and up to
        ``limit`` expired grants; how many went."""
        params = {"width": width, "keep": keep, "limit": limit}
        async with guarded(self.engine, write=True) as conn:
            gone = int((await conn.execute(_SWEEP, params)).rowcount)
            return gone + int((await conn.execute(_SWEEP_GRANTS, {"limit": limit})).rowcount)
