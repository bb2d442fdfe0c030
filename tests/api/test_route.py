"""Route: one instance serves, chosen by policy, with failover and a full account."""

from __future__ import annotations

import asyncio
from collections import Counter

from .conftest import Cluster, start_cluster


async def test_route_to_listed_instances(cluster: Cluster) -> None:
    """The seed request is served by one of the listed instances and says which."""
    status, body = await cluster.post(
        "/api/orchestrator/route",
        {"instances": ["A", "B"], "payload": {"data": "task"}, "timeout": 5, "retry": 3},
    )
    assert status == 200, body
    assert body["instance"] in ("A", "B")
    assert body["result"] == {"instance": body["instance"], "payload": {"data": "task"}}
    assert body["attempts"] == [
        {
            "instance": body["instance"],
            "outcome": "ok",
            "latency_ms": body["attempts"][0]["latency_ms"],
            "error": None,
        }
    ]
    assert body["total_ms"] >= body["attempts"][0]["latency_ms"]
    assert len(body["request_id"]) >= 16


async def test_round_robin_spreads_over_all_instances(cluster: Cluster) -> None:
    """Without a candidate list every healthy instance takes its turn."""
    served = Counter()
    for _ in range(16):
        status, body = await cluster.post("/api/orchestrator/route", {"payload": {}})
        assert status == 200
        served[body["instance"]] += 1
    assert served == Counter({n: 2 for n in "ABCDEFGH"})


async def test_least_outstanding_avoids_a_busy_instance(cluster: Cluster) -> None:
    """least_outstanding sends new work away from an instance with requests in flight."""
    await cluster.set_faults("A", latency=1.0)
    slow = asyncio.create_task(
        cluster.post("/api/orchestrator/route", {"instances": ["A"], "payload": {}})
    )
    await asyncio.sleep(0.2)
    for _ in range(4):
        status, body = await cluster.post(
            "/api/orchestrator/route",
            {"instances": "A,B", "payload": {}, "policy": "least_outstanding"},
        )
        assert (status, body["instance"]) == (200, "B")
    assert (await slow)[0] == 200


async def test_weighted_random_follows_weights() -> None:
    """weighted_random sends about three times as much to a weight-3 instance."""
    async with start_cluster("AB", weights={"A": 3.0, "B": 1.0}) as c:
        served = Counter()
        for _ in range(200):
            _, body = await c.post(
                "/api/orchestrator/route", {"payload": {}, "policy": "weighted_random"}
            )
            served[body["instance"]] += 1
        assert 120 <= served["A"] <= 175, served


async def test_failover_when_an_instance_is_stopped(cluster: Cluster) -> None:
    """A refused connection fails over to another candidate and marks the instance down."""
    await cluster.stop_instance("A")
    status, body = await cluster.post(
        "/api/orchestrator/route", {"instances": ["A", "B"], "payload": {}, "policy": "round_robin"}
    )
    # Whichever came first, B serves; if A was tried its attempt says it was down.
    assert status == 200, body
    assert body["instance"] == "B"
    if len(body["attempts"]) == 2:
        assert body["attempts"][0]["instance"] == "A"
        assert body["attempts"][0]["outcome"] == "down"
        assert body["attempts"][0]["error"]["code"] == "instance_down"
        assert cluster.service.registry.get("A").health.state.value == "down"
    await cluster.wait_state("A", "down")
    # Once down, A is skipped without being tried.
    status, body = await cluster.post(
        "/api/orchestrator/route", {"instances": ["A", "B"], "payload": {}}
    )
    assert status == 200
    assert [a["instance"] for a in body["attempts"]] == ["B"]
    assert body["skipped"] == [{"instance": "A", "reason": "down"}]


async def test_only_candidate_down_is_instance_down(cluster: Cluster) -> None:
    """A single candidate that is down gives 503 instance_down, at once."""
    await cluster.stop_instance("C")
    await cluster.wait_state("C", "down")
    status, body = await cluster.post("/api/orchestrator/route", {"instances": "C", "payload": {}})
    assert status == 503
    assert body["error"]["code"] == "instance_down"
    assert body["error"]["instance"] == "C"


async def test_all_candidates_down_is_no_healthy_instance(cluster: Cluster) -> None:
    """Several candidates, all down: 503 no_healthy_instance naming why each was skipped."""
    for name in "CD":
        await cluster.stop_instance(name)
    for name in "CD":
        await cluster.wait_state(name, "down")
    status, body = await cluster.post("/api/orchestrator/route", {"instances": "C-D"})
    assert status == 503
    assert body["error"]["code"] == "no_healthy_instance"
    assert body["error"]["details"]["skipped"] == {"C": "down", "D": "down"}


async def test_unknown_instance_names_are_a_clear_error(cluster: Cluster) -> None:
    """Unknown names give 400 invalid_request naming the field and the names."""
    status, body = await cluster.post("/api/orchestrator/route", {"instances": ["A", "Z", "Y"]})
    assert status == 400
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["field"] == "instances"
    assert "unknown instance(s): Z, Y" in body["error"]["message"]


async def test_target_syntax_in_route(cluster: Cluster) -> None:
    """Ranges, lists and tags all select candidates."""
    for expr, allowed in [("C-E", "CDE"), ("A,C,E", "ACE"), ("F G", "FG"), ("all", "ABCDEFGH")]:
        status, body = await cluster.post("/api/orchestrator/route", {"instances": expr})
        assert status == 200, body
        assert body["instance"] in allowed


async def test_route_by_tag() -> None:
    """tag:<tag> selects exactly the tagged instances."""
    async with start_cluster("ABC", tags={"B": ["gpu"]}) as c:
        for _ in range(3):
            status, body = await c.post("/api/orchestrator/route", {"instances": "tag:gpu"})
            assert (status, body["instance"]) == (200, "B")
