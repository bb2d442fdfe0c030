"""Instance URLs, health paths and instances.allow/deny at the API (issue 9, items 2 and 10).

Real orchestrators and instances on 127.0.0.1; the only "other" addresses are ones the
policy refuses before any connect, and a counting server proves nothing was connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import pytest

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.errors import InstanceError
from openclaw_orchestrator.models import InstanceSpec, RouteRequest
from openclaw_orchestrator.server.api.app import create_app
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.server.drivers.base import Delta, InstanceDriver, ProbeResult
from openclaw_orchestrator.server.hosting import BackgroundServer, running
from openclaw_orchestrator.settings import ConfigError, Settings, load_settings

from ..counting_server import counting_server
from .conftest import API_KEY, FAST_HEALTH, Cluster, start_cluster

MALFORMED_URLS = [
    "http://127.0.0.1:1x",
    "http://127.0.0.1:99999",
    "http://[::1",
    "http://127.0.0.1\\@127.0.0.1:1",
    "http://\\\\127.0.0.1:1",
    "http://:80",
    "http:///x",
    "http://127.0.0.1:1?x=1",
    "http://127.0.0.1:1#x",
    "http://user:s3cret-77@127.0.0.1:1",
    "http://127.1:1",
    "http://127.0.0.1:1/a/../b",
    "ftp://127.0.0.1:1",
]
BAD_HEALTH_PATHS = ["@127.0.0.1:1/x", "//127.0.0.1:1/x", "x", "/a/../b", "/a b", "/a\\b", "/h?x"]
METADATA_URLS = [
    "http://169.254.169.254:80",
    "http://[fd00:ec2::254]:80",
    "http://[::ffff:169.254.169.254]:80",
    "http://100.100.100.200:80",
    "http://metadata.google.internal:80",
    "http://[fe80::1]:80",
]


async def _register(cluster: Cluster, **body: Any) -> tuple[int, Any]:
    return await cluster.post("/api/cluster/register", body)


async def _still_serving(cluster: Cluster, names: set[str]) -> None:
    """Route and fanout to "all" answer 200 and the registry holds exactly ``names``."""
    status, body = await cluster.post("/api/orchestrator/route", {"payload": {"x": 1}})
    assert status == 200, body
    status, body = await cluster.post(
        "/api/orchestrator/fanout", {"targets": "all", "payload": {"x": 1}}
    )
    assert status == 200, body
    status, listing = await cluster.get("/api/cluster/instances")
    assert {i["name"] for i in listing["instances"]} == names


async def test_malformed_urls_are_refused_at_registration() -> None:
    """Each malformed URL is a 400 naming url, and the fleet keeps serving (was: 500s)."""
    async with start_cluster("AB") as cluster:
        for url in MALFORMED_URLS:
            status, body = await _register(cluster, name="Z", url=url, credentials="tok")
            assert status == 400, (url, body)
            assert body["error"]["field"] == "url", (url, body)
            assert "s3cret-77" not in str(body)
        await _still_serving(cluster, {"A", "B"})


async def test_userinfo_points_to_credentials() -> None:
    """userinfo in a URL is refused with a message that says to use credentials instead."""
    async with start_cluster("A") as cluster:
        status, body = await _register(cluster, name="Z", url="http://u:p@127.0.0.1:1")
    assert status == 400
    assert "'credentials'" in body["error"]["message"]


async def test_bad_health_paths_are_refused_at_registration() -> None:
    """A health path that is not a plain path is a 400 naming health_path."""
    async with start_cluster("A") as cluster:
        url = cluster.instance_urls["A"]
        for path in BAD_HEALTH_PATHS:
            status, body = await _register(cluster, name="Z", url=url, health_path=path)
            assert status == 400, (path, body)
            assert body["error"]["field"] == "health_path", (path, body)
        await _still_serving(cluster, {"A"})


async def test_metadata_and_link_local_addresses_are_refused_by_default() -> None:
    """The default deny list refuses cloud metadata and link-local hosts: 400 naming url."""
    async with start_cluster("A") as cluster:
        for url in METADATA_URLS:
            status, body = await _register(cluster, name="Z", url=url)
            assert status == 400, (url, body)
            assert body["error"]["field"] == "url"
            assert "instances.deny" in body["error"]["message"], body
        await _still_serving(cluster, {"A"})


async def test_a_request_that_cannot_be_built_fails_that_instance_only() -> None:
    """An instance whose URL cannot make a request (stored before URLs were checked) is a
    failing entry of its own: route and fanout to all stay 200, routing to it alone is its
    error (not a 500), and the prober keeps probing it and everyone else."""
    async with start_cluster("AB") as cluster:
        broken = InstanceSpec.model_construct(
            name="Z", url="http://127.0.0.1:1x", driver="worker", weight=1.0, tags=[]
        )
        cluster.service.registry.upsert(broken, "registered", cluster.service.clock())
        status, body = await cluster.post(
            "/api/orchestrator/fanout", {"targets": "all", "payload": {"x": 1}}
        )
        assert status == 200, body
        entries = {e["instance"]: e for e in body["results"]}
        assert entries["Z"]["status"] == "error"
        assert entries["Z"]["error"]["code"] == "instance_error"
        assert {entries["A"]["status"], entries["B"]["status"]} == {"ok"}
        status, body = await cluster.post(
            "/api/orchestrator/route", {"instances": "Z", "payload": {"x": 1}}
        )
        assert status == 502, body
        assert "cannot build a request" in body["error"]["message"]
        await _wait_for_probe_failures(cluster, "Z", 3)
        await _still_serving(cluster, {"A", "B", "Z"})
        for name in "AB":
            assert cluster.service.registry.get(name).health.state.value == "healthy"


async def _wait_for_probe_failures(cluster: Cluster, name: str, count: int) -> None:
    """Wait until the prober has failed ``name`` ``count`` times in a row."""
    for _ in range(200):
        status, body = await cluster.get(f"/api/orchestrator/health?instances={name}&detail=true")
        assert status == 200, body
        if body[name]["consecutive_failures"] >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} was not probed {count} times: {body}")


class _DefectiveDriver:
    """A driver with a bug: its calls raise what no driver may raise."""

    kind = "worker"
    fences_sessions = False

    async def probe(self, instance: InstanceSpec, *, timeout: float) -> ProbeResult:
        raise RuntimeError("a defect in the driver")

    async def invoke(
        self,
        instance: InstanceSpec,
        payload: Any,
        *,
        timeout: float,
        request_id: str,
        on_delta: Delta | None = None,
    ) -> Any:
        raise TypeError("another defect")

    async def aclose(self) -> None:
        """Nothing to release."""


async def test_the_prober_survives_a_driver_defect(tmp_path: Path) -> None:
    """An unexpected exception in a probe is a recorded probe failure and the prober keeps
    running (it used to end the prober task with a traceback); one in a call is that
    instance's InstanceError, not an exception the API would answer 500 to."""
    settings = Settings(instances=[{"name": "A", "url": "http://127.0.0.1:9"}], health=FAST_HEALTH)
    driver = cast(InstanceDriver, _DefectiveDriver())
    async with Orchestrator(settings, drivers={"worker": driver}) as orchestrator:
        with pytest.raises(InstanceError, match="TypeError: another defect") as failed:
            await orchestrator.route(RouteRequest(instances="A", retry=0), request_id="r1")
        for _ in range(200):
            detail = orchestrator.health_detail("A")["A"]
            if detail.consecutive_failures >= 3:
                break
            await asyncio.sleep(0.05)
    assert failed.value.instance == "A"
    assert detail.consecutive_failures >= 3
    assert detail.last_error == "probe failed: RuntimeError: a defect in the driver"


