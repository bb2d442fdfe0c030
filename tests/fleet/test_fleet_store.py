"""The shared rows' statements (:mod:`openclaw_orchestrator.server.stores.fleet`) on a fresh
PostgreSQL database: versions in commit order, registrations new or refreshed, expiry by the
database's clock, tombstones, and the rules on verdicts (down by anyone, once; the rest
only by the probe lease's holder, over the verdict it saw or its own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from openclaw_orchestrator.server.stores.fleet import FleetStore
from openclaw_orchestrator.server.stores.postgres import PostgresStore

from ..storage_faults import postgres_database

SPEC = {"name": "X", "url": "http://127.0.0.1:9", "driver": "worker"}


@pytest_asyncio.fixture
async def stores() -> AsyncIterator[tuple[FleetStore, PostgresStore]]:
    """The fleet's statements and the lease store, on a fresh database."""
    async with postgres_database() as url:
        store = PostgresStore(url)
        await store.open()
        try:
            yield FleetStore(store.engine), store
        finally:
            await store.aclose()


async def test_registrations_heartbeats_and_tombstones_in_version_order(
    stores: tuple[FleetStore, PostgresStore],
) -> None:
    """New, then a heartbeat (not new, same process), then another URL (fresh: verdict
    reset), then unregistered (a row without spec); a poll from 0 sees each name's last row,
    versions increasing, and a poll from the newest version sees nothing."""
    fleet, _ = stores
    first = await fleet.register("X", SPEC, None, "r1")
    again = await fleet.register("X", SPEC, None, "r2")
    moved = await fleet.register("X", {**SPEC, "url": "http://127.0.0.1:10"}, None, "r1")
    assert (first.created, again.created, moved.created) == (True, False, False)
    assert (first.fresh, again.fresh, moved.fresh) == (True, False, True)
    assert first.row.version < again.row.version < moved.row.version
    await fleet.register("Y", {**SPEC, "name": "Y"}, None, "r1")
    gone = await fleet.unregister("X")
    assert gone is not None
    assert await fleet.unregister("X") is None
    changes = await fleet.changes(0)
    rows = {row.name: row for row in changes.instances}
    assert rows["X"].spec is None
    assert rows["Y"].spec is not None
    assert [r.version for r in changes.instances] == sorted(r.version for r in changes.instances)
    assert {v.instance: v.state for v in changes.verdicts} == {"X": "unknown", "Y": "unknown"}
    assert (await fleet.changes(changes.version)).instances == []
    assert "127.0.0.1" not in repr(rows["Y"])  # a row's repr leaves its spec out


async def test_expiry_is_the_database_clocks(stores: tuple[FleetStore, PostgresStore]) -> None:
    """``expires_at`` is the database's now plus the TTL; a poll's now passes it once the
    TTL is over, and a heartbeat after that is a new registration."""
    fleet, _ = stores
    written = await fleet.register("X", SPEC, 0.3, "r1")
    assert written.row.expires_at == written.now + 0.3
    assert written.row.is_live((await fleet.changes(0)).now)
    await asyncio.sleep(0.4)
    assert not written.row.is_live((await fleet.changes(0)).now)
    assert (await fleet.register("X", SPEC, 0.3, "r1")).created


async def test_down_by_anyone_once_recovery_only_by_the_lease_holder(
    stores: tuple[FleetStore, PostgresStore],
) -> None:
    """A down verdict is written once (again: nothing); a healthy one is refused without the
    probe lease, accepted from its holder over the version it saw, refused over a newer one
    of another replica, and accepted over its own."""
    fleet, leases = stores
    down = await fleet.mark_down("X", "refused", "r2")
    assert down is not None
    assert await fleet.mark_down("X", "refused again", "r3") is None
    decide = {"origin": "r1", "lease": "probe:X"}
    assert await fleet.decide("X", "healthy", "ok", based_on=down.version, **decide) is None
    assert await leases.acquire_lease("probe:X", "r1", 5.0) is not None
    healthy = await fleet.decide("X", "healthy", "ok", based_on=down.version, **decide)
    assert healthy is not None
    assert (healthy.state, healthy.origin) == ("healthy", "r1")
    newer = await fleet.mark_down("X", "timeout", "r2")
    assert newer is not None
    assert await fleet.decide("X", "healthy", "ok", based_on=healthy.version, **decide) is None
    assert await fleet.verdict("X") == newer
    degraded = await fleet.decide("X", "degraded", "slow", based_on=newer.version, **decide)
    assert degraded is not None
    again = await fleet.decide("X", "healthy", "ok", based_on=0, **decide)  # over its own
    assert again is not None
    assert again.version > degraded.version
