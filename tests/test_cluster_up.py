"""`openclaw orchestrator up` and `serve` as real foreground processes.

`up` is started as users start it, with free ports on 127.0.0.1; the test waits for its
banner, drives it through the SDK, then stops it with SIGTERM or SIGINT and checks through
/proc that none of the instance processes it started outlives it. `serve` is started with
good and bad configuration files and an unsafe bind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from openclaw_orchestrator import AsyncClient, ConnectionFailedError, UnauthorizedError
from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.server.hosting import BackgroundServer
from tests.ports import free_port, free_range, is_free

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]  # START_TIMEOUT, then routes and a stop

BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0
"""Seconds for `up` to start its instances and itself: a few alone, but a full run once took
more than 30 beside the rest of the suite (three instance processes and the orchestrator,
each importing the server)."""
STOP_TIMEOUT = 15.0
INSTANCE_LINE = re.compile(r"instance (\S+)\s+(http://\S+)\s+\(pid (\d+)\)")


# -- processes ---------------------------------------------------------------------------------


class Proc:
    """A started command whose stdout and stderr are collected as they arrive."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.out: list[str] = []
        self.err: list[str] = []
        assert process.stdout is not None
        assert process.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(process.stdout, self.out)),
            asyncio.create_task(self._pump(process.stderr, self.err)),
        ]

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> Proc:
        """Run ``openclaw orchestrator <args>``."""
        process = await asyncio.create_subprocess_exec(
            str(BIN / "openclaw"),
            "orchestrator",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(process)

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, sink: list[str]) -> None:
        async for raw in stream:
            sink.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def stdout(self) -> str:
        """Everything printed to stdout so far."""
        return "\n".join(self.out)

    @property
    def stderr(self) -> str:
        """Everything printed to stderr so far."""
        return "\n".join(self.err)

    def __str__(self) -> str:
        return f"exit {self.process.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"

    async def wait_for_output(self, predicate: Callable[[str], bool]) -> str:
        """Poll stdout until ``predicate`` holds; fail if the process exits or time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not predicate(self.stdout):
            if self.process.returncode is not None:
                await self.finish()
                pytest.fail(f"the command exited early:\n{self}")
            if loop.time() > deadline:
                pytest.fail(f"no expected output after {START_TIMEOUT}s:\n{self}")
            await asyncio.sleep(0.02)
        return self.stdout

    async def finish(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the exit and the last output; returns the exit code."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.gather(*self._pumps)
        return code

    async def aclose(self) -> None:
        """Kill the process if it still runs, and reap it."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)


@contextlib.asynccontextmanager
async def started(*args: str, env: dict[str, str]) -> AsyncIterator[Proc]:
    """A command that is always killed and reaped when the block ends."""
    proc = await Proc.start(*args, env=env)
    try:
        yield proc
    finally:
        await proc.aclose()


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without ORCHESTRATOR_* variables, a scratch data dir, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env |= {"NO_COLOR": "1", "XDG_DATA_HOME": str(tmp_path / "data")}
    return env | extra


def is_running_instance(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) `instance serve` process, read from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and b"instance" in cmdline and b"serve" in cmdline