@contextlib.asynccontextmanager
async def _orchestrator(tmp_path: Path, **instances: Any) -> AsyncIterator[Cluster]:
    """An orchestrator with no configured instance and the given instances section."""
    settings = Settings(api_key=API_KEY, instances=instances, health=FAST_HEALTH, data_dir=tmp_path)
    app = create_app(settings)
    server = BackgroundServer(app)
    url = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Cluster(url, API_KEY, {}, app.state.orchestrator, http)
    finally:
        server.request_stop()
        await server.wait_stopped()


async def test_a_name_resolving_into_deny_fails_route_fanout_and_probe(tmp_path: Path) -> None:
    """``localhost`` with 127.0.0.0/8 denied: registration passes (a name), then route,
    fanout and probe all fail with address_not_allowed, and nothing is ever connected."""
    async with (
        counting_server() as (port, accepted),
        _orchestrator(tmp_path, deny=["127.0.0.0/8"]) as cluster,
    ):
        status, body = await _register(cluster, name="L", url=f"http://localhost:{port}")
        assert status == 201, body
        status, body = await cluster.post(
            "/api/orchestrator/route", {"instances": "L", "payload": {"x": 1}, "retry": 0}
        )
        assert (status, body["error"]["code"]) == (502, "address_not_allowed"), body
        assert "localhost resolves to 127.0.0.1, inside instances.deny 127.0.0.0/8" in str(body)
        status, body = await cluster.post(
            "/api/orchestrator/fanout", {"targets": "all", "payload": {"x": 1}}
        )
        assert status == 200, body
        assert body["results"][0]["error"]["code"] == "address_not_allowed"
        await _wait_for_probe_failures(cluster, "L", 1)
        status, health = await cluster.get("/api/orchestrator/health?instances=L&detail=true")
        assert "instances.deny" in health["L"]["last_error"]
        status, body = await _register(cluster, name="M", url=f"http://127.0.0.1:{port}")
        assert (status, body["error"]["field"]) == (400, "url")
    assert accepted == []


