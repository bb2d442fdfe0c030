"""A client-only install (no ``server`` extra) runs the SDK and every client command, and the
server commands say in one line what to install.

Two proofs. Fast, in this venv: a child process where the server's packages cannot be
imported (``sys.modules[name] = None``, Python's own "not installed" marker) runs the SDK and
the CLI against a live orchestrator. Real: ``pip install`` of this checkout, without extras,
into a fresh venv, whose ``openclaw`` then talks to a live orchestrator.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
import venv
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openclaw_orchestrator.cli.server_extra import SERVER_INSTALL_HINT, SERVER_MODULES
from tests.api.conftest import Cluster, start_cluster
from tests.cli.test_cli_live import Run, base_env, cluster_env, free_port, run_argv
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[1]
SERVER_ONLY = (*SERVER_MODULES, "starlette", "anyio")
"""Unimportable in the blocked child: the extra's modules and what only they bring in."""
PIP_TIMEOUT = 300.0
FIND_MODULES = """\
import importlib.util, sys
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent is missing
        return False
print([name for name in sys.argv[1:] if found(name)])
"""
"""Prints which of its arguments the interpreter can find (a dotted one: its parent too)."""

_BLOCK = f"""\
import sys
for _name in {SERVER_ONLY!r}:
    sys.modules[_name] = None
"""
_CLI = """\
sys.argv[0] = "openclaw-orchestrator"
from openclaw_orchestrator.cli.entry import orchestrator_main
orchestrator_main()
"""
_SDK = """\
import asyncio
import openclaw_orchestrator as oc

url, key = sys.argv[1], sys.argv[2]
with oc.Client(url, key) as client:
    assert client.route({"n": 1}, instances=["A"]).instance == "A"
    assert client.health() == {"A": "healthy", "B": "healthy"}
    session = client.sessions.spawn("sdk-only", instance="B")
    assert session.send({"m": 1}).instance == "B"
    assert session.history().total == 1
    session.close()
    try:
        client.sessions.send("sdk-only", {"m": 2})
    except oc.SessionClosedError:
        pass
    else:
        raise AssertionError("a closed session took a message")


async def fan() -> None:
    async with oc.AsyncClient(url, key) as client:
        result = await client.fanout({"n": 2}, targets="A,B")
        assert sorted(e.instance for e in result.results) == ["A", "B"]


asyncio.run(fan())
print("sdk ok")
"""
CLI_BLOCKED = _BLOCK + _CLI
SDK_BLOCKED = _BLOCK + _SDK


def blocked(*args: str) -> list[str]:
    """``openclaw-orchestrator <args>`` in a child that cannot import the server."""
    return [sys.executable, "-c", CLI_BLOCKED, *args]


def server_commands(port: int) -> list[list[str]]:
    """``serve``, ``up`` and ``instance serve``, each able to start if the server were there."""
    return [
        ["serve", "--port", str(port)],
        ["up", "--instances", "A", "--port", str(port), "--base-port", str(port + 1)],
        ["instance", "serve", "--name", "A", "--port", "0"],
    ]


def assert_server_missing(result: Run) -> None:
    """Exactly the one-line hint on stderr, nothing on stdout, exit 2."""
    assert (result.code, result.out, result.err) == (2, "", SERVER_INSTALL_HINT + "\n"), result


@pytest.fixture
async def live() -> AsyncIterator[Cluster]:
    """Two healthy echo instances A and B behind an orchestrator."""
    async with start_cluster("AB") as c:
        yield c


