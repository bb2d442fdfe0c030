"""The CLI as users run it: real ``openclaw``/``openclaw-orchestrator`` processes against a live
orchestrator and real instances (``start_cluster``) on 127.0.0.1.

The cluster lives in the test's event loop, so every command runs through
``asyncio.create_subprocess_exec``: the loop keeps serving while the command talks to it.
Commands that do not depend on each other run concurrently to keep the suite quick.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Cluster, start_cluster
from tests.ports import free_port

BIN = Path(sys.executable).parent
RUN_TIMEOUT = 30.0
PROGS = ("openclaw", "openclaw-orchestrator")


@dataclass
class Run:
    """What one command did."""

    argv: list[str]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout as JSON; fails the test with the command's output when it is not."""
        try:
            return json.loads(self.out)
        except json.JSONDecodeError:
            pytest.fail(f"{self.argv} printed no JSON (exit {self.code}):\n{self.out}\n{self.err}")

    def __str__(self) -> str:
        return f"{self.argv[1:]} -> {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any ORCHESTRATOR_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env |= {"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}
    return env | extra


def cluster_env(cluster: Cluster, **extra: str) -> dict[str, str]:
    """An environment pointing the CLI at ``cluster`` with its key."""
    return base_env(ORCHESTRATOR_URL=cluster.url, ORCHESTRATOR_API_KEY=cluster.api_key, **extra)


async def cli(*args: str, env: dict[str, str], prog: str = "openclaw") -> Run:
    """Run ``openclaw orchestrator <args>`` (or ``openclaw-orchestrator <args>``) to the end."""
    if prog == "openclaw":
        return await run_argv([str(BIN / "openclaw"), "orchestrator", *args], env=env)
    return await run_argv([str(BIN / prog), *args], env=env)


