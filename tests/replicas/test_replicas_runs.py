"""Durable runs across three replica processes on one PostgreSQL database: every run is
worked on once, by one replica, whichever replica took the submit; and ``kill -9`` of the
replica working on a run hands it to another once its lease runs out — dispatched again
only when it carries an Idempotency-Key, else ``failed`` as ``interrupted`` (it ran once on
the instance and is never run twice)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from openclaw_orchestrator.sdk.events import SseParser

from .harness import CLUSTER_TEST_TIMEOUT, Replica, ReplicaCluster, replica_cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(CLUSTER_TEST_TIMEOUT),
]

RUN_LEASE = 3.0
"""Short enough that the kill tests wait little for a dead replica's lease, long enough that a
replica starved of CPU for a second on a loaded machine keeps its runs (with 1.0 a full run
once saw one of thirty runs end ``failed``: a lease renewed every third of a second and lost
has another replica judge the run interrupted, as the rules say)."""
SETTINGS = {"runs": {"lease_ttl": RUN_LEASE, "poll_interval": 0.1}}
R = "/api/orchestrator/runs"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReplicaCluster]:
    folder = tmp_path_factory.mktemp("replicas-runs")
    async with replica_cluster(folder, instances=("A", "B"), settings=SETTINGS) as started:
        yield started


def tasks_run(cluster: ReplicaCluster, n: int) -> int:
    return sum(instance.handler.tasks[n] for instance in cluster.instances)


async def submit(
    cluster: ReplicaCluster, body: dict[str, Any], *, base: str, key: str | None = None
) -> dict[str, Any]:
    headers = dict(cluster.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    async with cluster.http.post(base + R, json=body, headers=headers) as resp:
        reply: dict[str, Any] = await resp.json()
        assert resp.status == 202, reply
        return reply


async def finished(cluster: ReplicaCluster, run_id: str, wait: float = 20.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    until = loop.time() + wait
    while True:
        async with cluster.http.get(
            f"{cluster.front.url}{R}/{run_id}?wait=5s", headers=cluster.headers
        ) as resp:
            reply: dict[str, Any] = await resp.json()
        if reply.get("finished_at") is not None or loop.time() > until:
            return reply


async def holder_of(cluster: ReplicaCluster, run_id: str) -> Replica:
    """The replica whose lease the run is under (its holder id carries the pid)."""
    dsn = cluster.database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        holder = await conn.fetchval("SELECT holder FROM orchestrator_runs WHERE id = $1", run_id)
    finally:
        await conn.close()
    pid = int(str(holder).split(":")[1])
    (replica,) = [r for r in cluster.replicas if r.pid == pid]
    return replica


async def test_each_run_is_worked_on_once_whichever_replica_took_it(
    cluster: ReplicaCluster,
) -> None:
    """Thirty runs, ten submitted to each replica at once: thirty executions, no more."""
    numbers = [cluster.next_n() for _ in range(30)]
    replies = await asyncio.gather(
        *(
            submit(
                cluster,
                {"kind": "route", "instances": ["A", "B"], "payload": {"n": n}},
                base=cluster.replicas[k % 3].url,
            )
            for k, n in enumerate(numbers)
        )
    )
    done = await asyncio.gather(*(finished(cluster, r["run_id"]) for r in replies))
    failed = [
        (d["state"], d.get("error"), d.get("attempts")) for d in done if d["state"] != "succeeded"
    ]
    assert not failed
    assert [tasks_run(cluster, n) for n in numbers] == [1] * 30
    assert all(d["attempts"] == 1 for d in done)


@pytest.mark.parametrize("key", [None, "run-kill-key"])
async def test_kill_9_of_the_replica_working_on_a_run_hands_it_on(
    cluster: ReplicaCluster, key: str | None
) -> None:
    n = cluster.next_n()
    body = {"kind": "route", "instances": ["A"], "payload": {"n": n, "sleep": 1.0}}
    handler = cluster.instance("A").handler
    handler.started.clear()
    reply = await submit(
        cluster, body, base=cluster.replicas[0].url, key=None if key is None else f"{key}-{n}"
    )
    await asyncio.wait_for(handler.started.wait(), 10)
    victim = await holder_of(cluster, reply["run_id"])
    await victim.kill9()
    try:
        done = await finished(cluster, reply["run_id"])
    finally:
        await victim.start()
    await asyncio.sleep(1.2)  # the dead replica's call has ended on the instance
    runs = tasks_run(cluster, n)
    print(f"\nrun after kill -9 (key={key is not None}): {done['state']}, {runs} run(s)")
    if key is None:
        assert done["state"] == "failed"
        assert done["error"]["code"] == "interrupted"
        assert tasks_run(cluster, n) == 1  # it ran once, and is never run twice
    else:
        assert (done["state"], done["attempts"]) == ("succeeded", 2)
        assert tasks_run(cluster, n) == 2  # the key said repeating it is safe


async def events_through(
    cluster: ReplicaCluster, base: str, run_id: str, seen: list[tuple[str, Any]]
) -> None:
    """Read a run's event stream through ``base`` to its end, into ``seen``."""
    url = f"{base}{R}/{run_id}/events"
    parser = SseParser()
    async with cluster.http.get(url, headers=cluster.headers) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_any():
            seen.extend((event.type, event.data) for event in parser.feed(chunk))


async def test_a_run_submitted_on_one_replica_is_watched_and_cancelled_through_others(
    cluster: ReplicaCluster,
) -> None:
    n = cluster.next_n()
    body = {"kind": "route", "instances": ["A"], "payload": {"n": n, "sleep": 30.0}}
    handler = cluster.instance("A").handler
    handler.started.clear()
    one, two, three = (replica.url for replica in cluster.replicas)
    reply = await submit(cluster, body, base=one)
    seen: list[tuple[str, Any]] = []
    watching = asyncio.create_task(events_through(cluster, two, reply["run_id"], seen))
    await asyncio.wait_for(handler.started.wait(), 10)
    async with cluster.http.post(
        f"{three}{R}/{reply['run_id']}/cancel", headers=cluster.headers
    ) as resp:
        asked = await resp.json()
    assert (resp.status, asked["cancel_requested"]) == (200, True)
    await asyncio.wait_for(watching, 15)  # the holder stops it within about a second
    assert [data.get("state") for kind, data in seen if kind in ("state", "result")] == [
        "queued",
        "running",
        "cancelled",
    ]
    assert seen[-1][0] == "result"
    done = await finished(cluster, reply["run_id"])
    assert (done["state"], done["result"]) == ("cancelled", None)
