"""The fleet seam (:mod:`openclaw_orchestrator.server.core.fleet`): one process keeps its
in-memory registry exactly as before (SQLite, or no store), replicas on PostgreSQL get the
:class:`SharedFleet`; what the shared fleet does without its database; and that it works
behind PgBouncer in transaction mode."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openclaw_orchestrator.domain.health import FailureKind, HealthPolicy
from openclaw_orchestrator.errors import NotFoundError, StorageUnavailableError
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.server.core.shared_fleet import SharedFleet, shared_fleet
from openclaw_orchestrator.server.stores.fleet import FleetStore
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url
from openclaw_orchestrator.settings import Settings
from tests.fakes import FakeClock, FakeDriver

from ..stores.test_pgbouncer import through_pgbouncer
from .replicas import wait_until

SETTINGS = Settings.model_validate({"instances": [{"name": "A", "url": "http://127.0.0.1:9"}]})


def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_only_a_postgresql_store_gets_the_shared_fleet(tmp_path: Path) -> None:
    """SQLite and no store: None (the orchestrator keeps its in-memory registry)."""
    assert shared_fleet(None, SETTINGS) is None
    assert shared_fleet(SqliteStore(sqlite_url(tmp_path)), SETTINGS) is None
    store = PostgresStore(f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/x")
    fleet = shared_fleet(store, SETTINGS)
    assert isinstance(fleet, SharedFleet)
    assert fleet.lease_ttl == 60.0 + 5.0 + 2.0  # interval + probe_timeout + slack


async def test_one_process_keeps_its_registry_and_its_own_clock() -> None:
    """Without a shared fleet: 201 then 200 (heartbeat), expiry by the process's clock,
    404 for an unknown name, a config instance removable until the next restart."""
    clock = FakeClock()
    orchestrator = Orchestrator(SETTINGS, drivers={"worker": FakeDriver()}, clock=clock)
    spec = InstanceSpec(name="Z", url="http://127.0.0.1:9/z", heartbeat_ttl=1.0)
    assert (await orchestrator.register(spec))[1] is True
    assert (await orchestrator.register(spec))[1] is False
    clock.now += 0.5
    assert orchestrator.registry.expire(clock()) == []
    clock.now += 1.0
    assert [r.name for r in orchestrator.registry.expire(clock())] == ["Z"]
    with pytest.raises(NotFoundError):
        await orchestrator.unregister("Z")
    await orchestrator.unregister("A")
    assert len(orchestrator.registry) == 0


async def test_without_its_database_a_replica_refuses_registrations_and_probes_alone() -> None:
    """The database unreachable: start does not fail (the polls say so and retry), a
    registration is a 503, and the probe gate lets this replica probe (one probe per
    replica rather than none)."""
    store = PostgresStore(f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/x")
    fleet = SharedFleet(FleetStore(store.engine), store, HealthPolicy())
    record, _ = fleet.registry.upsert(InstanceSpec(name="A", url="http://127.0.0.1:9"), "config", 0)
    await fleet.start()
    try:
        with pytest.raises(StorageUnavailableError):
            await fleet.register(InstanceSpec(name="B", url="http://127.0.0.1:9"), 0.0)
        assert "B" not in fleet.registry
        assert await fleet.may_probe(record) is True
        assert fleet.polls == 0
    finally:
        await fleet.aclose()
        await store.aclose()


@contextlib.asynccontextmanager
async def fleets_behind_pgbouncer(count: int) -> AsyncIterator[list[SharedFleet]]:
    """``count`` started fleets, each on its own store, all through one PgBouncer."""
    async with through_pgbouncer() as url, contextlib.AsyncExitStack() as stack:
        fleets = []
        for _ in range(count):
            store = PostgresStore(url, transaction_pooling=True)
            await store.open()
            stack.push_async_callback(store.aclose)
            fleet = SharedFleet(FleetStore(store.engine), store, HealthPolicy(interval=1.0))
            await fleet.start()
            stack.push_async_callback(fleet.aclose)
            fleets.append(fleet)
        yield fleets


async def test_the_shared_fleet_works_behind_pgbouncer_in_transaction_mode() -> None:
    """Registrations, a down verdict and the probe lease through PgBouncer (transaction
    mode, two server connections): no prepared-statement or session-state error."""
    async with fleets_behind_pgbouncer(2) as (one, two):
        for n in range(20):
            await one.register(InstanceSpec(name=f"N{n}", url="http://127.0.0.1:9"), 0.0)
        await wait_until(lambda: len(two.registry) == 20)
        record = one.registry.get("N3")
        record.health.record_request_failure(FailureKind.REFUSED, "refused", 0.0)
        await wait_until(lambda: two.registry.get("N3").health.is_down())
        gates = [await f.may_probe(f.registry.get("N5")) for f in (one, two)]
        assert sorted(gates) == [False, True]
        await two.unregister("N7")
        await wait_until(lambda: "N7" not in one.registry)
