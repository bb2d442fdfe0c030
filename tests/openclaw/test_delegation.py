"""Proof (issue 13): agents on real OpenClaw gateways delegate through the orchestrator.

Two real gateways G1 and G2 and a reference instance R behind one real orchestrator; the
orchestrator skill and MCP server are installed into G1 and G2 with ``openclaw-orchestrator
skill install --state-dir`` (the gateway reloads ``mcp.servers`` live), and every agent turn
runs on the scripted stub model: a ``[stub:delegate=G2]`` message makes G1's model call
the orchestrator's ``sessions_spawn`` and ``sessions_send`` through the gateway's MCP
client (``tool_call`` of ``orchestrator__sessions_spawn``: the gateway's default Tool
Search keeps MCP tools out of the model's ``tools``), and G1's final reply carries G2's
answer. Also a fanout over G2 and R, the hop limit stopping G1 -> G2 -> G1, and a session
token in G1's MCP config limiting its tools to that session (last: it reinstalls G1 with
the token).

Every user message enters G1 through the orchestrator's route (a delivery, so the loop
guard's ledger knows G1 is one hop deep), each in a gateway session of its own.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from pydantic import SecretStr

from openclaw_orchestrator.devtools.openclaw.fleet import OpenClawFleet, start_fleet
from openclaw_orchestrator.devtools.openclaw.install import InstallError, ensure_openclaw
from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.api.app import create_app
from openclaw_orchestrator.server.delegation import LEDGER
from openclaw_orchestrator.server.drivers.openclaw import OpenClawDriver
from openclaw_orchestrator.server.hosting import BackgroundServer
from openclaw_orchestrator.settings import Settings

from ..api.conftest import API_KEY, Cluster
from ..conftest import IN_CI
from .conftest import HEALTH

pytestmark = pytest.mark.asyncio(loop_scope="module")

FLEET_GATEWAYS = ("G1", "G2")
KEY_ENV = "ORCHESTRATOR_API_KEY"
SESSION_ENV = "ORCHESTRATOR_PROOF_SESSION_TOKEN"
"""The variable G1's gateway holds the session token in (for the last test)."""
MAX_HOPS = 2
"""A user's call reaches G1 at hop 1, G1's delegation reaches G2 at hop 2, and G2's
delegation back to G1 is refused: the loop is cut in two turns (each turn on a fresh
gateway session takes seconds on a loaded machine)."""
TURN_TIMEOUT = 150
RELOADED = "config hot reload applied"
S = "/api/orchestrator/sessions"


@dataclass
class Side:
    """The orchestrator and R, started before the gateways, and the session whose token the
    gateways are given."""

    cluster: Cluster
    session_id: str
    token: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def side() -> AsyncIterator[Side]:
    """R (echo) and the orchestrator (/mcp included) on loopback; a session on R."""
    servers: dict[str, BackgroundServer] = {}
    with tempfile.TemporaryDirectory(prefix="orchestrator-proof-") as scratch:
        try:
            servers["R"] = BackgroundServer(create_instance_app("R", resolve_handler("echo")))
            spec = InstanceSpec(name="R", url=await servers["R"].start())
            settings = Settings(
                api_key=API_KEY,
                instances=[spec],
                data_dir=Path(scratch),
                health=HEALTH,
                delegation={"max_hops": MAX_HOPS},
            )
            app = create_app(settings)
            servers["orchestrator"] = BackgroundServer(app)
            url = await servers["orchestrator"].start()
            async with aiohttp.ClientSession() as http:
                c = Cluster(url, API_KEY, {"R": spec.url}, app.state.orchestrator, http, servers)
                status, spawned = await c.post(f"{S}/spawn", {"instance": "R"})
                assert status == 201, spawned
                yield Side(c, spawned["session_id"], spawned["token"])
        finally:
            for server in servers.values():
                server.request_stop()
            await asyncio.gather(*(s.wait_stopped() for s in servers.values()))