async def run_argv(argv: list[str], *, env: dict[str, str]) -> Run:
    """Run any command to the end, without blocking the loop (a cluster may live in it)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Run(argv, proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def live() -> AsyncIterator[Cluster]:
    """Eight healthy echo instances A–H; C and E tagged ``gpu``."""
    async with start_cluster(tags={"C": ["gpu"], "E": ["gpu", "fast"]}) as c:
        yield c


# -- the seed's commands, verbatim ------------------------------------------------------------


async def test_seed_route_verbatim(live: Cluster) -> None:
    """`route --instances A B --payload '{"data": "task"}'` routes to A or B and prints JSON."""
    run = await cli(
        "route", "--instances", "A", "B", "--payload", '{"data": "task"}',
        env=cluster_env(live),
    )  # fmt: skip
    assert run.code == 0, run
    body = run.json()
    assert set(body) == {"instance", "result", "attempts", "skipped", "total_ms", "request_id"}
    assert body["instance"] in ("A", "B")
    assert body["result"] == {"instance": body["instance"], "payload": {"data": "task"}}
    assert [a["outcome"] for a in body["attempts"]] == ["ok"]
    assert body["request_id"]


async def test_seed_fanout_verbatim(live: Cluster) -> None:
    """`fanout --targets A-H --aggregate true --timeout 10s` returns eight entries and an array."""
    run = await cli(
        "fanout", "--targets", "A-H", "--aggregate", "true", "--timeout", "10s",
        env=cluster_env(live),
    )  # fmt: skip
    assert run.code == 0, run
    body = run.json()
    assert body["aggregate"] == "array"
    assert [e["instance"] for e in body["results"]] == list("ABCDEFGH")
    assert {e["status"] for e in body["results"]} == {"ok"}
    assert body["value"] == [{"instance": n, "payload": {}} for n in "ABCDEFGH"]
    assert (body["succeeded"], body["failed"], body["timed_out"]) == (8, 0, 0)
    assert body["error"] is None
    assert body["request_id"]


async def test_seed_health_verbatim(live: Cluster) -> None:
    """`health --instances A-H --output json` prints {"A": "healthy", ...} for all eight."""
    run = await cli("health", "--instances", "A-H", "--output", "json", env=cluster_env(live))
    assert run.code == 0, run
    assert run.json() == {n: "healthy" for n in "ABCDEFGH"}


async def test_both_entry_names_are_the_same_program(live: Cluster) -> None:
    """`openclaw-orchestrator X` gives what `openclaw orchestrator X` gives, help included."""
    env = cluster_env(live)
    health, short_help, long_help = await asyncio.gather(
        cli("health", "--instances", "A-H", "--output", "json", env=env, prog=PROGS[1]),
        cli("fanout", "--help", env=env, prog=PROGS[0]),
        cli("fanout", "--help", env=env, prog=PROGS[1]),
    )
    assert health.code == 0, health
    assert health.json() == {n: "healthy" for n in "ABCDEFGH"}
    assert short_help.code == long_help.code == 0
    assert "openclaw orchestrator fanout" in short_help.out
    assert "openclaw-orchestrator fanout" in long_help.out
    for option in ("--targets", "--aggregate", "--timeout", "--stream", "--url", "--config"):
        assert option in short_help.out
        assert option in long_help.out


async def test_health_detail_json(live: Cluster) -> None:
    """`health --detail` gives per-instance objects with state, latency and the instance URL."""
    run = await cli("health", "--instances", "A,B", "--detail", env=cluster_env(live))
    assert run.code == 0, run
    body = run.json()
    assert set(body) == {"A", "B"}
    assert body["A"]["state"] == "healthy"
    assert body["A"]["url"] == live.instance_urls["A"]
    assert {"latency_ms", "last_check", "consecutive_failures", "last_error"} <= set(body["A"])


# -- where the orchestrator is, and the key ----------------------------------------------------


async def test_url_flag_overrides_environment(live: Cluster) -> None:
    """--url wins over an ORCHESTRATOR_URL that points nowhere."""
    env = base_env(
        ORCHESTRATOR_URL=f"http://127.0.0.1:{free_port()}", ORCHESTRATOR_API_KEY=live.api_key
    )
    without, with_flag = await asyncio.gather(
        cli("health", "--instances", "A", env=env),
        cli("health", "--instances", "A", "--url", live.url, env=env),
    )
    assert without.code == 4, without
    assert with_flag.code == 0, with_flag
    assert with_flag.json() == {"A": "healthy"}


async def test_config_file_gives_url_and_key(live: Cluster, tmp_path: Path) -> None:
    """--config supplies url and api_key; a server config's host/port work; env beats file."""
    client = tmp_path / "client.json"
    client.write_text(json.dumps({"url": live.url, "api_key": live.api_key}))
    server = tmp_path / "server.yaml"
    port = int(live.url.rsplit(":", 1)[1])
    server.write_text(f"host: 0.0.0.0\nport: {port}\napi_key: {live.api_key}\n")
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(f'url = "http://127.0.0.1:{free_port()}"\napi_key = "wrong"\n')
    by_file, by_server_file, env_first = await asyncio.gather(
        cli(
            "route", "--instances", "A", "--payload", "[1]", "--config", str(client), env=base_env()
        ),
        cli("health", "--instances", "B", "--config", str(server), env=base_env()),
        cli("health", "--instances", "C", "--config", str(elsewhere), env=cluster_env(live)),
    )
    assert by_file.code == 0, by_file
    assert by_file.json()["result"] == {"instance": "A", "payload": [1]}
    assert by_server_file.code == 0, by_server_file
    assert by_server_file.json() == {"B": "healthy"}
    assert env_first.code == 0, env_first
    assert env_first.json() == {"C": "healthy"}


# -- options ------------------------------------------------------------------------------------


async def test_retry_and_timeout_fail_over(live: Cluster) -> None:
    """`--retry 3 --timeout 10s` are accepted, and a failing A is retried on B."""
    await live.set_faults("A", fail_rate=1.0, fail_status=503)
    run = await cli(
        "route", "--instances", "A", "B", "--retry", "3", "--timeout", "10s", env=cluster_env(live)
    )
    assert run.code == 0, run
    body = run.json()
    assert body["instance"] == "B"
    assert body["attempts"][-1] == {**body["attempts"][-1], "instance": "B", "outcome": "ok"}
    assert all(a["instance"] == "A" for a in body["attempts"][:-1])


async def test_attempt_timeout_fails_over_past_a_hang(live: Cluster) -> None:
    """`--attempt-timeout 200ms`: a hanging A costs one short attempt, then B serves."""
    await live.set_faults("A", hang=True)
    args = ["route", "--instances", "A", "B", "--timeout", "5s", "--attempt-timeout", "200ms"]
    runs = [await cli(*args, env=cluster_env(live)) for _ in range(2)]  # one starts with A
    for run in runs:
        assert run.code == 0, run
        assert run.json()["instance"] == "B"
    firsts = [run.json()["attempts"][0] for run in runs]
    assert any(a["instance"] == "A" and a["outcome"] == "timeout" for a in firsts), firsts


