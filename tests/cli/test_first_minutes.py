"""A new user's first ten minutes with the CLI (issue 9, items 11-16, 18, 20): real
``openclaw orchestrator`` processes, a live cluster in the test's loop or `up`/`serve` as
subprocesses, signals sent as a terminal sends them, and a pty where a terminal matters.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import socket
import stat
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from openclaw_orchestrator.devtools.keyfile import KEY_FILE, kept_api_key
from openclaw_orchestrator.settings import ConfigError
from tests.api.conftest import Cluster, start_cluster
from tests.cli.test_cli_live import BIN, RUN_TIMEOUT, base_env, cli, cluster_env, read_terminal
from tests.test_cluster_up import (
    Proc,
    banner_instances,
    clean_env,
    free_port,
    free_range,
    kill_leftovers,
    started,
    wait_gone,
)

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "http://127.0.0.1:9"  # discard: nothing answers; a command that connects fails


@pytest.fixture
async def live() -> AsyncIterator[Cluster]:
    """Three healthy echo instances A-C with the fault API."""
    async with start_cluster("ABC") as cluster:
        yield cluster


async def wait_until(predicate: Callable[[], bool], what: str, proc: Proc | None = None) -> None:
    """Poll ``predicate``; fail (with the command's output) if the command exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUN_TIMEOUT
    while not predicate():
        if proc is not None and proc.process.returncode is not None:
            await proc.finish()
            pytest.fail(f"the command exited before {what}:\n{proc}")
        if loop.time() > deadline:
            pytest.fail(f"no {what} after {RUN_TIMEOUT}s" + (f":\n{proc}" if proc else ""))
        await asyncio.sleep(0.02)


def answers(url: str) -> bool:
    """Whether something accepts connections at ``url``'s port."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- 12: Ctrl-C --------------------------------------------------------------------------------


async def test_ctrl_c_during_a_route_prints_interrupted(live: Cluster) -> None:
    """Ctrl-C while a route waits on a slow instance: `interrupted` on stderr, exit 130, on
    the fast path (JSON) and the Typer path (table) alike."""
    await live.set_faults("A", latency=30)
    record = live.service.registry.get("A")
    args = ["route", "--instances", "A", "--timeout", "3s"]  # the server gives up soon after
    async with (
        started(*args, env=cluster_env(live)) as fast,
        started(*args, "-o", "table", env=cluster_env(live)) as typer,
    ):
        await wait_until(lambda: record.outstanding == 2, "both requests in flight", fast)
        for route in (fast, typer):
            route.process.send_signal(signal.SIGINT)
        assert [await fast.finish(), await typer.finish()] == [130, 130], (fast, typer)
    for route in (fast, typer):
        assert route.stderr.strip() == "interrupted", route
        assert route.stdout == ""


async def test_ctrl_c_at_the_terminal_stops_up_with_one_line(tmp_path: Path) -> None:
    """A terminal's Ctrl-C (SIGINT to the whole foreground group) stops `up` and every
    instance it started, with one `interrupted` line (the children are not in the group)."""
    port, base = free_port(), free_range(2)
    argv = [str(BIN / "openclaw"), "orchestrator", "up", "--instances", "A-B", "--handler", "echo"]
    argv += ["--port", str(port), "--base-port", str(base)]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(tmp_path),
        start_new_session=True,  # its own group, as a shell's foreground job
    )
    up = Proc(process)
    pids: list[int] = []
    try:
        banner = await up.wait_for_output(lambda out: "Ctrl-C stops" in out)
        pids = [pid for _, pid in banner_instances(banner).values()]
        os.killpg(process.pid, signal.SIGINT)
        assert await up.finish() == 130, up
        assert await wait_gone(pids) == []
    finally:
        kill_leftovers(pids)
        await up.aclose()
    assert up.stderr.splitlines() == ["interrupted"], up


@pytest.mark.parametrize("command", ["serve", "instance serve"])
async def test_ctrl_c_stops_a_server_with_interrupted(tmp_path: Path, command: str) -> None:
    """`serve` and `instance serve` stopped by Ctrl-C say `interrupted` and exit 130."""
    port = free_port()
    args = ["serve", "--port", str(port)]
    if command == "instance serve":
        args = ["instance", "serve", "--name", "A", "--port", str(port)]
    async with started(*args, env=clean_env(tmp_path)) as server:
        await wait_until(lambda: answers(f"http://127.0.0.1:{port}"), "a listener", server)
        server.process.send_signal(signal.SIGINT)
        assert await server.finish() == 130, server
    assert server.stderr.splitlines()[-1] == "interrupted", server
    assert "Traceback" not in server.stderr


# -- 13 and 11: the key `up` keeps, and never shows or hands down ------------------------------


async def run_up(tmp_path: Path, *args: str, **env: str) -> tuple[str, Proc, list[int]]:
    """Start `up --instances A` with ``args``, wait for its banner, SIGTERM it; returns the
    banner, the finished process and the instance pids (checked gone)."""
    port, base = free_port(), free_range(1)
    argv = ["up", "--instances", "A", "--handler", "echo", "--port", str(port)]
    argv += ["--base-port", str(base), *args]
    async with started(*argv, env=clean_env(tmp_path, **env)) as up:
        pids: list[int] = []
        try:
            banner = await up.wait_for_output(lambda out: "Ctrl-C stops" in out)
            pids = [pid for _, pid in banner_instances(banner).values()]
            environs = [read_environ(pid) for pid in pids]
            up.process.send_signal(signal.SIGTERM)
            assert await up.finish() == 0, up
            assert await wait_gone(pids) == []
        finally:
            kill_leftovers(pids)
    assert all(b"ORCHESTRATOR_API_KEY" not in environ for environ in environs), "inherited"
    return banner, up, pids


def read_environ(pid: int) -> bytes:
    """A process's environment, as /proc shows it."""
    with open(f"/proc/{pid}/environ", "rb") as environ:
        return environ.read()


def printed_key(banner: str) -> str | None:
    """The key of the banner's ``export ORCHESTRATOR_API_KEY=`` line, if it has one."""
    found = re.search(r"export ORCHESTRATOR_API_KEY=(\S+)", banner)
    return None if found is None else found[1]


async def test_up_keeps_one_key_in_its_data_dir_across_runs(tmp_path: Path) -> None:
    """`up --data-dir D` generates a key once, keeps it in D/api-key (mode 0600) and prints
    it; the next run reuses it, so a key exported in another shell keeps working."""
    data = tmp_path / "checkout" / ".data"
    first, _, _ = await run_up(tmp_path, "--data-dir", str(data))
    second, _, _ = await run_up(tmp_path, "--data-dir", str(data))
    key = (data / KEY_FILE).read_text().strip()
    assert printed_key(first) == key == printed_key(second)
    assert f"generated, kept in {data / KEY_FILE}" in first
    assert f"(kept in {data / KEY_FILE})" in second
    assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600
    assert (data / "orchestrator.db").exists()  # the store lives there too
    assert not (tmp_path / "data").exists()  # and nothing in the per-user folder


async def test_up_neither_prints_nor_hands_down_an_environment_key(tmp_path: Path) -> None:
    """With ORCHESTRATOR_API_KEY set, `up` uses it but never prints it, writes no key file,
    and its instance processes do not inherit the variable (checked in /proc by run_up)."""
    secret = "env-secret-for-up-0123456789"
    data = tmp_path / ".data"
    banner, up, _ = await run_up(tmp_path, "--data-dir", str(data), ORCHESTRATOR_API_KEY=secret)
    assert secret not in up.stdout + up.stderr
    assert printed_key(banner) is None
    assert "not shown" in banner
    assert not (data / KEY_FILE).exists()


def test_make_run_keeps_its_state_in_the_checkout() -> None:
    """`make run` runs `up` with the checkout's git-ignored `.data` folder."""
    plan = subprocess.run(
        ["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    up_line = next(line for line in plan.splitlines() if " up " in line)
    assert "--data-dir .data" in up_line
    assert ".data/" in (ROOT / ".gitignore").read_text().splitlines()


def test_a_loose_or_broken_key_file(tmp_path: Path) -> None:
    """A key file others can read is made 0600 again; an empty one is a ConfigError naming
    the file (never a silent new key that would break every exported copy)."""
    key, generated = kept_api_key(tmp_path)
    assert generated
    (tmp_path / KEY_FILE).chmod(0o644)
    assert kept_api_key(tmp_path) == (key, False)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    (tmp_path / KEY_FILE).write_text("\n")
    with pytest.raises(ConfigError, match=KEY_FILE):
        kept_api_key(tmp_path)


# -- 14: targets that name nothing -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["fanout", "--targets", ""], "--targets"),
        (["fanout", "--targets=,"], "--targets"),
        (["fanout", "--targets", "", "-o", "table"], "--targets"),
        (["route", "--instances", " "], "--instances"),
        (["health", "--instances", ""], "--instances"),
    ],
)
async def test_blank_targets_are_a_usage_error(args: list[str], option: str) -> None:
    """Targets that name nothing are refused before any request (exit 2, naming the option),
    never sent as "all instances"; on the fast path and the Typer path."""
    run = await cli(*args, env=base_env(ORCHESTRATOR_URL=UNREACHABLE))
    assert run.code == 2, run
    assert option in run.err
    assert "connection_failed" not in run.err


# -- 15: a bad reducer or a taken port ---------------------------------------------------------


def one_error_line(proc: Proc) -> str:
    """The only output of a start-up that failed: one `error:` line, nothing logged."""
    lines = [line for line in (proc.stdout + "\n" + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, proc
    assert lines[0].startswith("error: "), proc
    return lines[0]


@pytest.mark.parametrize("command", ["serve", "up"])
@pytest.mark.parametrize("spec", ["no_such_module_xyz:fn", "json:no_such_function", "nocolon"])
async def test_a_bad_reducer_is_one_error_line_before_listening(
    tmp_path: Path, command: str, spec: str
) -> None:
    """A reducer that cannot be loaded: one `error:` line naming it, exit 2, nothing
    listening and nothing started."""
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"reducers": {"mine": spec}}))
    port, base = free_port(), free_range(1)
    args = [command, "--config", str(config), "--port", str(port)]
    if command == "up":
        args += ["--instances", "A", "--base-port", str(base)]
    async with started(*args, env=clean_env(tmp_path)) as proc:
        assert await proc.finish() == 2, proc
    assert "reducers.mine" in one_error_line(proc)


