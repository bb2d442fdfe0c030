"""``--stream`` on ``route`` and ``sessions_send``, as users run it: real ``openclaw``
processes against a live orchestrator and reference instances running the ``stream``
handler (one cluster for the module)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.api.conftest import Cluster, start_cluster
from tests.cli.test_cli_live import cli, cluster_env

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAYLOAD = '{"text": "one two three"}'


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live() -> AsyncIterator[Cluster]:
    """Two reference instances A and B (``stream`` handler) behind an orchestrator."""
    async with start_cluster("AB", handler="stream") as c:
        yield c


async def test_route_stream_prints_the_text_then_a_summary(live: Cluster) -> None:
    env = cluster_env(live)
    run = await cli(
        "route", "--stream", "--instances", "A", "--payload", PAYLOAD, "-o", "table", env=env
    )
    assert run.code == 0, run
    assert run.out == "one two three\n"
    assert run.err.startswith("[A · 1 attempt · ")


async def test_route_stream_json_prints_one_line_per_event(live: Cluster) -> None:
    run = await cli(
        "route", "--stream", "--instances", "B", "--payload", PAYLOAD, env=cluster_env(live)
    )
    assert run.code == 0, run
    lines = [json.loads(line) for line in run.out.splitlines()]
    assert [line["type"] for line in lines] == ["delta", "delta", "delta", "result"]
    assert [line["delta"]["text"] for line in lines[:3]] == ["one ", "two ", "three"]
    assert lines[-1]["result"]["result"] == {"text": "one two three"}


async def test_sessions_send_stream_and_a_failure(live: Cluster) -> None:
    env = cluster_env(live)
    spawn = await cli("sessions_spawn", "--instance", "A", env=env)
    assert spawn.code == 0, spawn
    sid = spawn.json()["session_id"]
    send = await cli(
        "sessions_send", "--id", sid, "--stream", "--data", PAYLOAD, "-o", "table", env=env
    )
    assert send.code == 0, send
    assert send.out == "one two three\n"
    assert send.err.startswith("[A · message 1 · ")
    bad = await cli(
        "sessions_send", "--id", sid, "--stream", "--data", '{"text": 1}', "-o", "table", env=env
    )
    assert bad.code != 0
    assert "invalid_request" in bad.err