async def test_bad_option_values_are_usage_errors(live: Cluster) -> None:
    """`--retry 11` and `--timeout '10 parsecs'` exit 2 naming the option; nothing is sent."""
    env = cluster_env(live)
    runs = await asyncio.gather(
        cli("route", "--instances", "A", "--retry", "11", env=env),
        cli("fanout", "--timeout", "10 parsecs", env=env),
    )
    for run, option in zip(runs, ("--retry", "--timeout"), strict=True):
        assert run.code == 2, run
        assert option in run.err, run
        assert run.out == ""


async def test_output_table_renders_tables(live: Cluster) -> None:
    """--output table prints tables for people, not JSON (a pipe without the flag gets JSON)."""
    env = cluster_env(live)
    health, fanout = await asyncio.gather(
        cli("health", "--instances", "A-C", "--output", "table", env=env),
        cli("fanout", "--targets", "A,B", "-o", "table", env=env),
    )
    for run in (health, fanout):
        assert run.code == 0, run
        assert "┃" in run.out or "│" in run.out, run
        with pytest.raises(json.JSONDecodeError):
            json.loads(run.out)
    assert "instance" in health.out
    assert "state" in health.out
    assert health.out.count("healthy") == 3
    assert "2 ok, 0 failed, 0 timed out" in fanout.out
    assert "aggregate (array)" in fanout.out


async def test_terminal_stdout_defaults_to_table(live: Cluster) -> None:
    """Without --output, a terminal on stdout gets a table (a pipe gets JSON, as elsewhere)."""
    leader, follower = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "openclaw"), "orchestrator", "health", "--instances", "A,B",
            stdin=asyncio.subprocess.DEVNULL, stdout=follower,
            stderr=asyncio.subprocess.PIPE, env=cluster_env(live),
        )  # fmt: skip
        os.close(follower)
        follower = -1
        screen = asyncio.create_task(asyncio.to_thread(read_terminal, leader))
        _, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
        text = await asyncio.wait_for(screen, RUN_TIMEOUT)
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert proc.returncode == 0, err
    assert "healthy" in text
    assert "┃" in text or "│" in text or "|" in text, text
    assert not text.lstrip().startswith("{"), text


def read_terminal(fd: int) -> str:
    """Everything written to a pty until its other side is closed."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the child closed its side
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


# -- exit codes ---------------------------------------------------------------------------------


async def test_wrong_or_missing_key_exits_3(live: Cluster) -> None:
    """A wrong or missing ORCHESTRATOR_API_KEY is `unauthorized`, exit 3; the key is not echoed."""
    wrong, missing = await asyncio.gather(
        cli(
            "route", "--instances", "A",
            env=base_env(ORCHESTRATOR_URL=live.url, ORCHESTRATOR_API_KEY="not-the-key-987"),
        ),
        cli("health", env=base_env(ORCHESTRATOR_URL=live.url)),
    )  # fmt: skip
    for run in (wrong, missing):
        assert run.code == 3, run
        assert "error: unauthorized" in run.err
        assert run.out == ""
    assert "not-the-key-987" not in wrong.err


async def test_unreachable_orchestrator_exits_4() -> None:
    """Nothing listening at the URL is `connection_failed`, exit 4, naming the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    run = await cli("route", "--instances", "A", env=base_env(ORCHESTRATOR_URL=url))
    assert run.code == 4, run
    assert "error: connection_failed" in run.err
    assert url in run.err


async def test_timeout_exits_4(live: Cluster) -> None:
    """A hanging instance under `--timeout 500ms --retry 0`: the server's 504 `timeout`, exit 4."""
    await live.set_faults("A", hang=True)
    run = await cli(
        "route", "--instances", "A", "--timeout", "500ms", "--retry", "0", env=cluster_env(live)
    )
    assert run.code == 4, run
    assert "error: timeout" in run.err
    assert "(instance A)" in run.err


async def test_unknown_instances_exit_2_naming_them(live: Cluster) -> None:
    """Unknown names in --instances/--targets are `invalid_request`, exit 2, naming each."""
    env = cluster_env(live)
    route, fanout = await asyncio.gather(
        cli("route", "--instances", "A", "X", "Zed", env=env),
        cli("fanout", "--targets", "A,Q", env=env),
    )
    for run in (route, fanout):
        assert run.code == 2, run
        assert "error: invalid_request" in run.err
        assert run.out == ""
    assert "unknown instance(s): X, Zed;" in route.err
    assert "unknown instance(s): Q;" in fanout.err


