"""Retries, backoff, Retry-After, deadlines, the retry budget and idempotency keys."""

from __future__ import annotations

import asyncio
import time

from .conftest import FAST_HEALTH, Cluster, start_cluster


async def test_503_fails_over_to_another_instance(cluster: Cluster) -> None:
    """A 503 is retried on a different healthy candidate."""
    await cluster.set_faults("A", fail_rate=1.0, fail_status=503)
    for _ in range(4):
        status, body = await cluster.post("/api/orchestrator/route", {"instances": "A,B"})
        assert (status, body["instance"]) == (200, "B")
        if len(body["attempts"]) == 2:
            first = body["attempts"][0]
            assert (first["instance"], first["outcome"]) == ("A", "error")
            assert first["error"]["upstream_status"] == 503


async def test_other_4xx_is_never_retried(cluster: Cluster) -> None:
    """A 4xx from the instance is returned at once, after one attempt."""
    await cluster.set_faults("A", fail_rate=1.0, fail_status=422)
    status, body = await cluster.post("/api/orchestrator/route", {"instances": "A", "retry": 3})
    assert status == 400
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["upstream_status"] == 422
    assert len(body["error"]["details"]["attempts"]) == 1


async def test_500_is_not_retried(cluster: Cluster) -> None:
    """A 500 from the instance is instance_error after one attempt."""
    await cluster.set_faults("A", fail_rate=1.0, fail_status=500)
    status, body = await cluster.post("/api/orchestrator/route", {"instances": "A", "retry": 3})
    assert status == 502
    assert body["error"]["code"] == "instance_error"
    assert len(body["error"]["details"]["attempts"]) == 1


async def test_retries_are_bounded(cluster: Cluster) -> None:
    """With every candidate failing, there are exactly retry + 1 attempts."""
    for name in "AB":
        await cluster.set_faults(name, fail_rate=1.0, fail_status=502)
    status, body = await cluster.post("/api/orchestrator/route", {"instances": "A,B", "retry": 3})
    assert status == 502
    attempts = body["error"]["details"]["attempts"]
    assert len(attempts) == 4
    # Each retry goes to a different candidate where one exists: they alternate.
    names = [a["instance"] for a in attempts]
    assert names[0] != names[1]
    assert "retries" in body["error"]["details"]["reason"]


async def test_retry_after_is_honoured(cluster: Cluster) -> None:
    """A 429 with Retry-After on the only candidate waits that long before retrying."""
    await cluster.set_faults("A", fail_rate=1.0, fail_status=429, retry_after=0.5)
    task = asyncio.create_task(
        cluster.post("/api/orchestrator/route", {"instances": "A", "retry": 1, "timeout": 5})
    )
    started = time.perf_counter()
    await asyncio.sleep(0.1)
    await cluster.set_faults("A", fail_rate=0.0)
    status, body = await task
    assert status == 200, body
    assert time.perf_counter() - started >= 0.45
    assert [a["outcome"] for a in body["attempts"]] == ["error", "ok"]


async def test_deadline_bounds_retries(cluster: Cluster) -> None:
    """Retries never run past the request's timeout."""
    await cluster.set_faults("A", hang=True)
    started = time.perf_counter()
    status, body = await cluster.post(
        "/api/orchestrator/route", {"instances": "A", "retry": 5, "timeout": 0.4}
    )
    assert time.perf_counter() - started < 1.5
    assert status == 504
    assert body["error"]["code"] == "timeout"


async def test_retry_budget_stops_a_retry_storm() -> None:
    """Once the retry budget is spent, failures come back at once with the reason."""
    retry = {"budget_ratio": 0.0, "budget_min_retries": 2, "backoff_base": 0.001}
    async with start_cluster("AB", retry=retry) as c:
        for name in "AB":
            await c.set_faults(name, fail_rate=1.0, fail_status=503)
        reasons = []
        for _ in range(4):
            status, body = await c.post("/api/orchestrator/route", {"instances": "A,B", "retry": 3})
            assert status == 502
            reasons.append(body["error"]["details"].get("reason", ""))
        assert reasons[-1] == "retry budget exhausted"
        skipped = body["error"]["details"]["skipped"]
        assert set(skipped.values()) <= {"over_budget", "already_tried"}


async def test_idempotency_key_returns_the_first_result(cluster: Cluster) -> None:
    """The same Idempotency-Key returns the first result instead of running again."""
    body = {"instances": "A-H", "payload": {"order": 42}}
    s1, r1 = await cluster.post("/api/orchestrator/route", body, **{"Idempotency-Key": "k-1"})
    s2, r2 = await cluster.post("/api/orchestrator/route", body, **{"Idempotency-Key": "k-1"})
    assert s1 == s2 == 200
    assert r1 == r2  # same instance, same request id: the task did not run twice
    _, r3 = await cluster.post("/api/orchestrator/route", body, **{"Idempotency-Key": "k-2"})
    assert r3["request_id"] != r1["request_id"]


