"""Run-time registration, listing, removal and heartbeat expiry."""

from __future__ import annotations

import asyncio

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.devtools.reference.runner import Registration, registration_lifespan
from openclaw_orchestrator.server.hosting import bind_socket, running

from .conftest import Cluster, start_cluster


async def test_register_list_route_remove(cluster: Cluster) -> None:
    """A registered instance is listed without its credentials, routable, then removable."""
    app = create_instance_app("I", resolve_handler("echo"), token="inst-secret")
    async with running(app) as url:
        status, body = await cluster.post(
            "/api/cluster/register",
            {"name": "I", "url": url, "tags": ["extra"], "weight": 2, "credentials": "inst-secret"},
        )
        assert status == 201, body
        assert body["has_credentials"] is True
        assert "credentials" not in body
        assert "inst-secret" not in str(body)
        status, listing = await cluster.get("/api/cluster/instances")
        assert status == 200
        names = [i["name"] for i in listing["instances"]]
        assert names == [*"ABCDEFGH", "I"]
        assert "inst-secret" not in str(listing)
        status, routed = await cluster.post("/api/orchestrator/route", {"instances": "tag:extra"})
        assert (status, routed["instance"]) == (200, "I")
        async with cluster.http.delete(
            cluster.url + "/api/cluster/instances/I", headers=cluster.headers
        ) as resp:
            assert resp.status == 200
            assert await resp.json() == {"removed": "I"}
    status, body = await cluster.post("/api/orchestrator/route", {"instances": "I"})
    assert status == 400


async def test_reregistering_is_a_heartbeat(cluster: Cluster) -> None:
    """Posting the same registration again answers 200, not 201."""
    spec = {"name": "J", "url": "http://127.0.0.1:9", "heartbeat_ttl": 30}
    assert (await cluster.post("/api/cluster/register", spec))[0] == 201
    assert (await cluster.post("/api/cluster/register", spec))[0] == 200


async def test_delete_unknown_is_404(cluster: Cluster) -> None:
    """Removing a name that does not exist is 404 not_found."""
    async with cluster.http.delete(
        cluster.url + "/api/cluster/instances/NOPE", headers=cluster.headers
    ) as resp:
        body = await resp.json()
    assert resp.status == 404
    assert body["error"]["code"] == "not_found"


async def test_bad_registration_names_the_field(cluster: Cluster) -> None:
    """A malformed registration is a 400 naming the field."""
    status, body = await cluster.post("/api/cluster/register", {"name": "K", "url": "ftp://x"})
    assert status == 400
    assert body["error"]["field"] == "url"
    status, body = await cluster.post(
        "/api/cluster/register", {"name": "bad-name", "url": "http://127.0.0.1:1"}
    )
    assert status == 400
    assert body["error"]["field"] == "name"


async def test_config_instance_cannot_be_hijacked(cluster: Cluster) -> None:
    """A registration cannot replace an instance from the configuration."""
    status, _ = await cluster.post(
        "/api/cluster/register", {"name": "A", "url": "http://127.0.0.1:9"}
    )
    assert status == 400
    assert cluster.service.registry.get("A").spec.url == cluster.instance_urls["A"]


async def test_self_registration_heartbeats_and_expiry() -> None:
    """An instance that registers itself stays while it heartbeats and is dropped after."""
    async with start_cluster("A") as c:
        probe = bind_socket("127.0.0.1", 0)
        port = probe.getsockname()[1]
        probe.close()
        registration = Registration(
            c.url, "S", f"http://127.0.0.1:{port}", api_key=c.api_key, heartbeat_ttl=0.6
        )
        app = create_instance_app(
            "S", resolve_handler("echo"), lifespan=registration_lifespan(registration)
        )
        async with running(app, port=port):
            await asyncio.sleep(1.2)  # two TTLs: only heartbeats keep it
            assert "S" in c.service.registry
            status, body = await c.post("/api/orchestrator/route", {"instances": "S"})
            assert (status, body["instance"]) == (200, "S")
        # Its lifespan deregistered it on shutdown.
        assert "S" not in c.service.registry
        # A registration whose heartbeats stop (no deregistration) expires.
        await c.post(
            "/api/cluster/register",
            {"name": "T", "url": "http://127.0.0.1:9", "heartbeat_ttl": 0.3},
        )
        assert "T" in c.service.registry
        await asyncio.sleep(1.0)
        assert "T" not in c.service.registry
