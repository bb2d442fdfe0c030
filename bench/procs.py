"""Subprocesses on loopback: reference instances, orchestrators, nginx; their CPU and memory.

CPU and peak RSS come from ``/proc`` (utime + stime of the process and its descendants,
``VmHWM`` summed over the tree), so a ``--workers 2`` orchestrator counts both workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

__all__ = [
    "API_KEY",
    "PYTHON",
    "FaultProxy",
    "Proc",
    "free_port",
    "start_instance",
    "start_nginx",
    "start_orchestrator",
    "wait_http",
]

PYTHON = sys.executable
API_KEY = "bench-api-key-0123456789abcdef"
TICK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0


def free_port() -> int:
    """A port nothing listens on right now (bound and released; loopback only)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(tree.get(current, []))
    return out


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Proc:
    """A started subprocess with its URL; CPU and RSS read over its process tree."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        """CPU seconds (user + system) of the process and its descendants so far."""
        return sum(_cpu_seconds(p) for p in _tree(self.pid))

    def peak_rss_mb(self) -> float:
        """Peak resident set (VmHWM), summed over the tree, in MiB."""
        return sum(_status_kb(p, "VmHWM") for p in _tree(self.pid)) / 1024

    def rss_mb(self) -> float:
        """Current resident set (VmRSS), summed over the tree, in MiB."""
        return sum(_status_kb(p, "VmRSS") for p in _tree(self.pid)) / 1024

    def kill(self) -> None:
        """SIGKILL: a crash, as a failover test wants it."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


def _spawn(
    name: str,
    argv: Sequence[str],
    url: str,
    log: Path | None,
    env: dict[str, str] | None = None,
) -> Proc:
    out = log.open("wb") if log else subprocess.DEVNULL
    popen = subprocess.Popen(
        list(argv),
        stdout=subprocess.DEVNULL,
        stderr=out,
        env={**os.environ, **(env or {})},
    )
    return Proc(name, popen, url, log)


async def wait_http(proc: Proc, path: str, timeout: float = START_TIMEOUT) -> float:
    """Poll ``proc.url + path`` until a 200; returns the seconds it took."""
    started = time.perf_counter()
    deadline = started + timeout
    async with aiohttp.ClientSession() as http:
        while time.perf_counter() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}: {proc.log}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(proc.url + path) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - started
            await asyncio.sleep(0.005)
    raise RuntimeError(f"{proc.name} not ready after {timeout}s")


async def start_instance(
    name: str,
    workdir: Path,
    *,
    latency_ms: int = 0,
    fault_api: bool = False,
    handler: str = "echo",
) -> Proc:
    """``openclaw orchestrator instance serve`` on a free port (the echo handler unless
    told)."""
    port = free_port()
    argv = [PYTHON, "-m", "openclaw_orchestrator", "instance", "serve"]
    argv += ["--name", name, "--port", str(port), "--log-level", "warning"]
    argv += ["--handler", handler]
    if latency_ms:
        argv += ["--latency", f"{latency_ms}ms"]
    if fault_api:
        argv.append("--fault-api")
    proc = _spawn(name, argv, f"http://127.0.0.1:{port}", workdir / f"instance-{name}.log")
    await wait_http(proc, "/api/health/check")
    return proc


def _orchestrator_config(
    workdir: Path, instances: dict[str, str], settings: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "instances": [{"name": n, "url": u} for n, u in instances.items()],
        "data_dir": str(workdir / "data"),
        "log_level": "info",
        **(settings or {}),
    }