@pytest.fixture(scope="module")
def fleet(side: Side) -> Iterator[OpenClawFleet]:
    """G1 and G2 with the orchestrator's key, and the session's token, in their environment
    (started between the async fixtures: the module's loop is not running meanwhile)."""
    try:
        install = ensure_openclaw()
    except InstallError as exc:
        if IN_CI:
            pytest.fail(f"cannot install OpenClaw: {exc}")
        pytest.skip(f"cannot install OpenClaw: {str(exc).strip().splitlines()[-1]}")
    secrets = {KEY_ENV: SecretStr(API_KEY), SESSION_ENV: SecretStr(side.token)}
    with (
        tempfile.TemporaryDirectory(prefix="openclaw-proof-", ignore_cleanup_errors=True) as root,
        start_fleet(FLEET_GATEWAYS, root=Path(root), install=install, secret_env=secrets) as up,
    ):
        yield up


def reloads(fleet: OpenClawFleet, name: str) -> int:
    """How many config hot reloads gateway ``name`` has applied (its log says)."""
    return fleet[name].log_path.read_text(errors="replace").count(RELOADED)


async def install_skill(fleet: OpenClawFleet, side: Side, name: str, *extra: str) -> str:
    """``openclaw-orchestrator skill install --state-dir`` for gateway ``name`` (its folder's
    name is its instance name), then wait until the gateway has reloaded its config."""
    before = reloads(fleet, name)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "openclaw_orchestrator",
        "skill",
        "install",
        "--state-dir",
        str(fleet[name].state_dir),
        "--url",
        side.cluster.url,
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    deadline = time.monotonic() + 30
    while reloads(fleet, name) == before:
        assert time.monotonic() < deadline, f"{name} did not reload:\n{fleet[name].log_tail()}"
        await asyncio.sleep(0.2)
    return out.decode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proof(side: Side, fleet: OpenClawFleet) -> Cluster:
    """G1 and G2 registered with the orchestrator (``driver: "openclaw"``), healthy, with
    the skill and the orchestrator's MCP server installed by the command."""
    c = side.cluster
    for gw in fleet.gateways:
        body = {**gw.spec().model_dump(mode="json"), "credentials": gw.token.get_secret_value()}
        status, reply = await c.post("/api/cluster/register", body)
        assert status in (200, 201), reply
    await asyncio.gather(*(install_skill(fleet, side, name) for name in FLEET_GATEWAYS))
    deadline = time.monotonic() + 30
    while True:
        status, health = await c.get("/api/orchestrator/health?instances=G1,G2")
        if status == 200 and all(health.get(n) == "healthy" for n in FLEET_GATEWAYS):
            return c
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.2)


async def on_g1(c: Cluster, message: str, key: str) -> str:
    """A user message on G1, through the orchestrator's route, in G1's session ``key``: the
    text of G1's final reply."""
    payload = {"message": message, "session_key": f"proof-{key}"}
    status, body = await c.post(
        "/api/orchestrator/route",
        {"instances": "G1", "payload": payload, "timeout": TURN_TIMEOUT},
    )
    assert status == 200, body
    text: str = body["result"]["text"]
    return text


async def gateway_sessions(
    fleet: OpenClawFleet, name: str, http: aiohttp.ClientSession
) -> set[str]:
    """The session keys gateway ``name`` lists (its own ``sessions_list`` tool, invoked
    over its HTTP API)."""
    reply = await OpenClawDriver(http).invoke(
        fleet[name].spec(), {"tool": "sessions_list", "args": {}}, timeout=10, request_id="t"
    )
    return {row["key"] for row in reply["result"]["sessions"]}


