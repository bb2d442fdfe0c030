"""One real OpenClaw gateway as a child process: its own state, config, token and port.

Each gateway gets a folder of its own and never shares state with another::

    <state_dir>/openclaw.json    the config (OPENCLAW_CONFIG_PATH)
    <state_dir>/home/            HOME, so nothing lands in the user's ~/.openclaw
    <state_dir>/gateway.log      the process's stdout and stderr
    <state_dir>/openclaw.log     the gateway's own log file (logging.file)

It runs ``openclaw gateway run --auth token --port P --bind loopback`` with the token in
``OPENCLAW_GATEWAY_TOKEN`` (an environment variable, so it never shows in ``ps``), the
OpenAI-compatible ``/v1/chat/completions`` endpoint enabled, its agents on one model served
at ``model_url`` (the stub model, or any OpenAI-compatible server), and every outbound
extra switched off: update checks, the hosted model catalog, mDNS, channels.

The gateway leads a new process group and starts a helper ("spawn broker") in a group of
its own, so :meth:`Gateway.stop` signals the gateway's group and then ends any process
left that carries this gateway's ``OPENCLAW_STATE_DIR`` (only ever ours).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from ...models import InstanceSpec
from .install import OpenClawInstall
from .stub_model import DEFAULT_MODEL_ID

__all__ = [
    "DEFAULT_READY_TIMEOUT",
    "GATEWAY_ENV",
    "Gateway",
    "die_with_parent",
    "free_port",
    "gateway_config",
    "start_gateway",
    "wait_ready",
    "warm_up",
]

DEFAULT_READY_TIMEOUT = 180.0
DEFAULT_WARM_UP_TIMEOUT = 120.0
STOP_GRACE = 10.0
WARM_UP_SESSION_KEY = "orchestrator-warmup"
GATEWAY_ENV = {
    "OPENCLAW_DISABLE_BONJOUR": "1",
    "OPENCLAW_NO_RESPAWN": "1",
    "OPENCLAW_SKIP_CHANNELS": "1",
    "OPENCLAW_EXEC_SHELL_SNAPSHOT": "0",
    "OPENCLAW_NO_AUTO_UPDATE": "1",
}
"""The gateway's documented embedding preset, plus no update checks."""
_PR_SET_PDEATHSIG = 1
_LOG_TAIL = 3000