async def start_orchestrator(
    workdir: Path,
    instances: dict[str, str],
    *,
    label: str = "orchestrator",
    workers: int = 1,
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    """The orchestrator on a free port with the API key on, logging at info to a file.

    One worker: ``openclaw orchestrator serve --config``. Two or more: uvicorn's own
    ``--workers`` over :mod:`openclaw_orchestrator.server.api.factory` (``serve`` has no such flag),
    with the same configuration passed through ``ORCHESTRATOR_*`` variables.
    """
    port = free_port()
    config = _orchestrator_config(workdir, instances, settings)
    env = {"ORCHESTRATOR_API_KEY": API_KEY, **(env or {})}
    log = workdir / f"{label}.log"
    if workers == 1:
        path = workdir / f"{label}.json"
        path.write_text(json.dumps(config))
        argv = [PYTHON, "-m", "openclaw_orchestrator", "serve", "--config", str(path)]
        argv += ["--port", str(port)]
    else:
        env |= {f"ORCHESTRATOR_{k.upper()}": _env_value(v) for k, v in config.items()}
        argv = [
            PYTHON,
            "-m",
            "uvicorn",
            "openclaw_orchestrator.server.api.factory:app",
            "--factory",
        ]
        argv += ["--workers", str(workers), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
        argv += ["--log-level", "warning", "--no-server-header"]
    proc = _spawn(label, argv, f"http://127.0.0.1:{port}", log, env)
    await wait_http(proc, "/api/health/check")
    return proc


def _env_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{upstreams}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        keepalive_requests 1000000;
{locations}
    }}
}}
"""
NGINX_UPSTREAM = """\
    upstream {name} {{
        server {address};
        keepalive 128;
    }}
"""
NGINX_LOCATION = """\
        location {prefix} {{
            proxy_pass http://{name}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
"""


async def start_nginx(workdir: Path, upstream_url: str) -> Proc:
    """nginx (one worker) in front of ``upstream_url`` with a keep-alive upstream pool."""
    return await start_nginx_routes(workdir, {"/": upstream_url})


async def start_nginx_routes(
    workdir: Path, routes: dict[str, str], *, label: str = "nginx"
) -> Proc:
    """nginx (one worker) relaying each path prefix in ``routes`` (``"/"``, ``"/S0/"``) to
    its upstream URL with the prefix taken off, each upstream with a keep-alive pool;
    unbuffered, so a streamed reply passes as it comes."""
    port = free_port()
    folder = workdir / label
    folder.mkdir(exist_ok=True)
    conf = folder / "nginx.conf"
    names = {prefix: f"upstream{i}" for i, prefix in enumerate(routes)}
    upstreams = "".join(
        NGINX_UPSTREAM.format(name=names[prefix], address=url.removeprefix("http://"))
        for prefix, url in routes.items()
    )
    locations = "".join(
        NGINX_LOCATION.format(prefix=prefix, name=names[prefix]) for prefix in routes
    )
    conf.write_text(
        NGINX_CONF.format(dir=folder, upstreams=upstreams, locations=locations, port=port)
    )
    argv = ["nginx", "-p", str(folder), "-c", str(conf)]
    proc = _spawn(label, argv, f"http://127.0.0.1:{port}", folder / "stderr.log")
    await wait_http(proc, next(iter(routes)) + "api/health/check")
    return proc


@contextlib.contextmanager
def stopping(procs: list[Proc]) -> Iterator[list[Proc]]:
    """Stop every process in ``procs`` on exit (the list may grow inside)."""
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


class FaultProxy:
    """A TCP proxy in front of an instance that can fail on demand, as a process can.

    :meth:`refuse` closes the listener and every connection (new connects are refused, like a
    crashed process); :meth:`hang` keeps accepting but relays nothing, on new and open
    connections alike (a stuck process); :meth:`heal` forwards again on the same port.
    """

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self._upstream = (host, int(port))
        self._server: asyncio.Server | None = None
        self._conns: list[asyncio.StreamWriter] = []
        self._port = 0
        self.hanging = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> str:
        """Listen (on a free loopback port the first time); returns the URL."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self._port, backlog=4096, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]
        return self.url

    def hang(self) -> None:
        """From now on nothing is relayed in either direction."""
        self.hanging = True

    async def refuse(self) -> None:
        """Stop listening and drop every connection."""
        await self.aclose()

    async def heal(self) -> None:
        """Forward again, on the same port."""
        self.hanging = False
        if self._server is None:
            await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.append(writer)
        if self.hanging:
            return
        with contextlib.suppress(OSError, RuntimeError, asyncio.CancelledError):  # closed
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            self._conns.append(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            data = await reader.read(65536)
            if self.hanging:
                return  # swallow: the peer waits forever
            writer.write(data)
            await writer.drain()
        writer.close()

    async def aclose(self) -> None:
        """Close the listener and every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._conns:
            writer.close()
        self._conns.clear()