async def test_idempotency_key_with_other_body_is_conflict(cluster: Cluster) -> None:
    """Reusing a key with a different body is 409 conflict."""
    await cluster.post("/api/orchestrator/route", {"payload": 1}, **{"Idempotency-Key": "k"})
    status, body = await cluster.post(
        "/api/orchestrator/route", {"payload": 2}, **{"Idempotency-Key": "k"}
    )
    assert status == 409
    assert body["error"]["code"] == "conflict"


async def test_concurrent_duplicates_run_once(cluster: Cluster) -> None:
    """Concurrent requests with one key share one execution."""
    await cluster.set_faults("A", latency=0.3)
    body = {"instances": "A", "payload": {}}
    results = await asyncio.gather(
        *(
            cluster.post("/api/orchestrator/route", body, **{"Idempotency-Key": "same"})
            for _ in range(5)
        )
    )
    assert len({r[1]["request_id"] for r in results}) == 1


async def test_failures_are_not_remembered(cluster: Cluster) -> None:
    """A failed request can be retried with the same key and then succeeds."""
    await cluster.set_faults("A", fail_rate=1.0, fail_status=500)
    s1, _ = await cluster.post(
        "/api/orchestrator/route", {"instances": "A"}, **{"Idempotency-Key": "again"}
    )
    await cluster.set_faults("A", fail_rate=0.0)
    s2, _ = await cluster.post(
        "/api/orchestrator/route", {"instances": "A"}, **{"Idempotency-Key": "again"}
    )
    assert (s1, s2) == (502, 200)


async def test_attempt_timeout_fails_over_past_a_hanging_instance() -> None:
    """A candidate that accepts and never answers costs one attempt_timeout, not the
    deadline: the next candidate serves at once (no backoff: the attempt already waited),
    and the hanging one is marked down."""
    # A's probes pass (only its tasks hang), so only passive detection can mark it down;
    # a long down_backoff keeps the next probe from marking it healthy again before the
    # test looks (with the fast 0.1 s one, a loaded machine could miss the down state).
    health = {**FAST_HEALTH, "down_backoff": 30.0}
    retry = {"backoff_base": 1.0, "backoff_max": 1.0}
    async with start_cluster("AB", retry=retry, health=health) as cluster:
        await _fail_over_past_a_hang(cluster)


async def _fail_over_past_a_hang(cluster: Cluster) -> None:
    await cluster.set_faults("A", hang=True)
    body = {
        "instances": ["A", "B"],
        "timeout": 5,
        "attempt_timeout": "200ms",
        "policy": "round_robin",
    }
    for _ in range(2):  # round robin: one of two requests starts with A
        started = time.perf_counter()
        status, reply = await cluster.post("/api/orchestrator/route", body)
        elapsed = time.perf_counter() - started
        assert status == 200, reply
        assert reply["instance"] == "B"
        if reply["attempts"][0]["instance"] == "A":
            first = reply["attempts"][0]
            assert first["outcome"] == "timeout"
            assert 180 <= first["latency_ms"] < 1000
            assert elapsed < 2.0
            waited = reply["total_ms"] - sum(a["latency_ms"] for a in reply["attempts"])
            assert waited < 50  # a backoff would have been uniform(0, 1 s)
            break
    else:
        raise AssertionError("no request tried A first")
    await cluster.wait_state("A", "down", timeout=1)


async def test_attempt_timeout_from_the_configuration() -> None:
    """retry.attempt_timeout applies when the request names none; the request's wins."""
    async with start_cluster("AB", retry={"attempt_timeout": 0.2}) as cluster:
        await cluster.set_faults("A", hang=True)
        started = time.perf_counter()
        status, reply = await cluster.post(
            "/api/orchestrator/route", {"instances": ["A"], "timeout": 5, "retry": 0}
        )
        assert time.perf_counter() - started < 2.0
        assert status == 504
        assert reply["error"]["details"]["attempts"][0]["outcome"] == "timeout"


async def test_fanout_attempt_timeout_ends_a_hanging_target_early(cluster: Cluster) -> None:
    """A fanout does not wait for its deadline when each attempt is capped."""
    await cluster.set_faults("C", hang=True)
    started = time.perf_counter()
    status, reply = await cluster.post(
        "/api/orchestrator/fanout",
        {"targets": "A-D", "timeout": 10, "attempt_timeout": 0.3, "retry": 1},
    )
    assert time.perf_counter() - started < 3.0
    assert status == 200, reply
    by_name = {e["instance"]: e for e in reply["results"]}
    assert by_name["C"]["status"] == "timeout"
    assert all(by_name[n]["status"] == "ok" for n in "ABD")


async def test_attempt_timeout_is_validated(cluster: Cluster) -> None:
    """Zero, a non-duration or more than max_timeout: 400 naming attempt_timeout."""
    for value in (0, "soon", 10_000):
        status, reply = await cluster.post(
            "/api/orchestrator/route", {"instances": ["A"], "attempt_timeout": value}
        )
        assert status == 400, reply
        assert reply["error"]["field"] == "attempt_timeout"
