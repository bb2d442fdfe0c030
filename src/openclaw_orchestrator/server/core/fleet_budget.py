"""The retry budget made fleet-wide: replicas sharing one PostgreSQL database keep their
:class:`~openclaw_orchestrator.domain.backoff.RetryBudget` decisions within the configured
ratio of the *fleet's* traffic, not each its own.

The domain budget stays pure and keeps counting locally; :class:`FleetBudget` is the syncer.
Every ``interval`` seconds (and within ``poll`` seconds of a retry this replica spent, of
one refused because its grant was spent, or, while the fleet's headroom is small
(:attr:`~openclaw_orchestrator.domain.backoff.RetryBudget.is_tight`), of a new first
attempt) it exchanges with the fleet (:class:`~..stores.budget_sql.BudgetSql`), one
replica at a time: it reads every replica's sums over the window and the grants the others
hold, and in the same step, with nothing spent in between, publishes the counts added since
its last exchange and takes its grant
(:meth:`~openclaw_orchestrator.domain.backoff.RetryBudget.deal`). Grants never add up to
more than the fleet's headroom, so the fleet stays within the ratio however stale a
replica's view. If the database is away the exchange fails, the grant is withdrawn (only
new first attempts earn retries), the view ages out after one window and the budget is
local again until the database comes back. Leaving (:meth:`FleetBudget.aclose`) releases
the grant; a replica that dies holds it until it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from ...domain.backoff import FleetCounts, RetryBudget
from ...errors import OrchestratorError
from ..logs import get_logger
from ..stores.budget_sql import FleetTotals, Publication
from ..stores.leases import holder_id
from .clock import Clock, Sleep

__all__ = [
    "DEFAULT_POLL",
    "DEFAULT_SYNC_INTERVAL",
    "WANTING_FOR",
    "BudgetExchange",
    "FleetBudget",
    "fleet_view",
]

DEFAULT_SYNC_INTERVAL = 0.1
"""Seconds between exchanges: how stale the other replicas' counts may be."""
DEFAULT_POLL = 0.01
"""Seconds between local looks for a retry spent here, which is published at once."""
WANTING_FOR = 1.0
"""Seconds a replica keeps wanting retries after it last spent or was refused one: only
replicas that want retries are dealt a part of the headroom."""
SWEEP_EVERY = 600
"""Exchanges between two sweeps of old rows (about a minute at the default interval)."""
SWEEP_BATCH = 1000

log = get_logger("orchestrator")


class BudgetExchange(Protocol):
    """The shared counts (:class:`~..stores.budget_sql.BudgetSql`)."""

    async def exchange(
        self,
        holder: str,
        *,
        width: float,
        buckets: int,
        settle: Callable[[FleetTotals], Publication],
    ) -> FleetTotals: ...

    async def release(self, holder: str) -> None: ...

    async def sweep(self, *, width: float, keep: int, limit: int) -> int: ...


def fleet_view(totals: FleetTotals, holder: str, *, wanting: bool = True) -> FleetCounts:
    """The other replicas' counts and grants, how many replicas count (those with counts
    in the window or a grant), how many share the headroom (those that want retries,
    ``holder`` when ``wanting``) and ``holder``'s rank among those."""
    others = {h: counts for h, counts in totals.by_holder.items() if h != holder}
    granted = {h: units for h, units in totals.granted.items() if h != holder}
    sharing = sorted({h for h in totals.wanting if h != holder} | ({holder} if wanting else set()))
    return FleetCounts(
        requests=sum(r for r, _ in others.values()),
        retries=sum(t for _, t in others.values()),
        replicas=len({*others, *granted, holder}),
        rank=sharing.index(holder) if wanting else 0,
        turn=totals.bucket,
        granted=sum(granted.values()),
        sharing=len(sharing) if wanting else 0,
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
        self._exchanging = asyncio.Lock()  # one exchange at a time: each publishes once
        self._exchanged = asyncio.Condition()
        self._settled = self._done = 0  # exchanges settled / completed (their numbers)
        self._wanted_at: float | None = None  # the last time retries were spent or refused
        self.exchanges = 0

    def __repr__(self) -> str:
        return f"<FleetBudget holder={self.holder} exchanges={self.exchanges} {self.budget!r}>"

    async def sync(self) -> FleetCounts:
        """Publish the counts added since the last exchange, take in the fleet's and this
        replica's new grant; the others' view."""
        budget, seen = self.budget, []

        def settle(totals: FleetTotals) -> Publication:  # no await from here to the write
            counted, now = budget.counted, self._clock()
            if counted[1] != self._sent[1] or budget.share_refusals != self._refusals:
                self._wanted_at = now
            wanted_at = self._wanted_at
            wanting = wanted_at is not None and now - wanted_at < WANTING_FOR
            view = fleet_view(totals, self.holder, wanting=wanting)
            granted = budget.deal(view, now)
            budget.observe_fleet(view, now, granted=granted)
            sent, self._sent = self._sent, counted
            self._refusals = budget.share_refusals
            self._settled += 1
            seen.append((view, sent, self._settled))
            return Publication(counted[0] - sent[0], counted[1] - sent[1], granted, wanting)

        async with self._exchanging:
            try:
                await self._exchange.exchange(
                    self.holder, width=budget.width, buckets=budget.buckets, settle=settle
                )
            except BaseException:
                if seen:  # settled, then the write failed: nothing of it may count
                    budget.withdraw_grant()
                    self._sent = seen[0][1]
                raise
        self.exchanges += 1
        async with self._exchanged:
            self._done = seen[0][2]
            self._exchanged.notify_all()
        return seen[0][0]

    async def regrant(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) for an exchange that settles after this call
        and so sees what was spent or refused before it; whether one completed. A retry
        refused only by this replica's grant waits here (the refusal wakes the syncer)
        and asks again."""
        target = self._settled + 1
        try:
            async with asyncio.timeout(timeout), self._exchanged:
                await self._exchanged.wait_for(lambda: self._done >= target)
        except TimeoutError:
            return False
        return True

    async def __aenter__(self) -> FleetBudget:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop syncing and release the grant (the counts not yet published are lost with
        the replica)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        try:
            async with self._exchanging:
                await self._exchange.release(self.holder)
        except OrchestratorError as exc:  # the grant expires on its own
            log.warning("orchestrator.retry_grant_release_failed", error=exc.code)

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
        """Delete count rows older than two windows and expired grants."""
        budget = self.budget
        keep = 2 * budget.buckets
        return await self._exchange.sweep(width=budget.width, keep=keep, limit=SWEEP_BATCH)
