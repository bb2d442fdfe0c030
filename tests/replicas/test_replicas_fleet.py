"""Issue 11, items 2 and 3, across three ``serve`` processes on one PostgreSQL database
behind the round-robin front (:mod:`.harness`): a registration through the front is every
replica's within 1 s, heartbeats spread over the replicas never let it expire and the
database's clock expires it once they stop; an instance sees one probe per interval, not
three; ``kill -9`` of its probe owner hands the probes to another replica once the lease
expires; a down verdict reached by one replica is every replica's within 0.5 s. Each test
prints its numbers (``-s``)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from ..fleet.replicas import ProbedInstance, probed_instance
from .harness import CLUSTER_TEST_TIMEOUT, Replica, ReplicaCluster, replica_cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(CLUSTER_TEST_TIMEOUT),
]

INTERVAL = 1.0
HEALTH = {"interval": INTERVAL, "probe_timeout": 0.5, "down_backoff": 3.0}
LEASE_TTL = INTERVAL + 0.5 + 2.0  # interval + probe_timeout + LEASE_SLACK
SEEN_WITHIN = 1.0  # issue 11: a registration is every replica's within 1 s
DOWN_WITHIN = 0.5  # and a down verdict within 0.5 s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def probed() -> AsyncIterator[dict[str, ProbedInstance]]:
    """P (its probes counted) and S (slow tasks, fast probes), in this test's loop."""
    async with probed_instance("P") as p, probed_instance("S") as s:
        yield {"P": p, "S": s}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    tmp_path_factory: pytest.TempPathFactory, probed: dict[str, ProbedInstance]
) -> AsyncIterator[ReplicaCluster]:
    """Three replicas probing every second; P and S registered through the front."""
    folder = tmp_path_factory.mktemp("replicas-fleet")
    async with replica_cluster(folder, instances=("A",), settings={"health": HEALTH}) as c:
        for instance in probed.values():
            status, _ = await register(c, {"name": instance.name, "url": instance.url})
            assert status == 201
        for replica in c.replicas:
            for name in probed:
                await until(partial(state_on, c, replica, name), "healthy")
        yield c


async def register(cluster: ReplicaCluster, body: dict[str, Any]) -> tuple[int, Any]:
    """``POST /api/cluster/register`` through the front: status and body."""
    url = cluster.front.url + "/api/cluster/register"
    async with cluster.http.post(url, json=body, headers=cluster.headers) as resp:
        return resp.status, await resp.json()


async def names_on(cluster: ReplicaCluster, replica: Replica) -> set[str]:
    """The instances ``replica`` itself lists."""
    url = replica.url + "/api/cluster/instances"
    async with cluster.http.get(url, headers=cluster.headers) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return {i["name"] for i in body["instances"]}


async def state_on(cluster: ReplicaCluster, replica: Replica, name: str) -> str | None:
    """``name``'s health state on ``replica`` itself (None when it does not know it)."""
    url = replica.url + "/api/orchestrator/health"
    async with cluster.http.get(url, params={"instances": name}, headers=cluster.headers) as r:
        body = await r.json()
        return body.get(name) if r.status == 200 else None


async def until(probe: Callable[[], Awaitable[Any]], expected: Any, limit: float = 20.0) -> float:
    """Seconds until ``await probe()`` equals ``expected`` (polled every 10 ms)."""
    started = time.monotonic()
    while (await probe()) != expected:
        assert time.monotonic() - started < limit, f"not {expected!r} after {limit} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def probe_owner(cluster: ReplicaCluster, instance: str) -> int | None:
    """The index of the replica whose process holds ``probe:<instance>`` (by pid)."""
    engine = create_async_engine(cluster.database_url)
    try:
        async with engine.connect() as conn:
            holder = (
                await conn.execute(
                    text(
                        "SELECT holder FROM orchestrator_leases "
                        "WHERE name = :name AND expires_at > now()"
                    ),
                    {"name": f"probe:{instance}"},
                )
            ).scalar()
    finally:
        await engine.dispose()
    if holder is None:
        return None
    pid = int(holder.split(":")[1])
    return next(r.index for r in cluster.replicas if r.pid == pid)


async def test_a_registration_through_the_front_is_every_replicas_within_a_second(
    cluster: ReplicaCluster, probed: dict[str, ProbedInstance]
) -> None:
    """201 through the front, then listed by every replica itself within 1 s; the same
    registration again (each time another replica) is a heartbeat: 200."""
    status, body = await register(cluster, {"name": "R", "url": probed["P"].url})
    assert status == 201, body
    seen = await asyncio.gather(
        *(until(partial(_has, cluster, r, "R"), True) for r in cluster.replicas)
    )
    print(f"registration seen by the 3 replicas after {[round(s, 3) for s in seen]} s")
    assert max(seen) <= SEEN_WITHIN
    statuses = [
        (await register(cluster, {"name": "R", "url": probed["P"].url}))[0] for _ in range(3)
    ]
    assert statuses == [200, 200, 200]
    url = cluster.front.url + "/api/cluster/instances/R"
    async with cluster.http.delete(url, headers=cluster.headers) as resp:
        assert resp.status == 200
    gone = await asyncio.gather(
        *(until(partial(_has, cluster, r, "R"), False) for r in cluster.replicas)
    )
    print(f"unregistration seen by the 3 replicas after {[round(s, 3) for s in gone]} s")
    assert max(gone) <= SEEN_WITHIN


async def _has(cluster: ReplicaCluster, replica: Replica, name: str) -> bool:
    return name in await names_on(cluster, replica)


