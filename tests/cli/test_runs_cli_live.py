"""The run commands as users run them: real ``openclaw`` processes against a live
orchestrator and real instances (``start_cluster``) on 127.0.0.1: ``--async`` on route,
fanout and sessions_send, and ``runs list|get|wait|cancel|events``.

As in ``test_cli_live``, every command runs through ``asyncio.create_subprocess_exec`` so
the cluster keeps serving in the test's loop; output is JSON unless ``-o table`` is given.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from openclaw_orchestrator.cli.exits import ExitCode
from tests.api.conftest import Cluster, start_cluster
from tests.cli.test_cli_live import cli, cluster_env

RUN_KEYS = {
    "run_id",
    "kind",
    "state",
    "request",
    "created_at",
    "updated_at",
    "deadline_at",
    "started_at",
    "finished_at",
    "attempts",
    "instance",
    "cancel_requested",
    "result",
    "error",
    "callback",
}


@pytest.fixture
async def live() -> AsyncIterator[Cluster]:
    """Four healthy echo instances A–D behind an orchestrator with a SQLite store."""
    async with start_cluster("ABCD") as c:
        yield c


async def test_route_async_then_wait_get_and_events(live: Cluster) -> None:
    """`route --async` prints the run (JSON) or its id (table); `runs wait` prints it
    succeeded (exit 0), `runs get` the same, `runs events` one JSON object per line."""
    env = cluster_env(live)
    submitted, bare = await asyncio.gather(
        cli("route", "--instances", "A", "B", "--payload", '{"data": "task"}', "--async", env=env),
        cli("route", "--instances", "C", "--async", "-o", "table", env=env),
    )
    assert submitted.code == 0, submitted
    run = submitted.json()
    assert set(run) == RUN_KEYS
    assert (run["kind"], run["state"], run["request"]["payload"]) == (
        "route",
        "queued",
        {"data": "task"},
    )
    assert bare.code == 0, bare
    assert bare.out.strip().startswith("run_")
    assert len(bare.out.splitlines()) == 1
    waited = await cli("runs", "wait", run["run_id"], "--timeout", "10s", env=env)
    assert waited.code == 0, waited
    done = waited.json()
    assert done["state"] == "succeeded"
    assert done["result"]["instance"] in ("A", "B")
    got, events, table = await asyncio.gather(
        cli("runs", "get", run["run_id"], env=env),
        cli("runs", "events", run["run_id"], env=env),
        cli("runs", "get", bare.out.strip(), "-o", "table", env=env),
    )
    assert got.code == 0, got
    assert got.json() == done
    assert events.code == 0, events
    lines = [json.loads(line) for line in events.out.splitlines()]
    assert [(e["id"], e["type"]) for e in lines] == [
        (1, "state"),
        (2, "state"),
        (3, "attempt"),
        (4, "result"),
    ]
    assert lines[-1]["data"]["result"] == done["result"]
    assert table.code == 0, table
    assert bare.out.strip() in table.out
    assert "route" in table.out


async def test_runs_events_table_and_resume(live: Cluster) -> None:
    """`runs events -o table` shows numbered event lines; --after resumes after event N."""
    env = cluster_env(live)
    submitted = await cli("fanout", "--targets", "A-D", "--async", env=env)
    assert submitted.code == 0, submitted
    run_id = submitted.json()["run_id"]
    table, resumed = await asyncio.gather(
        cli("runs", "events", run_id, "-o", "table", env=env),
        cli("runs", "events", run_id, "--after", "2", env=env),
    )
    assert table.code == 0, table
    rows = table.out.splitlines()
    assert rows[0].startswith("#1 state")
    assert sum(" entry " in row for row in rows) == 4
    assert rows[-1].startswith(("#7 result", "#8 result"))
    assert resumed.code == 0, resumed
    ids = [json.loads(line)["id"] for line in resumed.out.splitlines()]
    assert ids[0] == 3
    assert json.loads(resumed.out.splitlines()[-1])["type"] == "result"


async def test_sessions_send_async_list_and_cancel(live: Cluster) -> None:
    """`sessions_send --async` submits a session_send run; `runs list` filters by kind and
    state and pages; `runs cancel` stops a slow run and `runs wait` then exits 1."""
    env = cluster_env(live)
    spawn = await cli("sessions_spawn", "--id", "s1", "--instance", "A", env=env)
    assert spawn.code == 0, spawn
    sent = await cli("sessions_send", "--id", "s1", "--data", '{"n": 1}', "--async", env=env)
    assert sent.code == 0, sent
    send_run = sent.json()
    assert (send_run["kind"], send_run["request"]["data"]) == ("session_send", {"n": 1})
    assert (await cli("runs", "wait", send_run["run_id"], env=env)).code == 0
    await live.set_faults("D", latency=30.0)  # still running when cancelled, however slow the CLI
    slow = await cli("route", "--instances", "D", "--async", env=env)
    assert slow.code == 0, slow
    slow_id = slow.json()["run_id"]
    by_kind, by_state, paged = await asyncio.gather(
        cli("runs", "list", "--kind", "session_send", env=env),
        cli("runs", "list", "--state", "succeeded", env=env),
        cli("runs", "list", "--limit", "1", env=env),
    )
    assert [r["run_id"] for r in by_kind.json()["runs"]] == [send_run["run_id"]]
    assert [r["run_id"] for r in by_state.json()["runs"]] == [send_run["run_id"]]
    first = paged.json()
    assert [r["run_id"] for r in first["runs"]] == [slow_id]
    older = await cli("runs", "list", "--limit", "1", "--cursor", first["next"], env=env)
    assert [r["run_id"] for r in older.json()["runs"]] == [send_run["run_id"]]
    cancelled = await cli("runs", "cancel", slow_id, env=env)
    assert cancelled.code == 0, cancelled
    assert cancelled.json()["cancel_requested"] is True
    waited = await cli("runs", "wait", slow_id, "--timeout", "10s", env=env)
    assert waited.code == ExitCode.TASK_FAILED, waited
    assert waited.json()["state"] == "cancelled"


async def test_runs_wait_timeout_exits_4_with_the_run(live: Cluster) -> None:
    await live.set_faults("B", latency=30.0)  # outlasts the wait, however slow the CLI starts
    env = cluster_env(live)
    slow = await cli("route", "--instances", "B", "--async", env=env)
    waited = await cli("runs", "wait", slow.json()["run_id"], "--timeout", "300ms", env=env)
    assert waited.code == ExitCode.UNREACHABLE, waited
    assert waited.json()["state"] in ("queued", "running")
    status, _ = await live.post(f"/api/orchestrator/runs/{slow.json()['run_id']}/cancel", {})
    assert status == 200  # (and B's call is aborted: the cluster stops at once)


async def test_unknown_run_is_not_found_exit_1(live: Cluster) -> None:
    """get, wait, cancel and events of an unknown run: `error: not_found: ...`, exit 1; a
    malformed id is invalid_request, exit 2; --async with --token-env is a usage error."""
    env = cluster_env(live)
    runs = await asyncio.gather(
        *(cli("runs", word, "run_unknown", env=env) for word in ("get", "wait", "cancel", "events"))
    )
    for run in runs:
        assert run.code == ExitCode.TASK_FAILED, run
        assert run.out == ""
        assert run.err.startswith("error: not_found: "), run
    malformed = await cli("runs", "get", "no/such", env=env)
    assert malformed.code == ExitCode.USAGE, malformed
    assert "invalid_request" in malformed.err
    mixed = await cli("sessions_send", "--id", "s1", "--async", "--token-env", "HOME", env=env)
    assert mixed.code == ExitCode.USAGE, mixed
    assert "--token-env" in mixed.err
    exclusive = await cli("fanout", "--async", "--stream", env=env)
    assert exclusive.code == ExitCode.USAGE, exclusive