def instance_pids_on(port: int) -> list[int]:
    """PIDs of live `instance serve --port <port>` processes, found through /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"instance" in argv and b"--port" in argv:
            index = argv.index(b"--port")
            if argv[index + 1 : index + 2] == [str(port).encode()]:
                if is_running_instance(int(entry.name)):
                    found.append(int(entry.name))
    return found


async def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Poll until no pid in ``pids`` is a running instance; returns the survivors."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        alive = [p for p in pids if is_running_instance(p)]
        if not alive or loop.time() > deadline:
            return alive
        await asyncio.sleep(0.05)


def banner_instances(text: str) -> dict[str, tuple[str, int]]:
    """name -> (url, pid) from the `up` banner."""
    return {m[1]: (m[2], int(m[3])) for m in INSTANCE_LINE.finditer(text)}


def kill_leftovers(pids: list[int]) -> None:
    """Last resort for a failed test: SIGKILL instances `up` started that are still there."""
    for pid in pids:
        if is_running_instance(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- up ------------------------------------------------------------------------------------------


async def run_up_and_stop(
    tmp_path: Path, sig: signal.Signals, env_key: str | None
) -> tuple[str, str, str]:
    """Start `up --instances A-C`, route and fan out through it, stop it with ``sig``.

    Returns (banner, the key it runs with, stderr). Asserts that the process exits 0 on
    SIGTERM and 130 on SIGINT (Ctrl-C), and that no instance process survives it.
    """
    port, base = free_port(), free_range(3)
    extra = {} if env_key is None else {"ORCHESTRATOR_API_KEY": env_key}
    args = ["up", "--instances", "A-C", "--port", str(port), "--base-port", str(base)]
    pids: list[int] = []
    async with started(*args, "--handler", "echo", env=clean_env(tmp_path, **extra)) as up:
        try:
            banner = await up.wait_for_output(lambda out: "Ctrl-C stops" in out)
            instances = banner_instances(banner)
            pids = [pid for _, pid in instances.values()]
            assert f"orchestrator listening on http://127.0.0.1:{port}" in banner
            assert {n: url for n, (url, _) in instances.items()} == {
                "A": f"http://127.0.0.1:{base}",
                "B": f"http://127.0.0.1:{base + 1}",
                "C": f"http://127.0.0.1:{base + 2}",
            }
            key_line = re.search(r"export ORCHESTRATOR_API_KEY=(\S+)", banner)
            assert (key_line is None) == (env_key is not None), banner  # never echo yours
            assert f"export ORCHESTRATOR_URL=http://127.0.0.1:{port}" in banner
            key = key_line[1] if key_line else str(env_key)
            await drive(f"http://127.0.0.1:{port}", key)

            up.process.send_signal(sig)
            assert await up.finish() == (130 if sig == signal.SIGINT else 0), up
            assert await wait_gone(pids) == []
            for name, (url, _) in instances.items():
                assert is_free(int(url.rsplit(":", 1)[1])), f"{name}'s port is still taken"
            assert is_free(port)
            return banner, key, up.stderr
        finally:
            kill_leftovers(pids)


async def drive(url: str, key: str) -> None:
    """The cluster answers through the SDK: liveness, route, fanout; a wrong key is refused."""
    async with AsyncClient(url, key) as client:
        alive = await client.liveness()
        assert alive["instances"]["total"] == 3
        routed = await client.route({"data": "task"}, instances=["A", "B"], timeout="10s")
        assert routed.instance in ("A", "B")
        assert routed.result == {"instance": routed.instance, "payload": {"data": "task"}}
        fanned = await client.fanout({"n": 1}, targets="A-C", timeout=10)
        assert fanned.value == [{"instance": n, "payload": {"n": 1}} for n in "ABC"]
        assert {i.name: i.tags for i in await client.instances()} == {n: ["local"] for n in "ABC"}
    async with AsyncClient(url, key + "-wrong") as wrong:
        with pytest.raises(UnauthorizedError):
            await wrong.health()


async def test_up_generates_a_key_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    """`up` without ORCHESTRATOR_API_KEY prints a generated key; SIGTERM leaves no instance."""
    banner, key, stderr = await run_up_and_stop(tmp_path, signal.SIGTERM, env_key=None)
    assert "ORCHESTRATOR_API_KEY (generated, kept in " in banner
    assert len(key) >= 24
    assert key not in stderr


async def test_up_uses_the_environment_key_and_stops_everything_on_sigint(
    tmp_path: Path,
) -> None:
    """With ORCHESTRATOR_API_KEY set, `up` uses it (not a generated one) without printing it;
    SIGINT stops all and says `interrupted`."""
    env_key = "env-key-for-up-0123456789"
    banner, key, stderr = await run_up_and_stop(tmp_path, signal.SIGINT, env_key=env_key)
    assert key == env_key
    assert "generated" not in banner
    assert env_key not in banner
    assert "ORCHESTRATOR_API_KEY: yours, from the environment or --config (not shown)" in banner
    assert stderr.splitlines() == ["interrupted"]


async def test_up_with_its_port_taken_leaves_no_instance_behind(tmp_path: Path) -> None:
    """When the orchestrator port is taken, `up` exits 2 and starts no instance."""
    base = free_range(1)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        args = ["up", "--instances", "A", "--port", str(port), "--base-port", str(base)]
        async with started(*args, "--handler", "echo", env=clean_env(tmp_path)) as up:
            try:
                assert await up.finish(START_TIMEOUT) == 2, up
            finally:
                kill_leftovers(instance_pids_on(base))
    assert "Address already in use" in up.stderr
    assert "Traceback" not in up.stderr
    assert instance_pids_on(base) == []
    assert is_free(base)


async def test_up_refuses_targets_that_need_a_registry(tmp_path: Path) -> None:
    """`up --instances all` is a usage error (exit 2) explaining what up accepts."""
    args = ["up", "--instances", "all", "--port", str(free_port())]
    async with started(*args, env=clean_env(tmp_path)) as up:
        assert await up.finish() == 2, up
    assert "--instances" in up.stderr
    assert "A-H" in up.stderr


# -- serve ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"instances": [{"name": "A", "url": "ftp://127.0.0.1:1"}]}, "instances.0.url"),
        ({"timeout": "10 parsecs"}, "timeout"),
    ],
)
async def test_serve_bad_config_exits_2_naming_the_field(
    tmp_path: Path, config: dict[str, object], field: str
) -> None:
    """`serve --config bad.json` prints the file and the offending field and exits 2."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    async with started("serve", "--config", str(path), env=clean_env(tmp_path)) as serve:
        assert await serve.finish() == 2, serve
    assert str(path) in serve.stderr.replace("\n", "")
    assert field in serve.stderr
    assert "Traceback" not in serve.stderr