@pytest.mark.parametrize(
    ("command", "taken"),
    [("serve", "--port"), ("up", "--port"), ("up", "--base-port"), ("instance serve", "--port")],
)
async def test_a_taken_port_is_one_error_line_before_listening(
    tmp_path: Path, command: str, taken: str
) -> None:
    """A port another process holds (and never answers on): one `error:` line naming the
    address and the flag that picks another, exit 2, before anything listens or starts."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        ports = {"--port": free_port(), "--base-port": free_range(1)} | {taken: busy}
        args = [*command.split(), "--port", str(ports["--port"])]
        if command == "instance serve":
            args += ["--name", "A"]
        if command == "up":
            args += ["--instances", "A", "--base-port", str(ports["--base-port"])]
        async with started(*args, env=clean_env(tmp_path)) as proc:
            assert await proc.finish() == 2, proc
    line = one_error_line(proc)
    assert f"127.0.0.1:{busy}" in line
    assert "Address already in use" in line
    assert taken in line


# -- 16: progress on a terminal, --summary -----------------------------------------------------


async def run_with_terminal_stderr(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run a command with stderr on a pty (stdout a pipe); returns (exit, stdout, screen)."""
    leader, follower = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "openclaw"), "orchestrator", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=follower, env=env,
        )  # fmt: skip
        os.close(follower)
        follower = -1
        screen = asyncio.create_task(asyncio.to_thread(read_terminal, leader))
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
        text = await asyncio.wait_for(screen, RUN_TIMEOUT)
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), text