async def test_payload_json_inline_or_file(live: Cluster, tmp_path: Path) -> None:
    """--payload @file.json sends the file; --payload that is not JSON exits 2 naming it."""
    task = tmp_path / "task.json"
    task.write_text('{"data": "from a file", "n": [1, 2]}')
    env = cluster_env(live)
    good, bad = await asyncio.gather(
        cli("route", "--instances", "C", "--payload", f"@{task}", env=env),
        cli("route", "--instances", "A", "--payload", "{data: task}", env=env),
    )
    assert good.code == 0, good
    assert good.json()["result"]["payload"] == {"data": "from a file", "n": [1, 2]}
    assert bad.code == 2, bad
    assert "--payload" in bad.err
    assert "not valid JSON" in bad.err


async def test_task_failure_exits_1(live: Cluster) -> None:
    """An instance answering 500 to every task: `instance_error`, exit 1, naming the instance."""
    await live.set_faults("D", fail_rate=1.0, fail_status=500)
    run = await cli("route", "--instances", "D", env=cluster_env(live))
    assert run.code == 1, run
    assert "error: instance_error" in run.err
    assert "(instance D)" in run.err
    assert run.out == ""


# -- targets ------------------------------------------------------------------------------------

TARGET_CASES: list[tuple[list[str], str]] = [
    (["--targets", "A,C,E"], "ACE"),
    (["--targets", "A", "C", "E"], "ACE"),
    (["--targets", "A C E"], "ACE"),
    (["--targets", "A", "--targets", "G"], "AG"),
    (["--targets", "all"], "ABCDEFGH"),
    (["--targets", "tag:gpu", "H"], "CEH"),
]


async def test_target_syntax(live: Cluster) -> None:
    """Every target spelling of the docs (ranges, lists, spaces, repeats, all, tag:) works."""
    env = cluster_env(live)
    runs = await asyncio.gather(
        *(cli("fanout", *args, "--aggregate", "false", env=env) for args, _ in TARGET_CASES)
    )
    for run, (args, expected) in zip(runs, TARGET_CASES, strict=True):
        assert run.code == 0, run
        body = run.json()
        assert sorted(e["instance"] for e in body["results"]) == sorted(expected), args
        assert body["value"] is None


# -- streaming ----------------------------------------------------------------------------------


async def test_fanout_stream_prints_ndjson(live: Cluster) -> None:
    """`fanout --stream` prints one compact entry line per target, then the result line."""
    run = await cli(
        "fanout", "--targets", "A-D", "--stream", "--payload", '{"q": 1}', env=cluster_env(live)
    )
    assert run.code == 0, run
    events = [json.loads(line) for line in run.out.splitlines()]
    assert [e["type"] for e in events] == ["entry"] * 4 + ["result"]
    assert sorted(e["entry"]["instance"] for e in events[:4]) == list("ABCD")
    assert all(e["entry"]["status"] == "ok" for e in events[:4])
    result = events[-1]["result"]
    assert result["succeeded"] == 4
    assert [e["instance"] for e in result["results"]] == list("ABCD")
    assert result["value"] == [{"instance": n, "payload": {"q": 1}} for n in "ABCD"]


# -- cluster membership -------------------------------------------------------------------------


async def test_register_instances_unregister_round_trip(live: Cluster) -> None:
    """register (secret passed by env var name), list, unregister, then unregister is 404."""
    secret = "instance-secret-token-42"
    env = cluster_env(live, I_TOKEN=secret)
    url = live.instance_urls["A"]
    reg = await cli(
        "register", "--name", "I", "--url", url, "--weight", "2", "--tag", "gpu", "blue",
        "--credentials-env", "I_TOKEN", "--heartbeat-ttl", "30s", env=env,
    )  # fmt: skip
    assert reg.code == 0, reg
    info = reg.json()
    assert (info["name"], info["url"], info["weight"], info["tags"]) == (
        "I",
        url,
        2.0,
        ["gpu", "blue"],
    )
    assert (info["has_credentials"], info["source"], info["heartbeat_ttl"]) == (
        True,
        "registered",
        30.0,
    )
    stored = live.service.registry.get("I").spec.credentials
    assert stored is not None
    assert stored.get_secret_value() == secret  # the orchestrator has it; nobody sees it

    listing = await cli("instances", env=env)
    assert listing.code == 0, listing
    names = [i["name"] for i in listing.json()]
    assert names[:8] == list("ABCDEFGH")
    assert "I" in names
    for run in (reg, listing):
        assert secret not in run.out + run.err
        assert live.api_key not in run.out + run.err

    removed = await cli("unregister", "I", env=env)
    assert removed.code == 0, removed
    assert removed.json() == {"removed": "I"}
    assert "I" not in live.service.registry
    again = await cli("unregister", "I", env=env)
    assert again.code == 1, again
    assert "error: not_found" in again.err