def test_server_modules_match_the_server_extra() -> None:
    """The check looks for exactly the modules of pyproject's ``server`` extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_module_of(requirement) for requirement in project["optional-dependencies"]["server"]}
    assert set(SERVER_MODULES) == wanted


_NAMESPACED = {
    "opentelemetry_api": "opentelemetry",
    "opentelemetry_sdk": "opentelemetry.sdk",
    "opentelemetry_exporter_otlp_proto_http": "opentelemetry.exporter.otlp.proto.http",
}
"""Distributions that share one namespace package: the module each one brings."""


def _module_of(requirement: str) -> str:
    """``uvicorn[standard]>=0.30`` -> ``uvicorn``; ``fastapi-offline`` -> ``fastapi_offline``."""
    name = requirement.split(";")[0]
    for stop in "[<>=!~ ":
        name = name.split(stop)[0]
    module = name.strip().lower().replace("-", "_")
    return _NAMESPACED.get(module, module)


async def test_sdk_runs_without_the_server(live: Cluster) -> None:
    """Client, AsyncClient and sessions work in a process that cannot import the server."""
    result = await run_argv(
        [sys.executable, "-c", SDK_BLOCKED, live.url, live.api_key], env=base_env()
    )
    assert (result.code, result.out) == (0, "sdk ok\n"), result


async def test_client_commands_run_without_the_server(live: Cluster) -> None:
    """health, instances, route and fanout (fast path and Typer path), every sessions_*
    command, register and unregister work in a process that cannot import the server."""
    env = cluster_env(live)
    stateless = [
        ["health"],
        ["health", "-o", "table"],
        ["instances"],
        ["instances", "-o", "table"],
        ["route", "--instances", "A", "--payload", '{"n": 1}'],
        ["route", "--instances", "A", "--payload", '{"n": 1}', "-o", "table"],
        ["fanout", "--targets", "A-B", "--payload", '{"n": 2}'],
        ["fanout", "--targets", "A-B", "--payload", '{"n": 2}', "-o", "table"],
        ["sessions_list"],
    ]
    session = [
        ["sessions_spawn", "--id", "cli-only", "--instance", "A"],
        ["sessions_send", "--id", "cli-only", "--data", '{"m": 1}'],
        ["sessions_history", "--id", "cli-only"],
        ["sessions_close", "--id", "cli-only"],
    ]
    registry = [
        ["register", "--name", "Z", "--url", live.instance_urls["A"]],
        ["unregister", "Z"],
    ]

    async def in_order(commands: list[list[str]]) -> list[Run]:
        """Each command once the one before it has exited (each needs what it left)."""
        return [await run_argv(blocked(*args), env=env) for args in commands]

    async def stateless_then_registry() -> tuple[list[Run], list[Run]]:
        """The stateless commands together, then Z's registration and removal (not while
        ``health`` could see Z)."""
        results = await asyncio.gather(*(run_argv(blocked(*a), env=env) for a in stateless))
        return list(results), await in_order(registry)

    # A session's life (on A, which the others only read) alongside everything else.
    (results, registry_results), session_results = await asyncio.gather(
        stateless_then_registry(), in_order(session)
    )
    for result in [*results, *session_results, *registry_results]:
        assert result.code == 0, result
    assert results[0].json() == {"A": "healthy", "B": "healthy"}
    assert session_results[-1].json()["state"] == "closed"


async def test_server_commands_name_the_extra_without_it() -> None:
    """serve, up and instance serve without the server: one line naming the extra, exit 2."""
    commands = server_commands(free_port())
    results = await asyncio.gather(*(run_argv(blocked(*args), env=base_env()) for args in commands))
    for result in results:
        assert_server_missing(result)


# -- the real thing: a fresh venv with `pip install <this checkout>` --------------------------


@pytest.fixture(scope="module")
def client_only_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding this checkout installed without extras (a wheel built by pip, its
    declared dependencies resolved and installed from the index).

    The venv gets no pip of its own: this venv's pip installs into it (``--python``), which
    skips ``ensurepip`` (~6 s) and Python's bundled pip, twice as slow as a current one.
    ``--no-compile``: no ``.pyc`` for every installed file up front (a third of pip's time);
    the interpreter compiles what the test imports."""
    home = tmp_path_factory.mktemp("client-only") / "venv"
    venv.create(home, with_pip=False)
    pip = [sys.executable, "-m", "pip", "--python", str(home / "bin" / "python")]
    done = subprocess.run(
        [*pip, "install", "--quiet", "--no-compile", "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        if IN_CI:
            pytest.fail(f"pip install of the checkout failed:\n{tail}")
        pytest.skip(f"pip could not install the checkout into a fresh venv:\n{tail}")
    return home / "bin"


@pytest.mark.timeout(PIP_TIMEOUT + 60)  # a pip with a cold cache may take more than a minute
async def test_fresh_client_install_has_no_server(client_only_venv: Path, live: Cluster) -> None:
    """After `pip install openclaw-orchestrator` (no extras) no server package is installed,
    `openclaw orchestrator health` answers from a live orchestrator, and serve, up and
    instance serve print the one-line hint and exit 2."""
    python, openclaw = str(client_only_venv / "python"), str(client_only_venv / "openclaw")
    found = await run_argv([python, "-c", FIND_MODULES, *SERVER_ONLY], env=base_env())
    assert (found.code, found.out) == (0, "[]\n"), found
    health = await run_argv(
        [openclaw, "orchestrator", "health", "--url", live.url],
        env=base_env(ORCHESTRATOR_API_KEY=live.api_key),
    )
    assert health.code == 0, health
    assert health.json() == {"A": "healthy", "B": "healthy"}
    commands = server_commands(free_port())
    results = await asyncio.gather(
        *(run_argv([openclaw, "orchestrator", *args], env=base_env()) for args in commands)
    )
    for result in results:
        assert_server_missing(result)
