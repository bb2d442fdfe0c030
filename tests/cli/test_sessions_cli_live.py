"""The session commands as users run them: real ``openclaw`` processes against a live
orchestrator and real instances (``start_cluster``) on 127.0.0.1.

The cluster lives in the test's event loop, so every command runs through
``asyncio.create_subprocess_exec`` (``cli``): the loop keeps serving while the command talks
to it. Output is JSON unless ``-o table`` is given, because stdout is a pipe.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.api.conftest import Cluster, start_cluster
from tests.cli.test_cli_live import base_env, cli, cluster_env, typer_cli

SESSION_KEYS = {
    "session_id",
    "instance",
    "state",
    "metadata",
    "ttl",
    "failover",
    "created_at",
    "last_active_at",
    "expires_at",
    "closed_at",
    "messages",
}


@pytest.fixture
async def live() -> AsyncIterator[Cluster]:
    """Four healthy echo instances A–D behind an orchestrator with a SQLite store."""
    async with start_cluster("ABCD") as c:
        yield c


async def test_seed_session_commands_verbatim(live: Cluster) -> None:
    """`sessions_spawn --id session1` then `sessions_send --id session1 --data '{"key":
    "value"}'`: the spawn prints the session with its token, the send the instance's reply."""
    env = cluster_env(live)
    spawn = await cli("sessions_spawn", "--id", "session1", env=env)
    assert spawn.code == 0, spawn
    spawned = spawn.json()
    assert set(spawned) == SESSION_KEYS | {"token"}
    assert (spawned["session_id"], spawned["state"], spawned["messages"]) == ("session1", "open", 0)
    assert spawned["instance"] in "ABCD"
    assert spawned["token"].startswith("ocs_")
    send = await cli("sessions_send", "--id", "session1", "--data", '{"key": "value"}', env=env)
    assert send.code == 0, send
    sent = send.json()
    assert (sent["session_id"], sent["seq"], sent["instance"]) == (
        "session1",
        1,
        spawned["instance"],
    )
    assert sent["reply"] == {
        "instance": spawned["instance"],
        "payload": {"key": "value"},
        "session": {"id": "session1", "seen": 1},
    }
    assert (sent["migrated_from"], sent["replayed"]) == (None, False)
    assert sent["request_id"]
    assert live.api_key not in spawn.out + spawn.err + send.out + send.err


async def test_spawn_flags_and_table_token_line(live: Cluster) -> None:
    """--instance/--ttl/--metadata/--failover reach the server; table mode shows the token once."""
    env = cluster_env(live)
    as_json, as_table = await asyncio.gather(
        cli(
            "sessions_spawn", "--id", "flags", "--instance", "C", "--ttl", "1h",
            "--metadata", '{"user": "u1"}', "--failover", "migrate", env=env,
        ),
        cli("sessions_spawn", "--id", "shown", "--instance", "D", "-o", "table", env=env),
    )  # fmt: skip
    assert as_json.code == 0, as_json
    body = as_json.json()
    assert (body["instance"], body["ttl"], body["metadata"], body["failover"]) == (
        "C",
        3600,
        {"user": "u1"},
        "migrate",
    )
    assert as_table.code == 0, as_table
    token_lines = [line for line in as_table.out.splitlines() if line.startswith("token: ocs_")]
    assert len(token_lines) == 1, as_table
    assert token_lines[0].endswith("(keep it: it is shown once)")
    assert "shown" in as_table.out


async def test_list_history_close_round_trip(live: Cluster) -> None:
    """sessions_list filters, sessions_history pages (and --all), sessions_close closes; a
    send after close is session_closed, exit 1."""
    env = cluster_env(live)
    spawn = await cli("sessions_spawn", "--id", "talk", "--instance", "B", env=env)
    assert spawn.code == 0, spawn
    for n in range(3):
        sent = await cli("sessions_send", "--id", "talk", "--data", f'{{"n": {n}}}', env=env)
        assert sent.code == 0, sent
    listed, page, everything, table = await asyncio.gather(
        cli("sessions_list", "--instance", "B", "--state", "open", "--active-within", "5", env=env),
        cli("sessions_history", "--id", "talk", "--limit", "2", env=env),
        cli("sessions_history", "--id", "talk", "--all", "--limit", "2", env=env),
        cli("sessions_history", "--id", "talk", "--offset", "1", "-o", "table", env=env),
    )
    assert listed.code == 0, listed
    assert [(s["session_id"], s["messages"]) for s in listed.json()] == [("talk", 3)]
    assert page.code == 0, page
    first = page.json()
    assert ([m["data"] for m in first["messages"]], first["total"], first["next_offset"]) == (
        [{"n": 0}, {"n": 1}],
        3,
        2,
    )
    assert everything.code == 0, everything
    assert [m["seq"] for m in everything.json()["messages"]] == [1, 2, 3]
    assert everything.json()["next_offset"] is None
    assert table.code == 0, table
    assert "2 of 3 from offset 1; end" in table.out

    closed = await cli("sessions_close", "--id", "talk", env=env)
    assert closed.code == 0, closed
    assert (closed.json()["state"], closed.json()["messages"]) == ("closed", 3)
    assert "token" not in closed.json()
    after, again, by_state = await asyncio.gather(
        cli("sessions_send", "--id", "talk", env=env),
        cli("sessions_close", "--id", "talk", env=env),
        cli("sessions_list", "--state", "closed", env=env),
    )
    assert after.code == 1, after
    assert "error: session_closed" in after.err
    assert after.out == ""
    assert again.code == 0, again
    assert [s["session_id"] for s in by_state.json()] == ["talk"]


