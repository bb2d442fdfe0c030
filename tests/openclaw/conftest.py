"""Real OpenClaw gateways for the integration tests: installed once, started once.

``fleet`` installs Node and ``openclaw@2026.9.6`` into the cache on first use, then starts
the stub model and gateways O1 and O2 as subprocesses (each with its own state folder, config
and token), waits until ``/readyz`` says ready and warms each one up with one agent turn
(a fresh gateway's first turn takes seconds). The real-gateway tests live in
``test_gateways.py`` (and ``test_streaming.py``, with one gateway), so the module scope
starts them once per module and stops them (process groups and all) as soon as that
module is done, instead of keeping Node processes idle through the rest of the suite.

Where the npm registry cannot be reached the install fails: the tests skip with the
reason outside CI and fail in CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from openclaw_orchestrator.devtools.openclaw.fleet import OpenClawFleet, start_fleet
from openclaw_orchestrator.devtools.openclaw.install import InstallError, ensure_openclaw
from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.api.app import create_app
from openclaw_orchestrator.server.hosting import BackgroundServer
from openclaw_orchestrator.settings import Settings

from ..api.conftest import API_KEY, ORCHESTRATOR, Cluster
from ..conftest import IN_CI

GATEWAYS = ("O1", "O2")
FLEET_TIMEOUT = 480
"""Seconds for the test that starts the fleet: install (first run only), start, warm-up."""
HEALTH = {
    "interval": 0.5,
    "probe_timeout": 3.0,
    "down_backoff": 0.2,
    "degraded_latency": 10.0,  # above probe_timeout: a slow probe on a loaded machine is no verdict
    "failure_threshold": 3,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the first test of each module that needs the fleet (a module-scoped fixture:
    each module starts its own, and with xdist the modules may run on different workers)
    the time to install and start it."""
    here = Path(__file__).parent  # the hook sees every item of the session: only ours
    marked: set[str] = set()
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if here not in item.path.parents or module in marked:
            continue
        if "fleet" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(FLEET_TIMEOUT))
            marked.add(module)


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest) -> Iterator[OpenClawFleet]:
    """The stub model and two warmed-up real gateways O1 and O2 on loopback (a module's
    ``FLEET_GATEWAYS``, when it sets one, names fewer: each gateway costs start-up time);
    their state (about 60 MB a gateway) is removed afterwards."""
    names: Sequence[str] = getattr(request.module, "FLEET_GATEWAYS", GATEWAYS)
    try:
        install = ensure_openclaw()
    except InstallError as exc:
        if IN_CI:
            pytest.fail(f"cannot install OpenClaw: {exc}")
        reason = str(exc).strip().splitlines()
        pytest.skip(f"cannot install OpenClaw (npm registry unreachable?): {reason[-1]}")
    with (
        tempfile.TemporaryDirectory(prefix="openclaw-test-", ignore_cleanup_errors=True) as root,
        start_fleet(names, root=Path(root), install=install) as started,
    ):
        yield started


@contextlib.asynccontextmanager
async def mixed_cluster(
    fleet: OpenClawFleet,
    references: Iterable[str] = "AB",
    *,
    extra: Sequence[InstanceSpec] = (),
    weights: dict[str, float] | None = None,
    **overrides: Any,
) -> AsyncIterator[Cluster]:
    """An orchestrator over echo reference instances ``references`` plus the fleet's
    gateways (``driver: "openclaw"``) and any ``extra`` specs, with fast health checks."""
    servers: dict[str, BackgroundServer] = {}
    scratch = tempfile.TemporaryDirectory(prefix="orchestrator-openclaw-")
    try:
        for name in references:
            app = create_instance_app(name, resolve_handler("echo"), fault_api=True)
            servers[name] = BackgroundServer(app)
            await servers[name].start()
        specs = [InstanceSpec(name=n, url=s.url) for n, s in servers.items()]
        specs += [gw.spec(weight=(weights or {}).get(gw.name, 1.0)) for gw in fleet.gateways]
        settings = Settings(
            api_key=API_KEY,
            instances=[*specs, *extra],
            data_dir=Path(scratch.name),
            **{"health": HEALTH, **overrides},
        )
        app = create_app(settings)
        servers[ORCHESTRATOR] = BackgroundServer(app)
        url = await servers[ORCHESTRATOR].start()
        urls = {spec.name: spec.url for spec in settings.instances.static}
        async with aiohttp.ClientSession() as http:
            yield Cluster(url, API_KEY, urls, app.state.orchestrator, http, servers)
    finally:
        for server in servers.values():
            server.request_stop()
        for server in servers.values():
            await server.wait_stopped()
        scratch.cleanup()
