"""The orchestrator skill (``skills/orchestrator/SKILL.md``) says what is true: its
frontmatter is what OpenClaw's format asks, real OpenClaw loads it, and every example in its
body runs against a live orchestrator with real reference instances A–H.

The body's examples are fenced blocks: a ``json`` block holding ``{"tool", "arguments"}`` is
a tool call, made over the orchestrator's ``/mcp`` in the order written (``<run_id>`` is
the run the last ``runs_submit`` returned); it must succeed, or, with ``fails:CODE`` after
``json``, fail with that code. The ``bash`` blocks are one script, run with ``set -euo
pipefail`` and the orchestrator's URL and key in the environment: it must exit 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from openclaw_orchestrator.devtools.openclaw.install import InstallError, ensure_openclaw
from openclaw_orchestrator.skills import SKILL_FILE, SKILL_IDS, load_skill, skill_dir
from tests.api.conftest import Cluster, start_cluster
from tests.cli.test_cli_live import BIN, cluster_env
from tests.conftest import IN_CI

LIVE = pytest.mark.asyncio(loop_scope="module")
"""The live tests share the module's cluster (and its event loop)."""

SKILL = load_skill("orchestrator")
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
RUN_ID = "<run_id>"
HINT = "orchestrate delegate multi-instance session spawn send fanout aggregate instances"
SCRIPT_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block of the body: its language, the rest of its info string, its text."""

    language: str
    info: str
    text: str


def blocks(language: str) -> list[Block]:
    """The body's fenced blocks in ``language``, in order."""
    found = (Block(m[1], m[2].strip(), m[3]) for m in FENCE.finditer(SKILL.text))
    return [block for block in found if block.language == language]


def tool_calls() -> list[tuple[dict[str, Any], str | None]]:
    """Every tool call of the body with the error code it must fail with (None: success)."""
    calls = []
    for block in blocks("json"):
        call = json.loads(block.text)
        if "tool" in call:
            assert set(call) == {"tool", "arguments"}, call
            calls.append((call, block.info.removeprefix("fails:") or None))
    return calls


def keys(body: Any) -> set[str]:
    """The keys of a JSON object (a tool's structured content); fails on anything else."""
    assert isinstance(body, dict), body
    return set(body)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live() -> AsyncIterator[Cluster]:
    """Reference instances A–H (the body's targets) behind an orchestrator."""
    async with start_cluster(fast_paths=True) as c:
        yield c


# -- the frontmatter --------------------------------------------------------------------------


def test_frontmatter_follows_the_openclaw_format() -> None:
    """Lowercase name matching its folder, a one-line description under 160 characters, and
    metadata as one line of JSON (OpenClaw's single-line fallback parser reads it too)."""
    assert SKILL_IDS == ("orchestrator",)
    assert skill_dir("orchestrator").name == SKILL.name == "orchestrator"
    assert NAME.match(SKILL.name)
    assert "\n" not in SKILL.description
    assert 0 < len(SKILL.description) < 160
    front = SKILL.text.split("---\n")[1]
    (line,) = [line for line in front.splitlines() if line.startswith("metadata:")]
    assert json.loads(line.removeprefix("metadata:")) == SKILL.metadata
    assert yaml.safe_load(front) == {
        "name": SKILL.name,
        "description": SKILL.description,
        "metadata": SKILL.metadata,
    }


def test_metadata_carries_the_seed_tags_and_hint() -> None:
    """The seed's cluster and embedding hint, tags including the cluster, and OpenClaw's own
    key holding only keys OpenClaw documents."""
    assert SKILL.cluster == "distributed-comms"
    assert SKILL.embedding_hint == HINT
    assert "distributed-comms" in SKILL.tags
    assert set(SKILL.metadata) == {"openclaw", "cluster", "tags", "embedding_hint"}
    assert set(SKILL.metadata["openclaw"]) <= {"emoji", "homepage", "requires", "os", "always"}


def test_unknown_skill_is_not_found() -> None:
    """An id the package does not ship is ``not_found`` naming ``skillId``."""
    with pytest.raises(Exception, match="no skill 'nope'") as caught:
        load_skill("nope")
    assert getattr(caught.value, "code", None) == "not_found"
    assert getattr(caught.value, "field", None) == "skillId"


# -- the body's examples, live ----------------------------------------------------------------