async def test_token_env_without_api_key(live: Cluster) -> None:
    """--token-env alone (no API key) sends to its session; on another session it is
    forbidden, exit 3; sessions_list with no key is unauthorized, exit 3."""
    env = cluster_env(live)
    mine, other = await asyncio.gather(
        cli("sessions_spawn", "--id", "mine", "--instance", "A", env=env),
        cli("sessions_spawn", "--id", "other", "--instance", "A", env=env),
    )
    assert mine.code == other.code == 0, (mine, other)
    token = mine.json()["token"]
    keyless = base_env(ORCHESTRATOR_URL=live.url, MY_TOKEN=token)
    sent, forbidden, history, unkeyed = await asyncio.gather(
        cli(
            "sessions_send", "--id", "mine", "--data", "[1]", "--token-env", "MY_TOKEN", env=keyless
        ),
        cli("sessions_send", "--id", "other", "--token-env", "MY_TOKEN", env=keyless),
        cli("sessions_history", "--id", "other", "--token-env", "MY_TOKEN", env=keyless),
        cli("sessions_list", env=keyless),
    )
    assert sent.code == 0, sent
    assert sent.json()["reply"]["payload"] == [1]
    for run in (forbidden, history):
        assert run.code == 3, run
        assert "error: forbidden" in run.err
        assert token not in run.out + run.err
    assert unkeyed.code == 3, unkeyed
    assert "error: unauthorized" in unkeyed.err
    closed = await cli("sessions_close", "--id", "mine", "--token-env", "MY_TOKEN", env=keyless)
    assert closed.code == 0, closed
    assert closed.json()["state"] == "closed"
    assert token not in closed.out + closed.err + sent.out + sent.err


async def test_session_exit_codes(live: Cluster) -> None:
    """A taken id is session_exists (1), an unknown id not_found (1), an unknown instance
    invalid_request (2), bad --data JSON a usage error naming --data (2)."""
    env = cluster_env(live)
    first = await cli("sessions_spawn", "--id", "dup", env=env)
    assert first.code == 0, first
    dup, unknown, bad_instance, bad_data = await asyncio.gather(
        cli("sessions_spawn", "--id", "dup", env=env),
        cli("sessions_send", "--id", "nobody", "--data", "{}", env=env),
        cli("sessions_spawn", "--instance", "Z", env=env),
        cli("sessions_send", "--id", "dup", "--data", "{key: value}", env=env),
    )
    assert dup.code == 1, dup
    assert "error: session_exists" in dup.err
    assert unknown.code == 1, unknown
    assert "error: not_found" in unknown.err
    assert bad_instance.code == 2, bad_instance
    assert "error: invalid_request" in bad_instance.err
    assert bad_data.code == 2, bad_data
    assert "--data" in bad_data.err
    for run in (dup, unknown, bad_instance, bad_data):
        assert run.out == ""


async def test_fast_path_sessions_send_answers_as_the_command(live: Cluster) -> None:
    """The fast path's sessions_send (before Typer loads) and the Typer command: the same
    reply shape, one after the other in the session; the same errors, line for line."""
    env = cluster_env(live)
    spawned = await cli("sessions_spawn", "--id", "both", "--instance", "B", env=env)
    assert spawned.code == 0, spawned
    token = spawned.json()["token"]
    args = ["sessions_send", "--id", "both", "--data", '{"n": 1}', "--timeout", "5s"]
    fast = await cli(*args, env=env)
    full = await typer_cli(*args, env=env)
    assert fast.code == full.code == 0, (fast, full)
    first, second = fast.json(), full.json()
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first.keys() == second.keys()
    assert first["instance"] == second["instance"] == "B"
    keyless = base_env(ORCHESTRATOR_URL=live.url, TOK=token)
    for argv, environ in [
        (["sessions_send", "--id", "nobody"], env),  # not_found, exit 1
        (["sessions_send", "--id", "other-one", "--token-env", "TOK"], keyless),  # 403
        (["sessions_send", "--id", "both", "--token-env", "NOT_SET"], keyless),  # usage, 2
    ]:
        fast, full = await asyncio.gather(cli(*argv, env=environ), typer_cli(*argv, env=environ))
        assert (fast.code, fast.err) == (full.code, full.err), (fast, full)
        assert fast.code != 0
    by_token = await cli("sessions_send", "--id", "both", "--token-env", "TOK", env=keyless)
    assert by_token.code == 0, by_token
    assert by_token.json()["seq"] == 3