async def test_register_flags(live: Cluster) -> None:
    """`--orchestrator-url` names the orchestrator; an unset --credentials-env var exits 2."""
    env = base_env(
        ORCHESTRATOR_URL=f"http://127.0.0.1:{free_port()}", ORCHESTRATOR_API_KEY=live.api_key
    )
    ok, unset = await asyncio.gather(
        cli(
            "register", "--name", "K", "--url", live.instance_urls["B"],
            "--orchestrator-url", live.url, env=env,
        ),
        cli(
            "register", "--name", "J", "--url", "http://127.0.0.1:9",
            "--credentials-env", "NO_SUCH_VAR_X", "--orchestrator-url", live.url, env=env,
        ),
    )  # fmt: skip
    assert ok.code == 0, ok
    assert ok.json()["name"] == "K"
    assert "K" in live.service.registry
    assert unset.code == 2, unset
    assert "--credentials-env" in unset.err
    assert "NO_SUCH_VAR_X" in unset.err
    assert "J" not in live.service.registry


# -- the fast path (cli/fastpath.py) against the Typer commands ---------------------------------


async def typer_cli(*args: str, env: dict[str, str]) -> Run:
    """The Typer app itself, skipping the fast path that ``openclaw`` takes first."""
    code = "from openclaw_orchestrator.cli.main import app; app(prog_name='openclaw orchestrator')"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    assert proc.returncode is not None
    return Run([sys.executable, *args], proc.returncode, out.decode(), err.decode())


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        drop = {"latency_ms", "total_ms", "request_id"}
        return {k: _without_timings(v) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.parametrize(
    "args",
    [
        ["route", "--instances", "B", "--payload", '{"n": 1}', "--timeout", "5s", "--retry", "1"],
        ["route", "--instances", "C", "--policy", "least_outstanding", "--attempt-timeout", "2s"],
        ["fanout", "--targets", "A-D", "--payload", '{"q": 2}', "--aggregate", "merge"],
        ["fanout", "--targets", "A", "--targets", "C", "--min-success", "2", "--timeout", "5s"],
        ["route", "--instances", "nope"],  # unknown: the same error line, exit 2
        ["fanout", "--targets", "A-B", "--aggregate", "no-such-reducer"],
    ],
)
async def test_fast_path_route_and_fanout_print_what_the_commands_print(
    live: Cluster, args: list[str]
) -> None:
    """The fast path's JSON, error line and exit code are the Typer command's."""
    env = cluster_env(live)
    fast, full = await asyncio.gather(cli(*args, env=env), typer_cli(*args, env=env))
    assert fast.code == full.code, (fast, full)
    assert fast.err == full.err
    if fast.code == 0:
        assert _without_timings(fast.json()) == _without_timings(full.json())


async def test_fast_path_route_sends_the_idempotency_key(live: Cluster) -> None:
    """Twice with one key: the second reply is the first one (same request id)."""
    env = cluster_env(live)
    args = ["route", "--instances", "A", "--idempotency-key", "quick-key-1"]
    first = await cli(*args, env=env)
    second = await cli(*args, env=env)
    assert first.code == second.code == 0, (first, second)
    assert first.json()["request_id"] == second.json()["request_id"]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["route", "--retry", "11"], "--retry"),
        (["route", "--timeout", "soon"], "--timeout"),
        (["fanout", "--quorum", "0"], "--quorum"),
        (["route", "--payload", "{not json"], "--payload"),
        (["route", "--payload", "@/no/such/file.json"], "--payload"),
    ],
)
async def test_values_the_fast_path_cannot_vouch_for_are_typer_usage_errors(
    live: Cluster, args: list[str], option: str
) -> None:
    """An invalid value goes to Typer, which reports it (exit 2) and sends nothing."""
    run = await cli(*args, env=cluster_env(live))
    assert run.code == 2, run
    assert option in run.err
    assert run.out == ""