async def test_an_agent_on_g1_delegates_a_session_to_g2(
    proof: Cluster, fleet: OpenClawFleet
) -> None:
    """G1's model spawns a session on G2 and sends it the question, both through the
    orchestrator's MCP tools; G1's reply carries G2's answer; the session is in G2's own
    sessions_list and in the orchestrator's history."""
    text = await on_g1(proof, "[stub:delegate=G2] what is six times seven?", "delegate")
    assert text == "G2 answered: echo: what is six times seven?"
    status, listed = await proof.get(f"{S}?instance=G2")
    assert status == 200, listed
    (session,) = listed["sessions"]
    status, history = await proof.get(f"{S}/{session['session_id']}/history")
    assert status == 200, history
    (message,) = history["messages"]
    assert message["data"] == {"message": "what is six times seven?"}
    assert message["reply"]["text"] == "echo: what is six times seven?"
    keys = await gateway_sessions(fleet, "G2", proof.http)
    assert f"agent:main:orch-{session['session_id']}" in keys
    assert repr(LEDGER) == "<DeliveryLedger []>"


async def test_an_agent_on_g1_fans_out_over_g2_and_a_reference_instance(proof: Cluster) -> None:
    """One ``fanout`` tool call from G1's model: G2's agent and R both answer, and both
    answers are in G1's reply."""
    text = await on_g1(proof, "[stub:fanout=G2,R] compare notes", "fanout")
    assert text.startswith("fanout: G2: echo: compare notes | R: "), text
    assert '"payload":{"message":"compare notes"}' in text


async def test_the_hop_limit_stops_a_g1_g2_g1_loop(proof: Cluster) -> None:
    """G1 delegates to G2, whose agent delegates back to G1: that delegation is refused
    with ``delegation_loop`` (G2's MCP calls carry only ``X-Orchestrator-Caller: G2``; the
    delivery in flight to G2, hop 2, gives the count), and the refusal travels back up as
    G2's answer inside G1's reply. Nothing is left in the ledger."""
    text = await on_g1(proof, "[stub:delegate=G2] [stub:delegate=G1] ping", "loop")
    prefix = "G2 answered: delegation to G1 failed: delegation_loop: "
    assert text.startswith(prefix), text
    assert f"(X-Orchestrator-Hops: {MAX_HOPS}); the limit is delegation.max_hops = 2" in text
    status, listed = await proof.get(f"{S}?instance=G1")
    assert status == 200, listed
    (spawned,) = listed["sessions"]  # G2's agent spawned it (a spawn delivers nothing)
    status, history = await proof.get(f"{S}/{spawned['session_id']}/history")
    assert (status, history["total"]) == (200, 0)  # the refused send delivered nothing
    assert repr(LEDGER) == "<DeliveryLedger []>"


async def test_a_session_token_limits_g1s_tools_to_its_session(
    proof: Cluster, side: Side, fleet: OpenClawFleet
) -> None:
    """G1 reinstalled with ``--key-env`` naming the variable that holds session S's token:
    its agent sends in S; a send in another session is ``forbidden`` (our code, in the tool
    result) and ``route`` is not among the tools the gateway got from us (last test: G1
    keeps the token)."""
    await install_skill(fleet, side, "G1", "--key-env", SESSION_ENV)
    own = side.session_id
    text = await on_g1(proof, f"[stub:send={own}] hello session", "token-own")
    assert text.startswith(f"{own} answered: "), text
    assert '"message":"hello session"' in text
    status, other = await proof.post(f"{S}/spawn", {"instance": "R"})
    assert status == 201, other
    text = await on_g1(proof, f"[stub:send={other['session_id']}] hi", "token-other")
    assert text.startswith(f"send to {other['session_id']} failed: forbidden: "), text
    text = await on_g1(proof, "[stub:route=R] hi", "token-route")
    assert text.startswith("route to R failed: gateway: Unknown tool id: orchestrator__route"), text
    status, history = await proof.get(f"{S}/{own}/history")
    assert status == 200, history
    assert [m["data"] for m in history["messages"]] == [{"message": "hello session"}]
    status, history = await proof.get(f"{S}/{other['session_id']}/history")
    assert (status, history["total"]) == (200, 0)
