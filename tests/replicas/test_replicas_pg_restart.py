"""Issue 11's PostgreSQL fault: the database restarted (a crash stop, then a start) under
session load from three replicas behind the front. Before the claim-then-deliver design
some messages ran on the instance and were never recorded; now, once the sessions have
settled, every execution is recorded exactly once and every acknowledged send is in the
history.

The server is a private one (initdb in a temporary folder, its own port): the shared
PostgreSQL of the other tests is never restarted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from .harness import (
    CLUSTER_TEST_TIMEOUT,
    LEASE_TTL,
    SESSION_SETTINGS,
    PrivatePostgres,
    ReplicaCluster,
    SendOutcome,
    assert_consistent,
    check_session,
    private_postgres,
    replica_cluster,
    report,
    until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(CLUSTER_TEST_TIMEOUT),
]

SESSIONS = 12
OUTAGE = 1.5
"""Seconds between the crash stop and the start."""
ALLOWED_REFUSALS = {"503 storage_unavailable"}
"""What a send may answer while the database is away: refused, retry later."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[PrivatePostgres]:
    """This module's own PostgreSQL server."""
    async with private_postgres() as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    server: PrivatePostgres, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ReplicaCluster]:
    """Three replicas on the private server, instances A and B, one front."""
    folder = tmp_path_factory.mktemp("replicas-pg")
    async with replica_cluster(
        folder, settings=SESSION_SETTINGS, database_url=server.url
    ) as started:
        yield started


async def test_postgres_restart_under_load(
    cluster: ReplicaCluster, server: PrivatePostgres
) -> None:
    """12 sessions sending continuously through the front while PostgreSQL crash-stops and
    starts again: sends during the outage are refused (503), none is acknowledged and lost,
    and after the store recovers executed = recorded for every session."""
    sessions = [await cluster.spawn(instance="AB"[i % 2]) for i in range(SESSIONS)]
    outcomes: dict[str, list[SendOutcome]] = {sid: [] for sid in sessions}
    stop = asyncio.Event()

    async def keep_sending(sid: str) -> None:
        while not stop.is_set():
            outcome = await cluster.send(sid)
            outcomes[sid].append(outcome)
            if not outcome.ok:
                await asyncio.sleep(0.1)

    def acked() -> int:
        return sum(o.ok for sent in outcomes.values() for o in sent)

    senders = [asyncio.create_task(keep_sending(sid)) for sid in sessions]
    try:
        await until(lambda: acked() >= 100, "100 sends before the restart")
        await server.stop("immediate")
        await asyncio.sleep(OUTAGE)
        await server.start()
        restarted_at = acked()
        await until(lambda: acked() >= restarted_at + 100, "100 sends after the restart")
    finally:
        stop.set()
        await asyncio.gather(*senders)
    for replica in cluster.replicas:
        await _until_healthy(cluster, replica.url)
    settle = await asyncio.gather(*(cluster.send(sid) for sid in sessions))
    await asyncio.sleep(2 * LEASE_TTL)
    for sid, outcome in zip(sessions, settle, strict=True):
        outcomes[sid].append(outcome)
    checks = [await check_session(cluster, sid, outcomes[sid]) for sid in sessions]
    labels = Counter(o.label for sent in outcomes.values() for o in sent if not o.ok)
    report("PostgreSQL restart under load", checks, acknowledged_before_restart=restarted_at)
    assert "automatic recovery in progress" in server.log.read_text()  # a crash, recovered
    assert all(o.ok for o in settle), settle
    assert set(labels) <= ALLOWED_REFUSALS, labels
    assert_consistent(checks)


async def _until_healthy(cluster: ReplicaCluster, url: str, timeout: float = 30.0) -> None:
    """Wait until the replica at ``url`` reports its store writable again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        async with cluster.http.get(url + "/api/health/check") as resp:
            if (await resp.json()).get("status") == "healthy":
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url}: the store did not recover")
