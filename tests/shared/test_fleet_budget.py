"""The retry budget fleet-wide: the pure share rule of
:meth:`~openclaw_orchestrator.domain.backoff.RetryBudget.observe_fleet`, then replicas'
:class:`~openclaw_orchestrator.server.core.fleet_budget.FleetBudget` syncers exchanging their
counts through a fresh PostgreSQL database (skipped with the reason when none answers)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from openclaw_orchestrator.domain.backoff import FleetCounts, RetryBudget
from openclaw_orchestrator.server.core.fleet_budget import FleetBudget, fleet_view
from openclaw_orchestrator.server.stores.budget_sql import GRANT_MARGIN, BudgetSql, FleetTotals
from openclaw_orchestrator.server.stores.postgres import PostgresStore

from ..storage_faults import postgres_database

RATIO, MIN_RETRIES = 0.2, 10
ROUTES, WANTED = 60, 3  # 60 failing routes, each wanting up to 3 retries
EXPECTED = MIN_RETRIES + RATIO * ROUTES  # 22: what one process allows


def budget(window: float = 10.0) -> RetryBudget:
    return RetryBudget(ratio=RATIO, window=window, min_retries=MIN_RETRIES)


def spend_route(one: RetryBudget, now: float) -> int:
    """One failing route: a first attempt, then retries while the budget allows."""
    one.record_request(now)
    return sum(1 for _ in range(WANTED) if one.try_spend(now))


def test_one_budget_allows_min_plus_ratio_of_requests() -> None:
    alone = budget()
    assert sum(spend_route(alone, 1.0) for _ in range(ROUTES)) == EXPECTED


def test_headroom_is_dealt_round_robin_from_the_turn() -> None:
    """Ten units of headroom over three replicas: 4, 3, 3, the fourth to whoever the turn
    starts at; nothing spent beyond a replica's units until it earns more."""
    shares = []
    for rank in range(3):
        one = budget()
        one.observe_fleet(FleetCounts(requests=0, retries=0, replicas=3, rank=rank, turn=1), 0.0)
        shares.append(sum(1 for _ in range(20) if one.try_spend(0.0)))
    assert shares == [3, 4, 3]


def test_requests_earned_since_the_sync_are_this_replicas_to_spend() -> None:
    """With no headroom left at the sync, five first attempts here earn one retry; a
    refusal by the share (not by the fleet's total) is counted, so the syncer syncs early."""
    one = budget()
    one.observe_fleet(FleetCounts(requests=0, retries=10, replicas=3, rank=0), 0.0)
    assert one.is_tight
    assert not one.try_spend(0.0)  # the fleet spent the minimum already
    assert one.share_refusals == 0
    for _ in range(5):
        one.record_request(0.0)
    assert one.try_spend(0.0)  # 5 requests here earned one retry
    assert not one.try_spend(0.0)
    assert one.counted == (5, 1)
    roomy = budget()
    roomy.observe_fleet(FleetCounts(requests=100, retries=10, replicas=3, rank=0), 0.0)
    assert not roomy.is_tight
    assert sum(1 for _ in range(10) if roomy.try_spend(0.0)) == 7  # 20 units over three
    assert roomy.share_refusals == 3  # the fleet had headroom: news for the syncer


def test_only_replicas_that_want_retries_share_the_headroom() -> None:
    """Two idle replicas hold nothing: the one that wants retries is dealt all the
    headroom; an idle one is dealt nothing, and counts as a replica all the same."""
    totals = FleetTotals(0, {"r1": (0, 0), "r2": (0, 0)}, {"r1": 0, "r2": 0}, frozenset())
    busy = fleet_view(totals, "r0", wanting=True)
    assert (busy.replicas, busy.sharing, busy.rank) == (3, 1, 0)
    assert budget().deal(busy, 0.0) == MIN_RETRIES
    idle = fleet_view(totals, "r0", wanting=False)
    assert (idle.replicas, idle.sharing) == (3, 0)
    assert budget().deal(idle, 0.0) == 0
    both = FleetTotals(0, {}, {"r2": 4}, frozenset({"r2"}))
    view = fleet_view(both, "r1", wanting=True)
    assert (view.sharing, view.rank, view.granted) == (2, 0, 4)
    assert budget().deal(view, 0.0) == 5  # its half of ten, and r2 holds four


def test_a_view_older_than_the_window_is_ignored() -> None:
    one = budget()
    one.observe_fleet(FleetCounts(requests=0, retries=100, replicas=3), 0.0)
    assert not one.try_spend(5.0)
    assert one.try_spend(10.5)  # the syncer stopped: the budget is local again
    assert "fleet" not in repr(one)


@pytest.mark.parametrize("sync_every", [1, 3, 9])
def test_three_replicas_stay_near_the_ratio_of_the_fleets_traffic(sync_every: int) -> None:
    """60 failing routes in turn over three replicas that exchange, one after the other,
    after every ``sync_every`` routes: the fleet's retries stay within 10 % of 22 (each
    alone would allow 14, 42 in all)."""
    replicas = [budget() for _ in range(3)]
    published = [(0, 0)] * 3
    grants = {f"r{i}": 0 for i in range(3)}
    spent = 0
    for route in range(ROUTES):
        if route % sync_every == 0:
            for i, one in enumerate(replicas):
                rows = {f"r{j}": published[j] for j in range(3)}
                view = fleet_view(FleetTotals(route, rows, grants), f"r{i}")
                grants[f"r{i}"] = one.deal(view, 1.0)
                one.observe_fleet(view, 1.0, granted=grants[f"r{i}"])
                published[i] = one.counted
        spent += spend_route(replicas[route % 3], 1.0)
    assert abs(spent - EXPECTED) <= 0.1 * EXPECTED, spent


