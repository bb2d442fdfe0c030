"""The schema and docs page are served, and list every endpoint; live state shows in reprs."""

from __future__ import annotations

from .conftest import Cluster

EXPECTED = {
    ("post", "/api/orchestrator/route"),
    ("post", "/api/orchestrator/fanout"),
    ("get", "/api/orchestrator/health"),
    ("get", "/api/health/check"),
    ("post", "/api/cluster/register"),
    ("get", "/api/cluster/skills"),
    ("get", "/api/cluster/instances"),
    ("delete", "/api/cluster/instances/{name}"),
    ("post", "/api/orchestrator/sessions/spawn"),
    ("post", "/api/orchestrator/sessions/send"),
    ("post", "/api/orchestrator/sessions/{session_id}/send"),
    ("get", "/api/orchestrator/sessions"),
    ("get", "/api/orchestrator/sessions/{session_id}"),
    ("get", "/api/orchestrator/sessions/{session_id}/history"),
    ("post", "/api/orchestrator/sessions/{session_id}/close"),
    ("delete", "/api/orchestrator/sessions/{session_id}"),
}


async def test_openapi_lists_every_endpoint(cluster: Cluster) -> None:
    """/openapi.json documents every endpoint of the API, without auth."""
    async with cluster.http.get(cluster.url + "/openapi.json") as resp:
        schema = await resp.json()
    assert resp.status == 200
    found = {(m, p) for p, ops in schema["paths"].items() for m in ops}
    assert found >= EXPECTED
    route = schema["paths"]["/api/orchestrator/route"]["post"]
    assert "RouteResult" in str(route["responses"]["200"])


async def test_docs_page_is_served(cluster: Cluster) -> None:
    """/docs is an HTML page pointing at the schema."""
    async with cluster.http.get(cluster.url + "/docs") as resp:
        text = await resp.text()
    assert resp.status == 200
    assert "openapi.json" in text


async def test_reprs_show_live_state(cluster: Cluster) -> None:
    """The orchestrator's repr counts instances by state, as operators would want to see."""
    assert repr(cluster.service) == "<Orchestrator [instances: 8 healthy]>"
    await cluster.stop_instance("A")
    await cluster.wait_state("A", "down")
    assert repr(cluster.service) == "<Orchestrator [instances: 7 healthy, 1 down]>"
    assert repr(cluster.service.registry) == "<Registry [1 down, 7 healthy]>"
