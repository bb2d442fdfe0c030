"""Issue 11, item 1: sessions across three replicas on one PostgreSQL database, through a
round-robin front, with instances that count every execution.

Any replica takes any send; the system serializes one session's sends itself (a session
lease with a fencing epoch; the position is claimed before delivery). Through the front:
no conflict reaches a caller, and executions = recorded = acknowledged, also when a replica
is killed (``kill -9``) mid-traffic or frozen (``SIGSTOP``) past its lease while delivering.
Each test prints its numbers (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

import pytest
import pytest_asyncio

from .harness import (
    CLUSTER_TEST_TIMEOUT,
    LEASE_TTL,
    SESSION_SETTINGS,
    ReplicaCluster,
    SendOutcome,
    assert_consistent,
    bounded,
    check_session,
    replica_cluster,
    report,
    until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(CLUSTER_TEST_TIMEOUT),
]

IN_FLIGHT_AT_KILL = "502 front_upstream_failed"
"""What the front answers for a request its replica died while serving (never re-sent)."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReplicaCluster]:
    """Three replicas on a fresh database, instances A and B, one front: the module's."""
    folder = tmp_path_factory.mktemp("replicas-sessions")
    async with replica_cluster(folder, settings=SESSION_SETTINGS) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module")
async def all_up(cluster: ReplicaCluster) -> ReplicaCluster:
    """The cluster with every replica running (a fault test may have left one down)."""
    for replica in cluster.replicas:
        if not replica.is_running():
            await replica.start()
    cluster.front.reset_counts()
    return cluster


