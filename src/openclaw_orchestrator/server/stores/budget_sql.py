"""The fleet's retry budget in PostgreSQL: the statements behind
:class:`~..core.fleet_budget.FleetBudget`, one row of ``orchestrator_retry_budget`` per
replica and time bucket (:mod:`.tables`).

A bucket is ``floor(epoch(now()) / width)`` by the server's clock, so every replica agrees on
it. :meth:`BudgetSql.exchange` is one statement: it adds this replica's new counts to its
current bucket (``INSERT … ON CONFLICT DO UPDATE``) and reads every replica's sums over the
window. Nothing is kept on the connection, so it works through PgBouncer in transaction mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .idempotency_sql import guarded
from .tables import retry_budget

__all__ = ["BudgetSql", "FleetTotals"]

_T = retry_budget.name
_BUCKET = "floor(extract(epoch FROM now())::double precision / CAST(:width AS double precision))"
_EXCHANGE = text(
    f"WITH now_bucket AS (SELECT CAST({_BUCKET} AS bigint) AS bucket), "  # noqa: S608
    f"publish AS (INSERT INTO {_T} AS t (holder, bucket, requests, retries) "
    "SELECT :holder, bucket, CAST(:requests AS bigint), CAST(:retries AS bigint) "
    "FROM now_bucket WHERE CAST(:requests AS bigint) + CAST(:retries AS bigint) > 0 "
    "ON CONFLICT (holder, bucket) DO UPDATE SET requests = t.requests + excluded.requests, "
    "retries = t.retries + excluded.retries RETURNING 1) "
    "SELECT n.bucket, r.holder, COALESCE(SUM(r.requests), 0), COALESCE(SUM(r.retries), 0) "
    f"FROM now_bucket n LEFT JOIN {_T} r "
    "ON r.bucket > n.bucket - CAST(:buckets AS bigint) AND r.bucket <= n.bucket "
    "GROUP BY n.bucket, r.holder"
)
_SWEEP = text(
    f"DELETE FROM {_T} WHERE (holder, bucket) IN (SELECT holder, bucket FROM {_T} "  # noqa: S608
    f"WHERE bucket < CAST({_BUCKET} AS bigint) - CAST(:keep AS bigint) "
    "LIMIT :limit FOR UPDATE SKIP LOCKED)"
)


@dataclass(frozen=True, slots=True)
class FleetTotals:
    """The window's counts per replica (holder -> (first attempts, retries)), as committed
    before this exchange, and the database's current bucket."""

    bucket: int
    by_holder: dict[str, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class BudgetSql:
    """The budget statements on ``engine`` (a PostgreSQL pool, the store's)."""

    engine: AsyncEngine

    async def exchange(
        self, holder: str, requests: int, retries: int, *, width: float, buckets: int
    ) -> FleetTotals:
        """Add ``requests`` and ``retries`` to ``holder``'s current bucket; every replica's
        sums over the last ``buckets`` buckets of ``width`` seconds."""
        params = {
            "holder": holder,
            "requests": requests,
            "retries": retries,
            "width": width,
            "buckets": buckets,
        }
        async with guarded(self.engine, write=True) as conn:
            rows = (await conn.execute(_EXCHANGE, params)).all()
        by_holder = {r[1]: (int(r[2]), int(r[3])) for r in rows if r[1] is not None}
        return FleetTotals(int(rows[0][0]), by_holder)

    async def sweep(self, *, width: float, keep: int, limit: int) -> int:
        """Delete up to ``limit`` rows more than ``keep`` buckets old; how many went."""
        params = {"width": width, "keep": keep, "limit": limit}
        async with guarded(self.engine, write=True) as conn:
            return int((await conn.execute(_SWEEP, params)).rowcount)
