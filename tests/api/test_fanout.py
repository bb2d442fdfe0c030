"""Fanout: every target at once, aggregated, with deadlines and partial results."""

from __future__ import annotations

import asyncio
import time

import orjson

from .conftest import Cluster, start_cluster


async def test_fanout_array_one_entry_per_target(cluster: Cluster) -> None:
    """aggregate true returns one entry per target in target order, and their results."""
    status, body = await cluster.post(
        "/api/orchestrator/fanout", {"targets": "A-H", "payload": {"n": 1}, "aggregate": True}
    )
    assert status == 200, body
    assert [e["instance"] for e in body["results"]] == list("ABCDEFGH")
    assert all(e["status"] == "ok" and e["error"] is None for e in body["results"])
    assert body["aggregate"] == "array"
    assert body["value"] == [{"instance": n, "payload": {"n": 1}} for n in "ABCDEFGH"]
    assert (body["succeeded"], body["failed"], body["timed_out"]) == (8, 0, 0)


async def test_fanout_default_payload_is_empty_object(cluster: Cluster) -> None:
    """Without a payload each instance gets {}."""
    status, body = await cluster.post("/api/orchestrator/fanout", {"targets": ["A", "C"]})
    assert status == 200
    assert body["value"] == [{"instance": "A", "payload": {}}, {"instance": "C", "payload": {}}]


async def test_slow_target_never_delays_past_timeout_and_keeps_partials(cluster: Cluster) -> None:
    """A hanging target becomes a timeout entry at the deadline; the others are kept."""
    await cluster.set_faults("B", hang=True)
    started = time.perf_counter()
    status, body = await cluster.post(
        "/api/orchestrator/fanout", {"targets": "A-C", "payload": {}, "timeout": 0.5}
    )
    elapsed = time.perf_counter() - started
    assert status == 200, body
    assert elapsed < 2.0  # bounded by the deadline, not by the hanging instance
    by_name = {e["instance"]: e for e in body["results"]}
    assert by_name["B"]["status"] == "timeout"
    assert by_name["B"]["error"]["code"] == "timeout"
    assert by_name["A"]["status"] == by_name["C"]["status"] == "ok"
    assert (body["succeeded"], body["timed_out"]) == (2, 1)


async def test_min_success_unmet_is_504_with_results(cluster: Cluster) -> None:
    """min_success that cannot be met is 504 timeout carrying every entry."""
    await cluster.set_faults("A", hang=True)
    await cluster.set_faults("B", hang=True)
    status, body = await cluster.post(
        "/api/orchestrator/fanout",
        {"targets": "A-C", "payload": {}, "timeout": 0.4, "min_success": 2},
    )
    assert status == 504
    assert body["error"]["code"] == "timeout"
    assert len(body["error"]["details"]["results"]) == 3


async def test_min_success_fails_fast_on_errors(cluster: Cluster) -> None:
    """When failures make min_success impossible the reply comes before the deadline."""
    for name in "AB":
        await cluster.set_faults(name, fail_rate=1.0, fail_status=500)
    await cluster.set_faults("C", hang=True)
    started = time.perf_counter()
    status, body = await cluster.post(
        "/api/orchestrator/fanout",
        {"targets": "A-C", "payload": {}, "timeout": 5, "min_success": 2},
    )
    assert time.perf_counter() - started < 2.5
    assert status == 502
    assert body["error"]["code"] == "instance_error"
    statuses = {e["instance"]: e["status"] for e in body["error"]["details"]["results"]}
    assert statuses == {"A": "error", "B": "error", "C": "cancelled"}


async def test_first_wins_and_cancels_the_rest(cluster: Cluster) -> None:
    """aggregate first returns the first success without waiting for slow targets."""
    await cluster.set_faults("A", latency=3.0)
    await cluster.set_faults("B", latency=3.0)
    started = time.perf_counter()
    status, body = await cluster.post(
        "/api/orchestrator/fanout", {"targets": "A-C", "aggregate": "first", "timeout": 10}
    )
    assert time.perf_counter() - started < 2.0
    assert status == 200
    assert body["value"] == {"instance": "C", "payload": {}}
    statuses = {e["instance"]: e["status"] for e in body["results"]}
    assert statuses == {"A": "cancelled", "B": "cancelled", "C": "ok"}


async def test_merge_and_concat(cluster: Cluster) -> None:
    """merge combines objects; concat over non-lists reports aggregation_failed, 200."""
    status, body = await cluster.post(
        "/api/orchestrator/fanout", {"targets": "A,B", "payload": {"x": 1}, "aggregate": "merge"}
    )
    assert status == 200
    assert body["value"] == {"instance": "B", "payload": {"x": 1}}
    status, body = await cluster.post(
        "/api/orchestrator/fanout", {"targets": "A,B", "aggregate": "concat"}
    )
    assert status == 200
    assert body["value"] is None
    assert body["error"]["code"] == "aggregation_failed"
    assert len(body["results"]) == 2