async def test_front_spreads_requests_over_every_replica(all_up: ReplicaCluster) -> None:
    """The harness itself: 30 routes through the front reach the three replica processes in
    turn (each one's log names exactly the request ids the front sent it), and each task
    runs once on the instances."""
    cluster = all_up
    sent: dict[int, set[str]] = {0: set(), 1: set(), 2: set()}
    numbers = [cluster.next_n() for _ in range(30)]
    for n in numbers:
        rid = f"front-check-{n}"
        headers = {**cluster.headers, "X-Request-Id": rid}
        body = {"payload": {"n": n}}
        url = cluster.front.url + "/api/orchestrator/route"
        async with cluster.http.post(url, json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Request-Id"] == rid
            sent[int(resp.headers["X-Front-Upstream"])].add(rid)
    assert [len(ids) for ids in sent.values()] == [10, 10, 10]
    for replica in cluster.replicas:
        mine = {f'"request_id":"{rid}"' for rid in sent[replica.index]}
        assert await replica.wait_logged(mine) == mine, replica
        log = replica.log_text()
        assert not [
            rid for rid in _all_ids(numbers) if f'"{rid}"' in log and rid not in sent[replica.index]
        ], replica
    assert len({r.pid for r in cluster.replicas}) == 3
    tasks: Counter[Any] = Counter()
    for instance in cluster.instances:
        tasks.update(instance.handler.tasks)
    assert [tasks[n] for n in numbers] == [1] * 30


def _all_ids(numbers: Iterable[int]) -> list[str]:
    return [f"front-check-{n}" for n in numbers]


async def test_200_concurrent_sends_to_one_session(all_up: ReplicaCluster) -> None:
    """(a) 200 sends to one session, 20 at a time, through the front: 200 acknowledged, no
    conflict, seqs 1..200 once each, and the instance ran each message once."""
    cluster = all_up
    session_id = await cluster.spawn(instance="A")
    outcomes = await bounded(20, (cluster.send(session_id) for _ in range(200)))
    check = await check_session(cluster, session_id, outcomes)
    view = await cluster.instance_view("A", session_id)
    seqs = [e["seq"] for e in await cluster.history(session_id) if e["kind"] == "message"]
    report(
        "200 sends, one session",
        [check],
        instance_seen=None if view is None else view["seen"],
        per_replica=cluster.front.served,
    )
    assert Counter(o.status for o in outcomes) == {200: 200}
    assert sorted(seqs) == list(range(1, 201))
    assert_consistent([check])
    assert (check.acknowledged, check.recorded, check.executed) == (200, 200, 200)
    assert view is not None
    assert view["seen"] == 200


async def test_50_sessions_20_sends_each(all_up: ReplicaCluster) -> None:
    """(b) 50 sessions × 20 sends, all at once (100 in flight), through the front: every
    session has 20 acknowledged, recorded at seqs 1..20, executed once each."""
    cluster = all_up
    sessions = [await cluster.spawn(instance="AB"[i % 2]) for i in range(50)]
    jobs = [(sid, cluster.send(sid)) for sid in sessions for _ in range(20)]
    random.Random(11).shuffle(jobs)
    results = await bounded(100, (job for _, job in jobs))
    by_session: dict[str, list[SendOutcome]] = {sid: [] for sid in sessions}
    for (sid, _), outcome in zip(jobs, results, strict=True):
        by_session[sid].append(outcome)
    checks = [await check_session(cluster, sid, by_session[sid]) for sid in sessions]
    report("50 sessions x 20 sends", checks, per_replica=cluster.front.served)
    assert Counter(o.status for o in results) == {200: 1000}
    assert_consistent(checks)
    for sid, check in zip(sessions, checks, strict=True):
        seqs = [e["seq"] for e in await cluster.history(sid) if e["kind"] == "message"]
        assert sorted(seqs) == list(range(1, 21)), sid
        assert (check.acknowledged, check.recorded, check.executed) == (20, 20, 20), sid


async def test_kill9_replica_mid_traffic(all_up: ReplicaCluster) -> None:
    """(c) ``kill -9`` of one replica while 20 sessions take 20 sends each through the front:
    no acknowledged send lost or doubled; once the sessions have settled (one more send
    each, then two lease TTLs for the sweeper) every execution is recorded exactly once."""
    cluster = all_up
    victim = cluster.replicas[1]
    sessions = [await cluster.spawn(instance="AB"[i % 2]) for i in range(20)]
    acked = 0
    killed = asyncio.Event()

    async def send(sid: str) -> SendOutcome:
        nonlocal acked
        outcome = await cluster.send(sid)
        acked += outcome.ok
        if acked >= 120 and not killed.is_set():
            killed.set()
            await victim.kill9()
        return outcome

    jobs = [(sid, send(sid)) for sid in sessions for _ in range(20)]
    random.Random(3).shuffle(jobs)
    results = await bounded(40, (job for _, job in jobs))
    assert killed.is_set()
    assert not victim.is_running()
    settle = await asyncio.gather(*(cluster.send(sid) for sid in sessions))
    await asyncio.sleep(2 * LEASE_TTL)
    by_session: dict[str, list[SendOutcome]] = {sid: [] for sid in sessions}
    for (sid, _), outcome in zip(jobs, results, strict=True):
        by_session[sid].append(outcome)
    for sid, outcome in zip(sessions, settle, strict=True):
        by_session[sid].append(outcome)
    checks = [await check_session(cluster, sid, by_session[sid]) for sid in sessions]
    failed_at_front = sum(o.label == IN_FLIGHT_AT_KILL for o in results)
    report(
        "kill -9 mid-traffic",
        checks,
        lost_in_flight_at_kill=failed_at_front,
        front_refused=cluster.front.refused,
        settle=dict(Counter(o.label for o in settle)),
        front_errors=cluster.front.errors,
    )
    orchestrator_errors = [o for o in results if not o.ok and o.label != IN_FLIGHT_AT_KILL]
    assert orchestrator_errors == []
    assert all(o.ok for o in settle)
    assert_consistent(checks)


async def test_sigstop_lease_holder_past_its_lease(all_up: ReplicaCluster) -> None:
    """(d) A replica frozen (SIGSTOP) while it delivers a slow message, for longer than its
    lease: a send through another replica succeeds meanwhile; after SIGCONT the frozen one's
    late record is refused, so the history has each message once and every execution is
    recorded."""
    cluster = all_up
    holder, other = cluster.replicas[0], cluster.replicas[2]
    session_id = await cluster.spawn(instance="B")
    outcomes = [await cluster.send(session_id, via=holder.url) for _ in range(2)]
    handler = cluster.instance("B").handler
    handler.started.clear()
    slow = asyncio.create_task(cluster.send(session_id, {"sleep": 3 * LEASE_TTL}, via=holder.url))
    await asyncio.wait_for(handler.started.wait(), 10)
    holder.sigstop()
    try:
        await asyncio.sleep(2 * LEASE_TTL)
        meanwhile = await cluster.send(session_id, via=other.url)
    finally:
        holder.sigcont()
    late = await slow
    after = await cluster.send(session_id)
    outcomes += [meanwhile, late, after]
    check = await check_session(cluster, session_id, outcomes)
    report(
        "SIGSTOP past the lease",
        [check],
        meanwhile=meanwhile.status,
        frozen_replica_answered=f"{late.status} {late.code or ''}".strip(),
        after=after.status,
    )
    assert meanwhile.ok, meanwhile
    assert after.ok, after
    assert late.status != 409, late
    assert_consistent([check])
    assert check.executed == check.recorded == 5


async def test_kill9_between_deliver_and_record(all_up: ReplicaCluster) -> None:
    """``kill -9`` of the replica whose message the instance is running: the message ran,
    its sender never recorded it. The next send, through another replica, settles the
    claimed position first (the instance answers it again from its fence, without running
    it), so the history holds it once and executed = recorded."""
    cluster = all_up
    victim, other = cluster.replicas[2], cluster.replicas[0]
    session_id = await cluster.spawn(instance="A")
    outcomes = [await cluster.send(session_id, via=victim.url) for _ in range(2)]
    handler = cluster.instance("A").handler
    handler.started.clear()
    doomed = asyncio.create_task(cluster.send(session_id, {"sleep": LEASE_TTL}, via=victim.url))
    await asyncio.wait_for(handler.started.wait(), 10)
    await victim.kill9()
    outcomes.append(await doomed)
    await until(lambda: cluster.executions(session_id) == 3, "the slow message to finish")
    outcomes.append(await cluster.send(session_id, via=other.url))
    check = await check_session(cluster, session_id, outcomes)
    seqs = [e["seq"] for e in await cluster.history(session_id) if e["kind"] == "message"]
    report(
        "kill -9 between deliver and record",
        [check],
        killed_send=outcomes[2].label,
        next_send=outcomes[3].label,
        seqs=seqs,
    )
    assert not outcomes[2].ok
    assert outcomes[3].ok, outcomes[3]
    assert_consistent([check])
    assert (check.executed, check.recorded) == (4, 4)
    assert seqs == [1, 2, 3, 4]


async def test_close_raced_by_sends(all_up: ReplicaCluster) -> None:
    """(e) A close racing 20 concurrent sends through the front, 5 times: nothing is recorded
    after ``closed_at``; sends after the close get 410; every execution is recorded."""
    cluster = all_up
    checks = []
    statuses: Counter[str] = Counter()
    for run in range(5):
        session_id = await cluster.spawn(instance="AB"[run % 2])
        sends = [asyncio.create_task(cluster.send(session_id)) for _ in range(20)]
        await asyncio.sleep(0.01 * run)
        closed = await cluster.close(session_id)
        outcomes = await asyncio.gather(*sends)
        statuses.update(o.label for o in outcomes)
        assert closed == 200
        info = await cluster.info(session_id)
        closed_at = datetime.fromisoformat(info["closed_at"])
        entries = await cluster.history(session_id)
        late = [e for e in entries if datetime.fromisoformat(e["created_at"]) > closed_at]
        assert late == [], (session_id, closed_at)
        checks.append(await check_session(cluster, session_id, outcomes))
    report("close raced by sends (5 runs)", checks, statuses=dict(statuses))
    assert set(statuses) <= {"200", "410 session_closed"}, statuses
    assert_consistent(checks)