async def test_fanout_shows_progress_on_a_terminal_only(live: Cluster) -> None:
    """With stderr on a terminal a fanout shows `n/3 done, k failed` as entries arrive, and
    prints the same result; with stderr on a pipe, stderr stays empty as before."""
    await live.set_faults("B", fail_rate=1.0, fail_status=500)
    await live.set_faults("C", latency=0.3)
    args = ("fanout", "--targets", "A-C", "--payload", '{"n": 1}')
    code, out, screen = await run_with_terminal_stderr(*args, env=cluster_env(live))
    piped = await cli(*args, env=cluster_env(live))
    assert code == 0, screen
    assert "3/3 done, 1 failed" in screen
    assert re.search(r"[12]/3 done", screen), screen
    assert piped.code == 0
    assert piped.err == ""
    shown, plain = json.loads(out), piped.json()
    assert [(e["instance"], e["status"]) for e in shown["results"]] == [
        (e["instance"], e["status"]) for e in plain["results"]
    ]
    assert shown["value"] == plain["value"]


@pytest.mark.parametrize("extra", [[], ["--config", "CONFIG"]])
async def test_fanout_summary_and_value_only(
    live: Cluster, tmp_path: Path, extra: list[str]
) -> None:
    """`--summary` prints the counts and the aggregate without the entries; `--value-only`
    prints exactly the aggregated value (for --aggregate true, the array of results); the
    fast path and the Typer path (with --config) print the same."""
    await live.set_faults("B", fail_rate=1.0, fail_status=500)
    config = tmp_path / "client.json"
    config.write_text("{}")
    extra = [str(config) if word == "CONFIG" else word for word in extra]
    args = ["fanout", "--targets", "A-C", "--aggregate", "true", *extra]
    full, summary, value = await asyncio.gather(
        cli(*args, env=cluster_env(live)),
        cli(*args, "--summary", env=cluster_env(live)),
        cli(*args, "--value-only", env=cluster_env(live)),
    )
    assert (full.code, summary.code, value.code) == (0, 0, 0), (full, summary, value)
    result = full.json()
    assert value.json() == result["value"] == [{"instance": n, "payload": {}} for n in "AC"]
    brief = summary.json()
    assert "results" not in brief
    assert brief["failed_instances"] == ["B"]
    assert (brief["succeeded"], brief["failed"], brief["value"]) == (2, 1, result["value"])