async def test_allow_list_admits_loopback_and_refuses_the_rest(tmp_path: Path) -> None:
    """With only 127.0.0.1/32 allowed: 127.0.0.1 and localhost work end to end; another
    address is a 400 at registration, and a name resolving outside is address_not_allowed."""
    app = create_instance_app("A", resolve_handler("echo"))
    async with (
        running(app) as instance_url,
        _orchestrator(tmp_path, allow=["127.0.0.1/32"]) as cluster,
    ):
        port = instance_url.rsplit(":", 1)[1]
        for name, url in (("A", instance_url), ("L", f"http://localhost:{port}")):
            status, body = await _register(cluster, name=name, url=url)
            assert status == 201, body
            status, body = await cluster.post(
                "/api/orchestrator/route", {"instances": name, "payload": {"n": 1}}
            )
            assert (status, body["instance"]) == (200, name), body
        status, body = await _register(cluster, name="X", url=f"http://127.0.0.2:{port}")
        assert (status, body["error"]["field"]) == (400, "url")
        assert "outside instances.allow" in body["error"]["message"]


def test_a_configured_instance_at_a_denied_address_is_a_config_error(tmp_path: Path) -> None:
    """A config file naming a metadata address is refused at start, naming the instance."""
    config = tmp_path / "config.json"
    config.write_bytes(
        orjson.dumps({"instances": [{"name": "M", "url": "http://169.254.169.254:80"}]})
    )
    with pytest.raises(ConfigError, match=r"static\.0\.url \(instance M\).*instances\.deny"):
        load_settings(config)


def test_bad_allow_and_deny_entries_are_config_errors(tmp_path: Path) -> None:
    """An allow/deny entry that is neither a CIDR nor a host name is a config error."""
    config = tmp_path / "config.json"
    config.write_bytes(orjson.dumps({"instances": {"deny": ["10.0.0.0/33"]}}))
    with pytest.raises(ConfigError, match=r"instances\.deny.*10\.0\.0\.0/33"):
        load_settings(config)


def test_env_deny_merges_with_a_files_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCHESTRATOR_INSTANCES__DENY sets the deny list and keeps the file's bare fleet (it
    used to replace the fleet with an empty one)."""
    config = tmp_path / "config.json"
    config.write_bytes(orjson.dumps({"instances": [{"name": "A", "url": "http://127.0.0.1:1"}]}))
    monkeypatch.setenv("ORCHESTRATOR_INSTANCES__DENY", '["10.0.0.0/8"]')
    settings = load_settings(config)
    assert settings.instances.deny == ["10.0.0.0/8"]
    assert [spec.name for spec in settings.instances.static] == ["A"]