async def test_serve_refuses_a_network_bind_without_a_key(tmp_path: Path) -> None:
    """`serve --host 0.0.0.0` without ORCHESTRATOR_API_KEY exits 2 naming the variable."""
    port = free_port()
    args = ["serve", "--host", "0.0.0.0", "--port", str(port)]  # noqa: S104  # it must refuse
    async with started(*args, env=clean_env(tmp_path)) as serve:
        assert await serve.finish() == 2, serve
    assert "ORCHESTRATOR_API_KEY" in serve.stderr
    assert "0.0.0.0" in serve.stderr  # noqa: S104  # a message, not a bind


async def test_serve_bad_environment_exits_2(tmp_path: Path) -> None:
    """An ORCHESTRATOR_INSTANCES value that is not JSON is a configuration error: exit 2."""
    env = clean_env(tmp_path, ORCHESTRATOR_INSTANCES="[{not json")
    async with started("serve", "--port", str(free_port()), env=env) as serve:
        assert await serve.finish() == 2, serve
    assert "Traceback" not in serve.stderr
    assert "instances" in serve.stderr


async def test_serve_good_yaml_config_serves_and_stops(tmp_path: Path) -> None:
    """`serve --config good.yaml` (env overriding its port) serves the configured instances,
    with the key from the file, and exits on SIGTERM."""
    instance = BackgroundServer(create_instance_app("W1", resolve_handler("echo")))
    await instance.start()
    file_port, env_port = free_port(), free_port()
    path = tmp_path / "good.yaml"
    path.write_text(
        f"port: {file_port}\n"
        "api_key: yaml-key-0123456789\n"
        "policy: least_outstanding\n"
        "timeout: 5s\n"
        "health: {interval: 500ms, probe_timeout: 1s}\n"
        "retry: {max_retries: 1}\n"
        f"instances:\n  - name: W1\n    url: {instance.url}\n    tags: [yaml]\n"
    )
    env = clean_env(tmp_path, ORCHESTRATOR_PORT=str(env_port))
    url = f"http://127.0.0.1:{env_port}"
    try:
        async with started("serve", "--config", str(path), env=env) as serve:
            await wait_live(url, serve)
            async with AsyncClient(url, "yaml-key-0123456789") as client:
                assert [i.name for i in await client.instances()] == ["W1"]
                routed = await client.route({"x": 1}, instances="tag:yaml")
                assert routed.result == {"instance": "W1", "payload": {"x": 1}}
            assert is_free(file_port)  # the environment's port won
            serve.process.terminate()
            # uvicorn shuts down gracefully, then re-raises SIGTERM: "terminated by SIGTERM"
            assert await serve.finish() in (0, -signal.SIGTERM), serve
        assert "yaml-key-0123456789" not in serve.stderr
    finally:
        await instance.aclose()


async def wait_live(url: str, proc: Proc) -> None:
    """Poll the orchestrator's liveness (no key needed) until it answers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    async with AsyncClient(url) as probe:
        while True:
            try:
                await probe.liveness()
                return
            except ConnectionFailedError:
                if proc.process.returncode is not None:
                    await proc.finish()
                    pytest.fail(f"serve exited early:\n{proc}")
                if loop.time() > deadline:
                    raise
            await asyncio.sleep(0.05)