async def test_heartbeats_over_the_replicas_never_expire_and_the_database_clock_ends_it(
    cluster: ReplicaCluster, probed: dict[str, ProbedInstance]
) -> None:
    """``heartbeat_ttl`` 1 s, 15 heartbeats 0.3 s apart through the front (round robin: each
    lands on another replica): a heartbeat within the TTL of the one before is a 200, never
    a 201, and no replica misses H while its last heartbeat is within the TTL. Heartbeats
    stopped: every replica drops it.

    Judged per heartbeat on the test's clock, which bounds the server's: a request sent at
    ``s`` and answered at ``r`` was handled between them. A heartbeat that a loaded machine
    made later than the TTL may rightly register H anew, and is not judged (CI saw two such
    among 15 when heartbeats were counted blind)."""
    ttl = 1.0
    body = {"name": "H", "url": probed["P"].url, "heartbeat_ttl": ttl}
    last_sent = time.monotonic()
    assert (await register(cluster, body))[0] == 201
    for replica in cluster.replicas:
        await until(partial(_has, cluster, replica, "H"), True)
    statuses: list[int] = []
    late = checks = misses = 0
    for _ in range(15):
        sent = time.monotonic()
        status = (await register(cluster, body))[0]
        if time.monotonic() - last_sent < ttl:  # renewed before the last beat could expire
            statuses.append(status)
        else:
            late += 1
        last_sent = sent
        for replica in cluster.replicas:
            present = await _has(cluster, replica, "H")
            if time.monotonic() < last_sent + ttl:  # asked before the beat could expire
                checks += 1
                misses += not present
        await asyncio.sleep(0.3)
    print(f"15 heartbeats: {late} late, statuses {set(statuses)}; {misses} misses of {checks}")
    assert (set(statuses), misses) == ({200}, 0)
    assert len(statuses) >= 8  # enough of them were in time to judge
    assert checks >= 8
    for replica in cluster.replicas:
        await until(partial(_has, cluster, replica, "H"), False)


async def test_an_instance_sees_one_probe_per_interval_from_three_replicas(
    cluster: ReplicaCluster, probed: dict[str, ProbedInstance]
) -> None:
    """Over 6 intervals P answers about 6 probes (at most 9: three replicas each probing
    would make 18), from the one replica holding ``probe:P``."""
    before = probed["P"].probes
    await asyncio.sleep(6 * INTERVAL)
    probes = probed["P"].probes - before
    print(f"3 replicas, 6 intervals of {INTERVAL} s: P answered {probes} probes")
    assert 3 <= probes <= 9
    assert await probe_owner(cluster, "P") is not None


async def test_kill_9_of_the_probe_owner_hands_the_probes_to_another_replica(
    cluster: ReplicaCluster, probed: dict[str, ProbedInstance]
) -> None:
    """``kill -9`` of the replica probing P: P's probes pause until that lease expires,
    then another replica probes it, once per interval again."""
    owner = await probe_owner(cluster, "P")
    assert owner is not None
    killed = cluster.replicas[owner]
    counter = probed["P"].counter
    await killed.kill9()
    killed_at = time.monotonic()
    try:
        waited = await until(partial(_new_owner, cluster, owner), True, limit=4 * LEASE_TTL)
        last_before = max((t for t in counter.times if t <= killed_at), default=killed_at)
        first_after = await _first_probe_after(counter.times, killed_at + 0.05)
        gap = first_after - last_before
        print(
            f"owner {owner} killed; new owner after {waited:.2f} s; probe gap {gap:.2f} s "
            f"(lease {LEASE_TTL} s + interval {INTERVAL} s)"
        )
        before = counter.probes
        await asyncio.sleep(6 * INTERVAL)
        probes = counter.probes - before
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(counter.times[-probes - 1 :])]
        print(f"2 replicas left, 6 intervals: P answered {probes} probes, gaps {gaps}")
        assert 3 <= probes <= 9
    finally:
        await killed.start()


async def _new_owner(cluster: ReplicaCluster, old: int) -> bool:
    owner = await probe_owner(cluster, "P")
    return owner is not None and owner != old


async def _first_probe_after(times: list[float], after: float) -> float:
    async def any_after() -> bool:
        return any(t > after for t in times)

    await until(any_after, True)
    return min(t for t in times if t > after)


async def test_a_down_verdict_from_one_replica_is_every_replicas_within_half_a_second(
    cluster: ReplicaCluster, probed: dict[str, ProbedInstance]
) -> None:
    """A task on S outlives its 0.3 s deadline on one replica (504): S is down there, and
    on the two others within 0.5 s; S's probes are fine, so the down verdict is that
    replica's alone. After ``down_backoff`` the probe owner's probe brings S back."""
    owner = await probe_owner(cluster, "S")
    via = cluster.replicas[((owner or 0) + 1) % 3]
    others = [r for r in cluster.replicas if r is not via]
    body = {"payload": {"sleep": 2.0}, "instances": "S", "timeout": 0.3}
    url = via.url + "/api/orchestrator/route"
    async with cluster.http.post(url, json=body, headers=cluster.headers) as resp:
        assert resp.status in (503, 504), await resp.text()
    assert await state_on(cluster, via, "S") == "down"
    seen = await asyncio.gather(
        *(until(partial(state_on, cluster, r, "S"), "down") for r in others)
    )
    print(f"down on replica {via.index}; on the others after {[round(s, 3) for s in seen]} s")
    assert max(seen) <= DOWN_WITHIN
    for replica in cluster.replicas:
        await until(partial(state_on, cluster, replica, "S"), "healthy")