GATEWAY_PORTS = range(11000, 18000)
"""Where :func:`free_port` looks: below Linux's ephemeral ports (32768-60999), where any
process's outgoing connection or ``bind(0)`` may take a port between our look and the
gateway's own bind (seen: a test server got the port first), and below our defaults
(18790, 18801+)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (the gateway binds it itself), drawn at
    random from :data:`GATEWAY_PORTS`."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(GATEWAY_PORTS.start, GATEWAY_PORTS.stop)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {GATEWAY_PORTS} on {host}")


def gateway_config(
    *,
    model_url: str,
    model_id: str = DEFAULT_MODEL_ID,
    log_file: Path | None = None,
    tools_allow: Sequence[str] = (),
) -> dict[str, Any]:
    """The gateway's ``openclaw.json``: local mode, chat completions on, one model provider
    (``vllm``-style, OpenAI-compatible at ``model_url``), nothing fetched from outside."""
    gateway: dict[str, Any] = {
        "mode": "local",
        "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
    }
    if tools_allow:
        gateway["tools"] = {"allow": list(tools_allow)}
    model = {"id": model_id, "name": model_id, "contextWindow": 32000, "maxTokens": 1024}
    provider = {
        "baseUrl": model_url.rstrip("/") + "/v1",
        "apiKey": "stub",
        "api": "openai-completions",
        "models": [model],
    }
    config: dict[str, Any] = {
        "gateway": gateway,
        "models": {"catalogRefresh": {"enabled": False}, "providers": {"vllm": provider}},
        "agents": {"defaults": {"model": {"primary": f"vllm/{model_id}"}, "skipBootstrap": True}},
        "plugins": {"allow": ["vllm"]},
        "update": {"checkOnStart": False},
    }
    if log_file is not None:
        config["logging"] = {"file": str(log_file)}
    return config


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """SIGTERM the child when the process that started it dies (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Gateway:
    """A running gateway: where it listens, its folder and its token (never in the repr)."""

    name: str
    host: str
    port: int
    state_dir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    token: SecretStr = field(repr=False)

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where its stdout and stderr go."""
        return self.state_dir / "gateway.log"

    def is_running(self) -> bool:
        """Whether the gateway process has not exited."""
        return self.process.poll() is None

    def spec(self, *, tags: Sequence[str] = ("openclaw",), **fields: Any) -> InstanceSpec:
        """Its instance entry for the orchestrator: ``driver: "openclaw"`` and its token."""
        return InstanceSpec(
            name=self.name,
            url=self.url,
            driver="openclaw",
            credentials=self.token,
            tags=list(tags),
            **fields,
        )

    def log_tail(self, size: int = _LOG_TAIL) -> str:
        """The end of its output, for error messages."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode(errors="replace")

    def kill(self) -> None:
        """``kill -9`` its process group (a crash, as tests need it), then reap it."""
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        self._end_strays()

    def request_stop(self) -> None:
        """SIGTERM its process group without waiting (to stop many gateways at once)."""
        if self.is_running():
            self._signal_group(signal.SIGTERM)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM its process group, SIGKILL after ``grace`` seconds, then reap it."""
        if self.is_running():
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        self._end_strays()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def _end_strays(self) -> None:
        """SIGKILL any process still carrying this gateway's state folder in its env."""
        marker = f"OPENCLAW_STATE_DIR={self.state_dir}".encode()
        for pid in _pids_with_env(marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _pids_with_env(entry: bytes) -> list[int]:
    """Processes whose environment holds exactly ``entry`` (``KEY=value``)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if entry in env.split(b"\0"):
            found.append(int(proc.name))
    return [pid for pid in found if pid != os.getpid()]


def start_gateway(
    install: OpenClawInstall,
    *,
    name: str,
    state_dir: Path,
    port: int,
    token: SecretStr,
    model_url: str,
    model_id: str = DEFAULT_MODEL_ID,
    tools_allow: Sequence[str] = (),
    base_env: Mapping[str, str] | None = None,
    secret_env: Mapping[str, SecretStr] | None = None,
) -> Gateway:
    """Start one gateway on ``127.0.0.1:port`` (call from the main thread: the child gets
    SIGTERM when the thread that started it ends). It is not ready yet: see
    :func:`wait_ready`.

    ``secret_env`` are variables the gateway's config may reference as ``${NAME}`` (the
    orchestrator's key for its MCP server, ``ORCHESTRATOR_API_KEY``): set in the gateway's
    environment only, never written to its config or shown in ``ps``."""
    state_dir = state_dir.resolve()
    home = state_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    config_path = state_dir / "openclaw.json"
    config = gateway_config(
        model_url=model_url,
        model_id=model_id,
        log_file=state_dir / "openclaw.log",
        tools_allow=tools_allow,
    )
    config_path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    env = install.env(os.environ if base_env is None else base_env)
    env.update(GATEWAY_ENV)
    env.update(
        OPENCLAW_STATE_DIR=str(state_dir),
        OPENCLAW_CONFIG_PATH=str(config_path),
        OPENCLAW_GATEWAY_TOKEN=token.get_secret_value(),
        HOME=str(home),
    )
    env.update({name: value.get_secret_value() for name, value in (secret_env or {}).items()})
    args = ("gateway", "run", "--auth", "token", "--port", str(port), "--bind", "loopback")
    with open(state_dir / "gateway.log", "ab") as log:
        process = subprocess.Popen(  # noqa: S603  # our pinned node + openclaw.mjs, fixed argv
            install.command(*args),
            cwd=state_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # only sets the death signal
        )
    return Gateway(name, "127.0.0.1", port, state_dir, process, token)


def _request(
    gateway: Gateway,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One plain HTTP exchange with ``gateway`` (set-up code runs before any event loop)."""
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=timeout)
    try:
        data = None if body is None else orjson.dumps(body)
        conn.request(method, path, body=data, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _is_ready(gateway: Gateway) -> bool:
    try:
        status, raw = _request(gateway, "GET", "/readyz", timeout=2.0)
    except OSError:
        return False
    with contextlib.suppress(orjson.JSONDecodeError):
        return status == 200 and orjson.loads(raw).get("ready") is True
    return False


def wait_ready(gateways: Sequence[Gateway], *, timeout: float = DEFAULT_READY_TIMEOUT) -> None:
    """Wait until every gateway's ``/readyz`` says ready; RuntimeError (with the log's tail)
    when one exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    waiting = list(gateways)
    while waiting:
        for gw in list(waiting):
            if not gw.is_running():
                raise RuntimeError(
                    f"gateway {gw.name} exited with {gw.process.returncode}:\n{gw.log_tail()}"
                )
            if _is_ready(gw):
                waiting.remove(gw)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(gw.name for gw in waiting)
            raise RuntimeError(f"gateways {names} not ready after {timeout:g}s")
        if waiting:
            time.sleep(0.25)


def _warm_up_one(gateway: Gateway, timeout: float) -> None:
    headers = {
        "Authorization": f"Bearer {gateway.token.get_secret_value()}",
        "Content-Type": "application/json",
        "x-openclaw-session-key": WARM_UP_SESSION_KEY,
    }
    body = {"model": "openclaw", "messages": [{"role": "user", "content": "warm up"}]}
    status, raw = _request(
        gateway, "POST", "/v1/chat/completions", body=body, headers=headers, timeout=timeout
    )
    if status != 200:
        text = raw[:500].decode(errors="replace")
        raise RuntimeError(f"gateway {gateway.name}: warm-up turn answered {status}: {text}")


def warm_up(gateways: Sequence[Gateway], *, timeout: float = DEFAULT_WARM_UP_TIMEOUT) -> None:
    """One agent turn on each gateway, all at once: a fresh gateway's first turn prepares
    its agent workspace (seconds), so later turns answer quickly."""
    if not gateways:
        return
    with ThreadPoolExecutor(max_workers=len(gateways)) as pool:
        for future in [pool.submit(_warm_up_one, gw, timeout) for gw in gateways]:
            future.result()