async def test_quorum_agreement() -> None:
    """quorum returns the value a majority agrees on."""
    async with start_cluster("ABC", handler="json:dumps") as c:
        status, body = await c.post(
            "/api/orchestrator/fanout", {"targets": "all", "payload": [1, 2], "aggregate": "quorum"}
        )
        assert status == 200, body
        assert body["value"]["value"] == "[1, 2]"
        assert body["value"]["needed"] == 2
        assert body["value"]["votes"] >= 2


async def test_distributed_search_topk() -> None:
    """A topk fanout over search shards returns the global best matches."""
    async with start_cluster(handler="search") as c:
        status, body = await c.post(
            "/api/orchestrator/fanout",
            {
                "targets": "A-H",
                "payload": {"query": "consensus raft leader election", "k": 3},
                "aggregate": "topk",
                "top_k": 5,
            },
        )
        assert status == 200, body
        matches = body["value"]
        assert 1 <= len(matches) <= 5
        scores = [m["score"] for m in matches]
        assert scores == sorted(scores, reverse=True)
        every = [m for e in body["results"] for m in e["result"]["matches"]]
        assert scores[0] == max(m["score"] for m in every)


async def test_unknown_reducer_is_invalid_request(cluster: Cluster) -> None:
    """A reducer name that is not configured is a 400 naming aggregate."""
    status, body = await cluster.post(
        "/api/orchestrator/fanout", {"targets": "A", "aggregate": "os:system"}
    )
    assert status == 400
    assert body["error"]["field"] == "aggregate"


async def test_custom_reducer_from_config() -> None:
    """A reducer registered by name in the configuration is used by name."""
    async with start_cluster("ABC", reducers={"count_ok": "tests.api.reducers:count_ok"}) as c:
        status, body = await c.post(
            "/api/orchestrator/fanout", {"targets": "all", "aggregate": "count_ok"}
        )
        assert status == 200, body
        assert body["value"] == {"ok": 3, "instances": ["A", "B", "C"]}


async def test_down_target_costs_nothing(cluster: Cluster) -> None:
    """A target marked down is reported at once as instance_down, the rest are served."""
    await cluster.stop_instance("D")
    await cluster.wait_state("D", "down")
    status, body = await cluster.post("/api/orchestrator/fanout", {"targets": "C-E"})
    assert status == 200
    entry = body["results"][1]
    assert entry["instance"] == "D"
    assert entry["status"] == "error"
    assert entry["error"]["code"] == "instance_down"
    assert entry["latency_ms"] < 5


async def test_streamed_fanout_arrives_in_completion_order(cluster: Cluster) -> None:
    """stream true sends each entry as it finishes, then the result line."""
    await cluster.set_faults("A", latency=0.6)
    lines = []
    arrival = []
    started = time.perf_counter()
    async with cluster.http.post(
        cluster.url + "/api/orchestrator/fanout",
        json={"targets": "A-C", "stream": True},
        headers=cluster.headers,
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        async for raw in resp.content:
            lines.append(orjson.loads(raw))
            arrival.append(time.perf_counter() - started)
    assert [line["type"] for line in lines] == ["entry", "entry", "entry", "result"]
    assert lines[2]["entry"]["instance"] == "A"
    assert arrival[0] < 0.5 <= arrival[2]  # B and C did not wait for A
    assert [e["instance"] for e in lines[3]["result"]["results"]] == ["A", "B", "C"]


async def test_stream_via_accept_header_and_error_line(cluster: Cluster) -> None:
    """Accept: application/x-ndjson streams too; unmet min_success ends with an error line."""
    await cluster.set_faults("B", fail_rate=1.0, fail_status=500)
    async with cluster.http.post(
        cluster.url + "/api/orchestrator/fanout",
        json={"targets": "A,B", "min_success": 2},
        headers={**cluster.headers, "Accept": "application/x-ndjson"},
    ) as resp:
        lines = [orjson.loads(raw) async for raw in resp.content]
    assert lines[-1]["type"] == "error"
    assert lines[-1]["error"]["code"] == "instance_error"


async def test_stream_validation_error_is_plain_400(cluster: Cluster) -> None:
    """Bad targets on a streamed request are a normal 400, not a broken stream."""
    status, body = await cluster.post("/api/orchestrator/fanout", {"targets": "Q", "stream": True})
    assert status == 400
    assert body["error"]["field"] == "targets"


async def test_fanout_retry_recovers_flaky_target(cluster: Cluster) -> None:
    """retry > 0 retries a target's retryable failure within the deadline."""
    await cluster.set_faults("A", fail_rate=1.0, fail_status=503)
    task = asyncio.create_task(
        cluster.post("/api/orchestrator/fanout", {"targets": "A", "retry": 5, "timeout": 5})
    )
    await asyncio.sleep(0.15)
    await cluster.set_faults("A", fail_rate=0.0)
    status, body = await task
    assert status == 200
    assert body["results"][0]["status"] == "ok"