async def test_value_only_and_summary_exclude_each_other() -> None:
    """`--value-only` with `--summary` (or `--stream`) is a usage error, exit 2."""
    env = base_env(ORCHESTRATOR_URL=UNREACHABLE)
    both, stream = await asyncio.gather(
        cli("fanout", "--summary", "--value-only", env=env),
        cli("fanout", "--stream", "--value-only", env=env),
    )
    assert (both.code, stream.code) == (2, 2), (both, stream)
    assert "--value-only" in both.err
    assert "--stream" in stream.err


# -- 20: a client config file sets the options' defaults --------------------------------------


async def test_the_seed_config_file_sets_instances_and_timeout(
    live: Cluster, tmp_path: Path
) -> None:
    """The seed's `{"instances": ["A"], "timeout": 5}` in config.json: every `route --config
    config.json` goes to A; a flag still wins; fanout takes `instances` as its targets."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"instances": ["A"], "timeout": 5}))
    env = cluster_env(live)
    routes = await asyncio.gather(
        *(cli("route", "--config", str(config), env=env) for _ in range(4))
    )
    flagged, fanned = await asyncio.gather(
        cli("route", "--config", str(config), "--instances", "B", env=env),
        cli("fanout", "--config", str(config), env=env),
    )
    assert [r.json()["instance"] for r in routes] == ["A"] * 4, routes
    assert flagged.json()["instance"] == "B"
    assert [e["instance"] for e in fanned.json()["results"]] == ["A"]


async def test_config_defaults_apply_to_every_option_they_name(
    live: Cluster, tmp_path: Path
) -> None:
    """A YAML client config with targets, aggregate, retry and a duration: fanout uses them;
    health uses the targets and leaves the fanout-only keys to fanout."""
    config = tmp_path / "client.yaml"
    config.write_text("targets: A-B\naggregate: first\nretry: 1\ntimeout: 2s\nmin_success: 2\n")
    env = cluster_env(live)
    fanned, health = await asyncio.gather(
        cli("fanout", "--config", str(config), env=env),
        cli("health", "--config", str(config), env=env),
    )
    assert fanned.code == 0, fanned
    result = fanned.json()
    assert result["aggregate"] == "first"
    assert [e["instance"] for e in result["results"]] == ["A", "B"]
    assert health.json() == {"A": "healthy", "B": "healthy"}


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ({"instancez": ["A"]}, "instancez"),
        ({"instances": ["A"], "timeout": "soon"}, "timeout"),
        ({"instances": ["A"], "targets": "B"}, "targets"),
        ({"port": 18790, "api_key": "k", "bogus": 1}, "bogus"),
    ],
)
async def test_a_config_key_no_command_knows_is_an_error(
    tmp_path: Path, content: dict[str, Any], named: str
) -> None:
    """An unknown key or a bad value in the config file: exit 2, naming the key and file,
    before any request."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(content))
    run = await cli("route", "--config", str(config), env=base_env(ORCHESTRATOR_URL=UNREACHABLE))
    assert run.code == 2, run
    assert named in run.err
    assert str(config) in run.err.replace("\n", "")
    assert "connection_failed" not in run.err


async def test_a_server_config_gives_the_address_and_key_only(
    live: Cluster, tmp_path: Path
) -> None:
    """A server config (its instances as objects, its own timeout) still serves a client
    command for url and key: its server keys set no option (route picks any instance)."""
    port = int(live.url.rsplit(":", 1)[1])
    config = tmp_path / "server.json"
    config.write_text(
        json.dumps(
            {
                "port": port,
                "api_key": live.api_key,
                "timeout": "1ms",
                "instances": [{"name": "Z", "url": "http://127.0.0.1:1"}],
            }
        )
    )
    run = await cli("route", "--config", str(config), env=base_env())
    assert run.code == 0, run
    assert run.json()["instance"] in "ABC"
