"""Issue 11, item 3: health shared by replicas on one PostgreSQL database.

Three in-process replicas probe instances that count the probes they answer. One replica
at a time owns an instance's probes (the lease ``probe:<instance>``), so the instance sees
about one probe per interval, not three; the owner closing hands the probes over. A down
verdict reached by one replica from a failed request (a refused connection, a timed-out
task) is every replica's within a few polls (0.1 s apart; 0.5 s asked for), and only the
probe owner brings an instance back. ``-s`` prints the numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import pytest
import pytest_asyncio

from openclaw_orchestrator.errors import OrchestratorError
from openclaw_orchestrator.models import RouteRequest
from openclaw_orchestrator.server.core.shared_fleet import probe_lease
from openclaw_orchestrator.server.stores.fleet import FleetStore

from ..storage_faults import postgres_database
from .replicas import ProbedInstance, Replica, probed_instance, replicas, wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

INTERVAL = 0.5
HEALTH = {"interval": INTERVAL, "probe_timeout": 0.5, "down_backoff": 2.0}
MAX_POLLS = 3  # the write after the failure, then the first poll that starts after it


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def instances() -> AsyncIterator[dict[str, ProbedInstance]]:
    """P (counted), D (to be refused), S (slow tasks, fast probes)."""
    async with (
        probed_instance("P") as p,
        probed_instance("D") as d,
        probed_instance("S") as s,
    ):
        yield {"P": p, "D": d, "S": s}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(instances: dict[str, ProbedInstance]) -> AsyncIterator[list[Replica]]:
    """Three replicas with P, D and S in their config, probing every 0.5 s, each instance
    healthy on every replica before the tests start."""
    static = [{"name": i.name, "url": i.url} for i in instances.values()]
    config = {"instances": {"static": static}, "health": HEALTH}
    async with postgres_database() as url, replicas(url, config) as started:
        for replica in started:
            for name in instances:
                await wait_until(partial(replica.is_in, name, "healthy"))
        yield started


async def owner_of(fleet: list[Replica], instance: str) -> int:
    """The replica holding ``probe:<instance>`` now, as the lease store says."""
    lease = await fleet[0].store.get_lease(probe_lease(instance))
    assert lease is not None
    return next(r.index for r in fleet if r.fleet.holder == lease.holder)


async def count_probes(instance: ProbedInstance, intervals: int) -> int:
    """Probes ``instance`` answers over ``intervals`` probe intervals."""
    before = instance.probes
    await asyncio.sleep(intervals * INTERVAL)
    return instance.probes - before


async def test_an_instance_sees_one_probe_per_interval_not_one_per_replica(
    fleet: list[Replica], instances: dict[str, ProbedInstance]
) -> None:
    """Over 8 intervals P answers 8 probes or so (at most 1.5 per interval; three replicas
    each probing would be 24), all from the one replica holding ``probe:P``."""
    probes = await count_probes(instances["P"], 8)
    print(f"3 replicas, 8 intervals of {INTERVAL} s: P answered {probes} probes")
    assert 4 <= probes <= 12
    owner = await owner_of(fleet, "P")
    assert [r.fleet.owns_probes("P") for r in fleet].count(True) == 1
    assert fleet[owner].fleet.owns_probes("P")


async def test_a_refused_request_on_one_replica_is_a_down_verdict_on_every_replica(
    fleet: list[Replica], instances: dict[str, ProbedInstance]
) -> None:
    """D stops while its probe owner waits (its next probe put off, so that only the
    request can find D gone); a route to D through another replica is refused: D is down
    there at once, by that replica's verdict, and on the two others within a few polls."""
    owner = await owner_of(fleet, "D")
    via = fleet[(owner + 1) % 3]
    owner_health = fleet[owner].orchestrator.registry.get("D").health
    owner_health.next_probe_at = fleet[owner].orchestrator.clock() + 60.0
    await instances["D"].stop()
    try:
        request = RouteRequest(payload={"n": 1}, instances="D")
        with pytest.raises(OrchestratorError):
            await via.orchestrator.route(request, request_id="down-1")
        assert via.state("D") == "down"
        for replica in fleet:
            if replica is not via:
                waited = await wait_until(partial(replica.is_in, "D", "down"), fleet=replica.fleet)
                print(f"refused on {via.index}, down on {replica.index} after {waited}")
                assert waited.polls <= MAX_POLLS
        stored = await FleetStore(via.store.engine).verdict("D")
        assert stored is not None
        assert (stored.state, stored.origin) == ("down", via.fleet.holder)
        assert stored.reason is not None
        assert stored.reason.startswith("request refused")
    finally:
        await instances["D"].start()
    for replica in fleet:  # the owner's probes (after down_backoff) bring it back everywhere
        await wait_until(partial(replica.is_in, "D", "healthy"))


async def test_a_timed_out_request_is_shared_and_only_the_probe_owner_recovers_it(
    fleet: list[Replica], instances: dict[str, ProbedInstance]
) -> None:
    """A task on S outlives its 0.2 s deadline on a non-owner: S is down on every replica.
    The non-owner's own probes change nothing (it may not probe S) and a recovery it tried
    to write is refused; after ``down_backoff`` the owner's probe finds S well and S is
    healthy everywhere, by the owner's verdict."""
    owner = await owner_of(fleet, "S")
    via = fleet[(owner + 1) % 3]
    request = RouteRequest(payload={"sleep": 1.0}, instances="S", timeout=0.2)
    with pytest.raises(OrchestratorError):
        await via.orchestrator.route(request, request_id="slow-1")
    for replica in fleet:
        waited = await wait_until(partial(replica.is_in, "S", "down"), fleet=replica.fleet)
        print(f"timed out on {via.index}, down on {replica.index} after {waited}")
        assert waited.polls <= MAX_POLLS
    assert await via.fleet.may_probe(via.orchestrator.registry.get("S")) is False
    store = FleetStore(via.store.engine)
    before = await store.verdict("S")
    assert before is not None
    assert before.state == "down"
    refused = await store.decide(
        "S", "healthy", "a non-owner's opinion", origin=via.fleet.holder,
        lease=probe_lease("S"), based_on=before.version,
    )  # fmt: skip
    assert refused is None
    assert await store.verdict("S") == before
    for replica in fleet:
        await wait_until(partial(replica.is_in, "S", "healthy"))
    recovered = await store.verdict("S")
    assert recovered is not None
    assert recovered.state == "healthy"
    assert recovered.origin == fleet[owner].fleet.holder
    print(f"S recovered by the owner (replica {owner}): {recovered.reason!r}")


async def test_the_probe_owner_closing_hands_its_probes_over(
    fleet: list[Replica], instances: dict[str, ProbedInstance]
) -> None:
    """The replica probing P closes (its lease released): another replica takes P's probes
    over, and P still sees about one probe per interval from the two left."""
    owner = await owner_of(fleet, "P")
    await fleet[owner].orchestrator.aclose()
    rest = [r for r in fleet if r.index != owner]
    waited = await wait_until(partial(_owned_by, rest, "P"))
    probes = await count_probes(instances["P"], 8)
    print(
        f"replica {owner} closed; P's probes taken over after {waited.seconds:.2f} s; "
        f"{probes} probes in 8 intervals"
    )
    assert 4 <= probes <= 12
    assert fleet[await owner_of(fleet, "P")] in rest


async def _owned_by(replicas: list[Replica], instance: str) -> bool:
    lease = await replicas[0].store.get_lease(probe_lease(instance))
    return lease is not None and lease.holder in {r.fleet.holder for r in replicas}
