"""The retry budget made fleet-wide: replicas sharing one PostgreSQL database keep their
:class:`~openclaw_orchestrator.domain.backoff.RetryBudget` decisions within the configured
ratio of the *fleet's* traffic, not each its own.

The domain budget stays pure and keeps counting locally; :class:`FleetBudget` is the syncer.
Every ``interval`` seconds (and within ``poll`` seconds of a retry this replica spent, of
one refused because its share of the fleet's headroom was spent, or, while that headroom is
small (:attr:`~openclaw_orchestrator.domain.backoff.RetryBudget.is_tight`), of a new first
attempt) it
publishes the counts added since its last exchange and reads every replica's sums over the
window, in one statement (:class:`~..stores.budget_sql.BudgetSql`), then hands the other
replicas' totals, their number and this replica's rank to
:meth:`~openclaw_orchestrator.domain.backoff.RetryBudget.observe_fleet`, which deals each
replica its share of the remaining headroom. If the database is away the exchange fails,
the view ages out after one window and the budget is local again until it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from ...domain.backoff import FleetCounts, RetryBudget
from ...errors import OrchestratorError
from ..logs import get_logger
from ..stores.budget_sql import FleetTotals
from ..stores.leases import holder_id
from .clock import Clock, Sleep

__all__ = ["DEFAULT_POLL", "DEFAULT_SYNC_INTERVAL", "BudgetExchange", "FleetBudget"]

DEFAULT_SYNC_INTERVAL = 0.1
"""Seconds between exchanges: how stale the other replicas' counts may be."""
DEFAULT_POLL = 0.01
"""Seconds between local looks for a retry spent here, which is published at once."""
SWEEP_EVERY = 600
"""Exchanges between two sweeps of old rows (about a minute at the default interval)."""
SWEEP_BATCH = 1000

log = get_logger("orchestrator")


class BudgetExchange(Protocol):
    """The shared counts (:class:`~..stores.budget_sql.BudgetSql`)."""

    async def exchange(
        self, holder: str, requests: int, retries: int, *, width: float, buckets: int
    ) -> FleetTotals: ...

    async def sweep(self, *, width: float, keep: int, limit: int) -> int: ...


def fleet_view(totals: FleetTotals, holder: str) -> FleetCounts:
    """The other replicas' counts, how many count and ``holder``'s rank among them."""
    others = {h: counts for h, counts in totals.by_holder.items() if h != holder}
    holders = sorted({*others, holder})
    return FleetCounts(
        requests=sum(r for r, _ in others.values()),
        retries=sum(t for _, t in others.values()),
        replicas=len(holders),
        rank=holders.index(holder),
        turn=totals.bucket,
    )


class FleetBudget:
    """Syncs ``budget`` with the fleet (module docstring); ``clock`` must be the clock the
    budget's callers use. ``async with`` runs it in the background."""

    def __init__(
        self,
        budget: RetryBudget,
        exchange: BudgetExchange,
        *,
        clock: Clock,
        interval: float = DEFAULT_SYNC_INTERVAL,
        poll: float = DEFAULT_POLL,
        sleep: Sleep = asyncio.sleep,
        holder: str | None = None,
    ) -> None:
        self.budget = budget
        self._exchange = exchange
        self._clock, self._sleep = clock, sleep
        self.interval, self.poll = interval, poll
        self.holder = holder or holder_id()
        self._sent = budget.counted
        self._refusals = budget.share_refusals
        self._task: asyncio.Task[None] | None = None
        self.exchanges = 0

    def __repr__(self) -> str:
        return f"<FleetBudget holder={self.holder} exchanges={self.exchanges} {self.budget!r}>"

    async def sync(self) -> FleetCounts:
        """Publish the counts added since the last exchange and take in the fleet's."""
        counted, self._refusals = self.budget.counted, self.budget.share_refusals
        requests, retries = counted[0] - self._sent[0], counted[1] - self._sent[1]
        budget = self.budget
        totals = await self._exchange.exchange(
            self.holder, requests, retries, width=budget.width, buckets=budget.buckets
        )
        self._sent = counted
        self.exchanges += 1
        view = fleet_view(totals, self.holder)
        budget.observe_fleet(view, self._clock())
        return view

    async def __aenter__(self) -> FleetBudget:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop syncing (the counts not yet published are lost with the replica)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
                if self.exchanges % SWEEP_EVERY == 0:
                    await self._sweep()
            except OrchestratorError as exc:  # the database is away: the view ages out
                log.warning("orchestrator.retry_budget_sync_failed", error=exc.code)
            await self._until_due()

    async def _until_due(self) -> None:
        """Wait ``interval``, or less when this replica spends a retry (or is refused one
        by its share) meanwhile."""
        due = self._clock() + self.interval
        while self._clock() < due and not self._has_news():
            await self._sleep(self.poll)

    def _has_news(self) -> bool:
        budget = self.budget
        requests, retries = budget.counted
        if retries != self._sent[1] or budget.share_refusals != self._refusals:
            return True
        return budget.is_tight and requests != self._sent[0]

    async def _sweep(self) -> int:
        """Delete rows older than two windows."""
        budget = self.budget
        keep = 2 * budget.buckets
        return await self._exchange.sweep(width=budget.width, keep=keep, limit=SWEEP_BATCH)