@LIVE
async def test_every_tool_is_shown_and_every_tool_call_runs(live: Cluster) -> None:
    """Each tool call of the body, over /mcp in order, does what the body says; together
    they call every tool the MCP server lists."""
    calls = tool_calls()
    run_id = None
    headers = {"Authorization": f"Bearer {live.api_key}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(live.url + "/mcp", http_client=http)) as client,
    ):
        listed = {tool.name for tool in (await client.list_tools()).tools}
        for call, failure in calls:
            arguments = {k: run_id if v == RUN_ID else v for k, v in call["arguments"].items()}
            result = await client.call_tool(call["tool"], arguments)
            body = result.structured_content
            assert isinstance(body, dict), result
            if failure is None:
                assert not result.is_error, (call, body)
            else:
                assert result.is_error, (call, body)
                assert body["error"]["code"] == failure
            if call["tool"] == "runs_submit":
                run_id = body["run_id"]
    assert {call["tool"] for call, _ in calls} == listed
    assert run_id is not None


@LIVE
async def test_the_tool_calls_give_what_the_body_says_to_read(live: Cluster) -> None:
    """The fields the "Reading the results" section names are the ones the tools return."""
    calls = {call["tool"]: call["arguments"] for call, failure in tool_calls() if not failure}
    headers = {"Authorization": f"Bearer {live.api_key}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(live.url + "/mcp", http_client=http)) as client,
    ):
        routed = (await client.call_tool("route", calls["route"])).structured_content
        fanned = (await client.call_tool("fanout", calls["fanout"])).structured_content
        spawn = {**calls["sessions_spawn"], "sessionId": "reading-1"}
        spawned = (await client.call_tool("sessions_spawn", spawn)).structured_content
        send = {**calls["sessions_send"], "sessionId": "reading-1"}
        sent = (await client.call_tool("sessions_send", send)).structured_content
    assert {"instance", "result", "attempts", "skipped"} <= keys(routed)
    assert {"results", "value", "succeeded", "failed", "timed_out"} <= keys(fanned)
    assert {"instance", "status", "result"} <= keys(fanned and fanned["results"][0])
    assert {"session_id", "instance", "token"} <= keys(spawned)
    assert {"seq", "instance", "reply"} <= keys(sent)
    for word in ("instance", "attempts", "skipped", "results", "succeeded", "token", "seq"):
        assert f"`{word}`" in SKILL.text


@LIVE
async def test_the_command_line_examples_run(live: Cluster, tmp_path: Path) -> None:
    """The bash blocks, as one script with the orchestrator's URL and key: exit 0."""
    script = "\n".join(["set -euo pipefail", *(block.text for block in blocks("bash"))])
    assert "openclaw-orchestrator sessions_spawn" in script
    env = cluster_env(live, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), SCRIPT_TIMEOUT)
    assert proc.returncode == 0, f"stdout:\n{out.decode()}\nstderr:\n{err.decode()}"
    assert b'"session_id":"review-2"' in out.replace(b" ", b"")
    assert b'"state":"succeeded"' in out.replace(b" ", b"")


# -- real OpenClaw ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """An OpenClaw state folder whose agent workspace holds the skill under ``skills/``."""
    with tempfile.TemporaryDirectory(prefix="skill-openclaw-") as scratch:
        root = Path(scratch)
        folder = root / "workspace" / "skills" / "orchestrator"
        folder.mkdir(parents=True)
        (folder / SKILL_FILE).write_text(SKILL.text, encoding="utf-8")
        config = {"agents": {"defaults": {"workspace": str(root / "workspace")}}}
        (root / "state").mkdir()
        (root / "state" / "openclaw.json").write_text(json.dumps(config), encoding="utf-8")
        yield root


@pytest.mark.timeout(600)  # the first use installs Node and openclaw into the cache
def test_real_openclaw_loads_the_skill(workspace: Path) -> None:
    """``openclaw skills info orchestrator`` of the pinned OpenClaw finds it in the
    workspace, eligible and visible to the model, with our name, description and emoji."""
    try:
        install = ensure_openclaw()
    except InstallError as exc:
        if IN_CI:
            raise
        pytest.skip(f"OpenClaw could not be installed: {exc}")
    state = workspace / "state"
    env = install.env(
        {
            "PATH": os.environ["PATH"],
            "HOME": str(workspace),
            "OPENCLAW_STATE_DIR": str(state),
            "OPENCLAW_CONFIG_PATH": str(state / "openclaw.json"),
        }
    )
    done = subprocess.run(
        install.command("skills", "info", "orchestrator", "--json"),
        env=env, cwd=workspace, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert (info["name"], info["description"]) == (SKILL.name, SKILL.description)
    assert info["source"] == "openclaw-workspace"
    assert info["eligible"] is True
    assert info["modelVisible"] is True
    assert info["emoji"] == SKILL.metadata["openclaw"]["emoji"]
