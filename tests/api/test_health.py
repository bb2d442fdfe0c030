"""Health: probes, passive detection, recovery, liveness, detail."""

from __future__ import annotations

from .conftest import Cluster, start_cluster


async def test_health_map_and_detail(cluster: Cluster) -> None:
    """health returns name -> state; detail adds latency, last check and failures."""
    status, body = await cluster.get("/api/orchestrator/health?instances=A-H")
    assert status == 200
    assert body == {n: "healthy" for n in "ABCDEFGH"}
    status, body = await cluster.get("/api/orchestrator/health?instances=A,B&detail=true")
    assert status == 200
    assert set(body) == {"A", "B"}
    detail = body["A"]
    assert detail["state"] == "healthy"
    assert detail["latency_ms"] >= 0
    assert detail["last_check"].startswith("20")
    assert detail["consecutive_failures"] == 0
    assert detail["last_error"] is None
    assert detail["url"] == cluster.instance_urls["A"]


async def test_unknown_before_first_probe() -> None:
    """Instances are unknown until their first probe answers."""
    async with start_cluster("AB", wait_healthy=False, health={"interval": 60}) as c:
        states = set(c.service.health().values())
        assert states <= {"unknown", "healthy"}
        await c.wait_state("A", "healthy")


async def test_failing_probes_degrade_then_down_then_recover(cluster: Cluster) -> None:
    """Failing probes make an instance degraded, then down; passing ones bring it back."""
    await cluster.set_faults("E", health_fail=True)
    await cluster.wait_state("E", "degraded", timeout=3)
    await cluster.wait_state("E", "down", timeout=3)
    _, body = await cluster.get("/api/orchestrator/health?instances=E&detail=true")
    assert body["E"]["consecutive_failures"] >= 3
    assert "503" in body["E"]["last_error"]
    await cluster.set_faults("E", health_fail=False)
    await cluster.wait_state("E", "healthy", timeout=3)


async def test_stopped_instance_is_down_by_probe(cluster: Cluster) -> None:
    """A refused probe marks the instance down without any traffic."""
    await cluster.stop_instance("F")
    await cluster.wait_state("F", "down", timeout=2)
    _, body = await cluster.get("/api/orchestrator/health?instances=F")
    assert body == {"F": "down"}


async def test_passive_detection_marks_down_before_the_next_probe() -> None:
    """A live request that cannot connect marks the instance down at once."""
    async with start_cluster("AB", health={"interval": 60, "down_backoff": 60}) as c:
        await c.stop_instance("A")
        assert c.service.registry.get("A").health.state.value == "healthy"
        status, body = await c.post(
            "/api/orchestrator/route", {"instances": ["A"], "payload": {}, "retry": 0}
        )
        assert status == 503
        assert body["error"]["code"] == "instance_down"
        assert c.service.registry.get("A").health.state.value == "down"


async def test_degraded_instance_is_avoided(cluster: Cluster) -> None:
    """An instance that reports itself degraded is degraded, and routing prefers others."""
    await cluster.set_faults("G", health_degraded=True)
    await cluster.wait_state("G", "degraded", timeout=3)
    for _ in range(4):
        _, body = await cluster.post("/api/orchestrator/route", {"instances": "G,H"})
        assert body["instance"] == "H"


async def test_liveness_needs_no_key(cluster: Cluster) -> None:
    """GET /api/health/check answers without auth and counts the fleet."""
    async with cluster.http.get(cluster.url + "/api/health/check") as resp:
        body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "healthy"
    assert body["instances"]["total"] == 8
    assert body["instances"]["healthy"] == 8
