"""Issue 11, items 4 and 5: idempotency keys and the retry budget shared by three replicas
on one PostgreSQL database, through the round-robin front, with instances that count every
execution. Each test prints its numbers (``-s`` shows them).

Before (keys and budget per process): the same key through three replicas ran 3 times, a
fanout A-H x3 ran 24 tasks, and 60 failing routes retried 42 times on three replicas (22 on
one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from .harness import CLUSTER_TEST_TIMEOUT, ReplicaCluster, replica_cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(CLUSTER_TEST_TIMEOUT),
]

INSTANCES = tuple("ABCDEFGH")
WINDOW = 4.0
RATIO, MIN_RETRIES, ROUTES = 0.2, 10, 60
BUCKETS = 10
"""The budget's window is counted in ``BUCKETS`` buckets (``RetryBudget``'s default): what it
counts at a moment covers between ``WINDOW - WINDOW / BUCKETS`` and ``WINDOW`` seconds."""
SETTINGS = {
    "retry": {
        "budget_ratio": RATIO,
        "budget_min_retries": MIN_RETRIES,
        "budget_window": WINDOW,
        "backoff_base": 0.002,
        "backoff_max": 0.01,
    }
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReplicaCluster]:
    """Three replicas on a fresh database, counting instances A to H, one front."""
    folder = tmp_path_factory.mktemp("replicas-shared")
    async with replica_cluster(folder, instances=INSTANCES, settings=SETTINGS) as started:
        yield started


def tasks_run(cluster: ReplicaCluster, n: int) -> int:
    """How many times the instances executed the plain task numbered ``n``."""
    return sum(instance.handler.tasks[n] for instance in cluster.instances)


async def post(
    cluster: ReplicaCluster, path: str, body: Any, key: str | None = None, base: str | None = None
) -> tuple[int, dict[str, Any], bool]:
    """POST through the front (or to ``base``): status, JSON body, whether replayed."""
    headers = dict(cluster.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    url = (base or cluster.front.url) + path
    async with cluster.http.post(url, json=body, headers=headers) as resp:
        data = await resp.json()
        return resp.status, data, resp.headers.get("Idempotent-Replayed") == "true"


async def test_nine_concurrent_duplicates_run_once(cluster: ReplicaCluster) -> None:
    """Nine routes with one key at once, three per replica, the task slow enough that every
    duplicate arrives while it runs: one execution, eight replays of the same result."""
    n = cluster.next_n()
    body = {"instances": "A", "payload": {"n": n, "sleep": 0.5}}
    calls = [post(cluster, "/api/orchestrator/route", body, key=f"dup-{n}") for _ in range(9)]
    outcomes = await asyncio.gather(*calls)
    print(f"\n9 duplicates through 3 replicas: {tasks_run(cluster, n)} execution(s)")
    assert [status for status, _, _ in outcomes] == [200] * 9
    assert sorted(replayed for _, _, replayed in outcomes) == [False] + [True] * 8
    assert len({str(data["result"]) for _, data, _ in outcomes}) == 1
    assert tasks_run(cluster, n) == 1
    status, data, _ = await post(
        cluster, "/api/orchestrator/route", {**body, "payload": {"n": -n}}, key=f"dup-{n}"
    )
    assert (status, data["error"]["code"]) == (409, "conflict")


async def test_a_fanout_with_one_key_through_three_replicas_runs_eight_tasks(
    cluster: ReplicaCluster,
) -> None:
    """A fanout over A-H sent with one key to every replica (three each, at once): each of
    the eight instances runs the task once."""
    n = cluster.next_n()
    body = {"targets": "A-H", "payload": {"n": n, "sleep": 0.3}}
    calls = [post(cluster, "/api/orchestrator/fanout", body, key=f"fan-{n}") for _ in range(9)]
    outcomes = await asyncio.gather(*calls)
    per_instance = {i.name: i.handler.tasks[n] for i in cluster.instances}
    print(f"\nfanout A-H x9 through 3 replicas, one key: {tasks_run(cluster, n)} tasks")
    assert [status for status, _, _ in outcomes] == [200] * 9
    assert Counter(replayed for _, _, replayed in outcomes) == {False: 1, True: 8}
    assert per_instance == dict.fromkeys(INSTANCES, 1)


@contextlib.asynccontextmanager
async def failing_instance() -> AsyncIterator[tuple[str, list[float]]]:
    """An instance that is up (its health check answers 200) but answers every task 503, a
    retryable failure; yields its URL and the (monotonic) time of every task it was sent."""
    hits: list[float] = []

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "instance": "Z"})

    async def fail(request: web.Request) -> web.Response:
        hits.append(time.monotonic())
        body = {"error": {"code": "overloaded", "message": "try later"}}
        return web.json_response(body, status=503)

    app = web.Application()
    app.router.add_get("/api/health/check", health)
    app.router.add_route("*", "/{tail:.*}", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


@dataclass
class Timeline:
    """When each failing route was sent and when each of their retries reached Z."""

    requests: list[float] = field(default_factory=list)
    retries: list[float] = field(default_factory=list)

    def worst_window(self) -> tuple[int, float]:
        """The retries the budget counted at the moment of some retry, and what the first
        attempts then in the window allowed, at the retry where that ratio is highest.
        Retries are counted over the window's shortest extent and requests over its longest,
        so the bound holds however the buckets fall."""
        shortest = WINDOW - WINDOW / BUCKETS
        worst = (0, float(MIN_RETRIES))
        for t in self.retries:
            spent = sum(1 for r in self.retries if t - shortest < r <= t)
            sent = sum(1 for q in self.requests if t - WINDOW <= q <= t)
            allowed = MIN_RETRIES + RATIO * sent
            if spent / allowed > worst[0] / worst[1]:
                worst = (spent, allowed)
        return worst


async def failing_routes(cluster: ReplicaCluster, bases: list[str], hits: list[float]) -> Timeline:
    """``ROUTES`` routes to Z one after another over ``bases`` in turn: when each was sent and
    when its retries (every task Z saw after the route's first) arrived."""
    timeline = Timeline()
    for i in range(ROUTES):
        base = bases[i % len(bases)]
        before = len(hits)
        timeline.requests.append(time.monotonic())
        status, _, _ = await post(cluster, "/api/orchestrator/route", {"instances": "Z"}, base=base)
        assert status == 502  # the instance failed every attempt
        assert len(hits) > before  # the first attempt reached Z
        timeline.retries.extend(hits[before + 1 :])
    return timeline


async def test_the_retry_budget_holds_for_the_fleet(cluster: ReplicaCluster) -> None:
    """60 failing routes (each would retry 3 times), with one replica serving and with three:
    at every retry the retries in the window stay within 10 % of ``min_retries + ratio *
    requests`` in the window (22 when the 60 routes fit in one window), and the budget is
    used (at least 90 % of 22 retries in all: a budget whose window ran out mid-way allows
    more, never less)."""
    allowed = MIN_RETRIES + RATIO * ROUTES
    async with failing_instance() as (url, hits):
        spec = {"name": "Z", "url": url, "driver": "worker"}
        for replica in cluster.replicas:  # on each: whatever the registry shares
            async with cluster.http.post(
                replica.url + "/api/cluster/register", json=spec, headers=cluster.headers
            ) as resp:
                assert resp.status in (200, 201), await resp.text()
        await asyncio.sleep(WINDOW + 0.5)  # earlier tests' traffic leaves the window
        one = await failing_routes(cluster, [cluster.replicas[0].url], hits)
        await asyncio.sleep(WINDOW + 0.5)
        three = await failing_routes(cluster, [r.url for r in cluster.replicas], hits)
    for replicas, timeline in ((1, one), (3, three)):
        spent, window_allowed = timeline.worst_window()
        took = timeline.requests[-1] - timeline.requests[0]
        print(
            f"\n{ROUTES} failing routes on {replicas} replica(s) in {took:.1f} s: "
            f"{len(timeline.retries)} retries (of {allowed:g} in one window); "
            f"worst window {spent} of {window_allowed:g}"
        )
        assert len(timeline.retries) >= 0.9 * allowed
        assert spent <= 1.1 * window_allowed


async def test_a_killed_replicas_key_is_taken_over_after_its_claim_runs_out(
    cluster: ReplicaCluster,
) -> None:
    """``kill -9`` of the replica running a keyed route: a duplicate on another replica
    waits while the dead claim lasts (no second run meanwhile), then runs it itself."""
    n = cluster.next_n()
    body = {"instances": "A", "payload": {"n": n, "sleep": 1.0}}
    victim, survivor = cluster.replicas[0], cluster.replicas[1]
    first = asyncio.create_task(
        post(cluster, "/api/orchestrator/route", body, key=f"kill-{n}", base=victim.url)
    )
    try:
        await until_started(cluster, n)
        await victim.kill9()
        with contextlib.suppress(Exception):
            await first
        duplicate = asyncio.create_task(
            post(cluster, "/api/orchestrator/route", body, key=f"kill-{n}", base=survivor.url)
        )
        await asyncio.sleep(2.0)  # the instance finished the dead replica's run by now
        assert not duplicate.done()  # the dead claim still holds the key
        assert tasks_run(cluster, n) == 1
        status, _, replayed = await duplicate
    finally:
        await victim.start()
    print(f"\nkey of a killed replica: taken over, {tasks_run(cluster, n)} executions in all")
    assert (status, replayed) == (200, False)
    assert tasks_run(cluster, n) == 2


async def until_started(cluster: ReplicaCluster, n: int) -> None:
    """Wait until instance A runs task ``n`` (its sleep has begun)."""
    handler = cluster.instance("A").handler
    handler.started.clear()
    await asyncio.wait_for(handler.started.wait(), 10)