def test_grants_never_add_up_to_more_than_the_headroom() -> None:
    """However stale the views: three replicas that each exchange once, in turn, while
    the others spend from their grants, never spend more than the fleet allows."""
    replicas = [budget() for _ in range(3)]
    published = [(0, 0)] * 3
    grants = {f"r{i}": 0 for i in range(3)}
    for i, one in enumerate(replicas):  # each sees the others' grants, not their spending
        rows = {f"r{j}": published[j] for j in range(3)}
        view = fleet_view(FleetTotals(0, rows, grants), f"r{i}")
        grants[f"r{i}"] = one.deal(view, 1.0)
        one.observe_fleet(view, 1.0, granted=grants[f"r{i}"])
    assert sum(grants.values()) == MIN_RETRIES
    spent = sum(1 for one in replicas for _ in range(20) if one.try_spend(1.0))
    assert spent == MIN_RETRIES


# -- through PostgreSQL --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def syncers(url: str, n: int, window: float = 10.0) -> AsyncIterator[list[FleetBudget]]:
    """``n`` replicas' budgets, each synced through a PostgresStore of its own."""
    async with contextlib.AsyncExitStack() as stack:
        synced = []
        for _ in range(n):
            store = PostgresStore(url)
            await store.open()
            stack.push_async_callback(store.aclose)
            fleet = FleetBudget(budget(window), BudgetSql(store.engine), clock=time.monotonic)
            synced.append(await stack.enter_async_context(fleet))
        yield synced


async def failing_routes(synced: list[FleetBudget]) -> int:
    """60 failing routes in turn over the replicas, each a few milliseconds apart (a
    failing instance answering fast): the retries the fleet allowed."""
    spent = 0
    for route in range(ROUTES):
        spent += spend_route(synced[route % len(synced)].budget, time.monotonic())
        await asyncio.sleep(0.005)
    return spent


@pytest.mark.parametrize("replicas", [1, 3])
async def test_the_fleet_keeps_the_ratio_through_postgres(replicas: int) -> None:
    """One or three replicas: the fleet allows 22 retries, within 10 % and never more."""
    async with postgres_database() as url, syncers(url, replicas) as synced:
        await asyncio.gather(*(s.sync() for s in synced))
        spent = await failing_routes(synced)
        await asyncio.sleep(0.2)
        view = await synced[0].sync()
    print(f"retries with {replicas} replica(s): {spent} (ratio allows {EXPECTED:g})")
    assert abs(spent - EXPECTED) <= 0.1 * EXPECTED, spent
    assert spent <= EXPECTED  # the grants never add up to more than the headroom
    assert view.replicas == replicas
    assert view.retries + synced[0].budget.counted[1] == spent  # every spend was published


async def test_a_replica_that_stops_syncing_leaves_the_fleet_after_a_window() -> None:
    """The others count a silent replica's rows only while they are in the window."""
    async with postgres_database() as url, syncers(url, 2, window=1.0) as (first, second):
        first.budget.record_request(time.monotonic())
        await first.sync()
        assert (await second.sync()).requests == 1
        await first.aclose()
        await asyncio.sleep(1.2)
        view = await second.sync()
    assert (view.replicas, view.requests, view.granted) == (1, 0, 0)


async def test_a_grant_held_by_a_replica_that_died_counts_until_it_expires() -> None:
    """A replica that stops without leaving keeps its grant for the window and the
    margin: the others are dealt only what it leaves, then everything."""
    async with postgres_database() as url, syncers(url, 2, window=1.0) as (first, second):
        assert first.budget.try_spend(time.monotonic())  # the first wants retries
        await first.sync()
        view = await second.sync()
        assert (view.replicas, view.granted) == (2, MIN_RETRIES - 1)  # all that is left
        assert not second.budget.try_spend(time.monotonic())
        dead = first._task
        assert dead is not None
        dead.cancel()  # dies: no release
        await asyncio.sleep(1.0 + GRANT_MARGIN + 0.3)
        view = await second.sync()
    assert (view.replicas, view.granted) == (1, 0)
    assert second.budget.try_spend(time.monotonic())


async def test_an_idle_replica_refused_by_its_grant_is_dealt_one_at_its_next_exchange() -> None:
    """Idle replicas hold no grant; the first retry refused by that wakes the syncer, and
    :meth:`FleetBudget.regrant` returns once an exchange has dealt it a part."""
    async with postgres_database() as url, syncers(url, 2) as (first, second):
        await asyncio.gather(first.sync(), second.sync())
        await second.sync()  # now it sees both
        assert not second.budget.try_spend(time.monotonic())
        assert second.budget.share_refusals == 1
        assert await second.regrant(2.0)
        assert second.budget.try_spend(time.monotonic())
