"""``openclaw orchestrator up``: an orchestrator plus local reference instances, in the
foreground.

Instances run as child processes (one per name, ports ``base_port + i``); the orchestrator
runs in this process. Ctrl-C or SIGTERM stops everything: children are terminated, then
killed if they linger, and on Linux they also get SIGTERM if this process dies abruptly
(``PR_SET_PDEATHSIG``), so nothing is left orphaned. The children run in their own process
group, so a Ctrl-C at the terminal reaches this process alone, which stops them and says
``interrupted`` once (exit 130); SIGTERM is a clean stop (exit 0).

Everything that can fail on configuration (the settings, an unsafe bind, the reducers, a
taken port) fails before any process starts or anything is logged: one ``error:`` line.
The API key is the environment's (or the config file's), never printed, else the one kept
in the data folder (:mod:`.keyfile`), printed for the user to export; either way no child
process inherits ``ORCHESTRATOR_API_KEY``.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ..models import InstanceSpec
from ..server.logs import configure_logging
from ..server.nofile import raise_nofile_limit
from ..server.serve import listen_socket, preflight
from ..server.tasks import cancel_and_wait
from ..settings import ConfigError, Settings, load_settings
from .child_server import ChildServer
from .keyfile import KEY_FILE, kept_api_key
from .openclaw.fleet import OpenClawFleet, fleet_banner, gateway_names, local_fleet

__all__ = ["InstanceStartError", "LocalInstance", "run_cluster", "start_instance"]

READY_TIMEOUT = 30.0
PROBE_TIMEOUT = 1.0
"""Seconds one readiness probe may take: a port held by something that never answers must
not stall ``up``."""
API_KEY_VARIABLE = "ORCHESTRATOR_API_KEY"
_PR_SET_PDEATHSIG = 1


class InstanceStartError(ConfigError):
    """A local instance exited, or never answered, while ``up`` was starting."""


@dataclass
class LocalInstance(ChildServer):
    """A reference instance running as a child process."""

    name: str


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_instance(
    name: str, *, host: str, port: int, handler: str, extra: Sequence[str] = ()
) -> LocalInstance:
    """Start one reference instance as a child process of this one."""
    cmd = [
        sys.executable,
        "-m",
        "openclaw_orchestrator",
        "instance",
        "serve",
        "--name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--handler",
        handler,
        *extra,
    ]
    # Its stdout holds only its "listening on" line, which the banner already gives; its own
    # process group means a terminal's Ctrl-C reaches `up` alone, which stops the children.
    process = subprocess.Popen(  # noqa: S603  # our own module, fixed argv; preexec only sets the death signal
        cmd, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent, process_group=0
    )
    return LocalInstance(host, port, process, name=name)


async def wait_ready(instances: Sequence[LocalInstance], *, timeout: float = READY_TIMEOUT) -> None:
    """Wait until every instance answers its health check; :class:`InstanceStartError` when
    one exits or is not ready in ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    probe = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=probe) as session:
        for inst in instances:
            while True:
                if inst.process.poll() is not None:
                    raise InstanceStartError(
                        f"instance {inst.name} exited with {inst.process.returncode}"
                    )
                try:
                    async with session.get(f"{inst.url}/api/health/check") as resp:
                        if resp.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if loop.time() > deadline:
                    raise InstanceStartError(f"instance {inst.name} not ready after {timeout:g}s")
                await asyncio.sleep(0.05)


def cluster_settings(
    names: Sequence[str],
    *,
    host: str,
    port: int,
    base_port: int,
    config: Path | None,
    health_interval: float | None,
    data_dir: Path | None = None,
) -> tuple[Settings, str | None]:
    """Settings for the orchestrator of a local cluster: the config file's, plus the local
    instances, plus an API key, and a note on where the key comes from when the banner should
    show it: None for the environment's (or the config file's) key, which is never printed;
    else the key kept in the data folder (generated on the first run)."""
    base = load_settings(config, host=host, port=port, data_dir=data_dir)
    local = [
        InstanceSpec(name=n, url=f"http://{host}:{base_port + i}", tags=["local"])
        for i, n in enumerate(names)
    ]
    taken = {spec.name for spec in base.instances.static}
    clash = taken.intersection(names)
    if clash:
        raise ConfigError(f"instances {', '.join(sorted(clash))} are both local and in the config")
    health = base.health
    if health_interval is not None:
        health = health.model_copy(update={"interval": health_interval})
    key, key_note = base.api_key, None
    if key is None:
        key, generated = kept_api_key(base.data_dir)
        kept = base.data_dir / KEY_FILE
        key_note = f"generated, kept in {kept}" if generated else f"kept in {kept}"
    # In the foreground the console is for people: per-request logs only when asked for.
    log_level = base.log_level if "log_level" in base.model_fields_set else "warning"
    settings = base.model_copy(
        update={
            "instances": base.instances.model_copy(
                update={"static": [*base.instances.static, *local]}
            ),
            "health": health,
            "api_key": key,
            "log_level": log_level,
        }
    )
    return settings, key_note


def run_cluster(
    *,
    names: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 18790,
    base_port: int = 18801,
    handler: str = "demo",
    config: Path | None = None,
    health_interval: float | None = None,
    demo: bool = False,
    data_dir: Path | None = None,
    openclaw: int = 0,
) -> int:
    """Run the cluster in the foreground until SIGTERM (returns 0) or Ctrl-C (raises
    KeyboardInterrupt once everything has stopped, for the CLI's ``interrupted``).

    ``openclaw`` > 0 also starts that many real OpenClaw gateways O1... (see
    :func:`_openclaw_cluster`)."""
    settings, key_note = cluster_settings(
        names,
        host=host,
        port=port,
        base_port=base_port,
        config=config,
        health_interval=health_interval,
        data_dir=data_dir,
    )
    _forget_api_key_variable()
    preflight(settings)
    for offset in range(len(names)):
        listen_socket(host, base_port + offset, option="--base-port").close()
    sock = listen_socket(settings.host, settings.port)
    with sock:
        configure_logging(settings.log_level, settings.log_format)
        raise_nofile_limit()
        cluster = _Cluster(settings, sock, names, host, base_port, handler, demo, key_note)
        stopped_by = _openclaw_cluster(cluster, openclaw) if openclaw > 0 else _serve(cluster)
    if stopped_by == signal.SIGINT:
        raise KeyboardInterrupt
    return 0


def _forget_api_key_variable() -> None:
    """Drop ``ORCHESTRATOR_API_KEY`` (in any letter case, as the settings match it) from this
    process's environment once the settings hold the key: no child started from here on (an
    instance, the stub model, a gateway, npm) inherits it (gateways are handed it by name,
    see :func:`_openclaw_cluster`)."""
    for name in [name for name in os.environ if name.upper() == API_KEY_VARIABLE]:
        del os.environ[name]


@dataclass(frozen=True)
class _Cluster:
    """What one ``up`` runs: the orchestrator's settings and socket, the local instances."""

    settings: Settings
    sock: socket.socket
    names: Sequence[str]
    host: str
    base_port: int
    handler: str
    demo: bool
    key_note: str | None


def _serve(cluster: _Cluster, fleet: OpenClawFleet | None = None) -> signal.Signals:
    """Run ``cluster`` on a fresh event loop; the signal that stopped it."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(cluster, fleet))


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, object]) -> bool:
    """Run ``work`` to its end (True), or cancel it as soon as ``stop`` is set (False)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task in done:
        task.result()  # what the work raised, if anything
        return True
    await cancel_and_wait(task)
    return False


async def _run(cluster: _Cluster, fleet: OpenClawFleet | None) -> signal.Signals:
    """Start the instances, serve the orchestrator, run the demo; wait for SIGINT/SIGTERM
    (at any point: starting up, or in the demo) and return it, once every child has stopped."""
    from ..server.api.app import create_app
    from ..server.hosting import running
    from ..server.http_protocol import RequestLimits

    settings = cluster.settings
    stop = asyncio.Event()
    stopped_by: list[signal.Signals] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stop_on, stop, stopped_by, sig)
    instances = [
        start_instance(n, host=cluster.host, port=cluster.base_port + i, handler=cluster.handler)
        for i, n in enumerate(cluster.names)
    ]
    try:
        if await _unless_stopped(stop, wait_ready(instances)):
            api_key = settings.api_key.get_secret_value() if settings.api_key else ""
            async with running(
                create_app(settings, server_process=True),
                host=settings.host,
                sock=cluster.sock,
                request_limits=RequestLimits.from_settings(settings),
            ) as url:
                _banner(url, api_key, instances, key_note=cluster.key_note)
                if fleet is not None:
                    print(fleet_banner(fleet), flush=True)
                if cluster.demo:
                    await _unless_stopped(stop, _demo(url, api_key, instances, cluster, fleet))
                if not stop.is_set():
                    print("Ctrl-C stops the orchestrator and every instance.", flush=True)
                await stop.wait()
                if fleet is not None:  # before the orchestrator: a gateway whose agents use
                    for gw in fleet.gateways:  # its MCP tools holds a /mcp stream open
                        gw.request_stop()
    finally:
        for inst in instances:
            inst.stop()
    return stopped_by[0]


def _stop_on(stop: asyncio.Event, stopped_by: list[signal.Signals], sig: signal.Signals) -> None:
    """A signal handler: remember the first signal, and stop."""
    stopped_by.append(sig)
    stop.set()


async def _demo(
    url: str,
    api_key: str,
    instances: Sequence[LocalInstance],
    cluster: _Cluster,
    fleet: OpenClawFleet | None,
) -> None:
    """``up --demo``: the main job on the reference instances, then on the gateways."""
    if instances:
        from .demo import run_demo

        await run_demo(url, api_key, instances)
    if fleet is not None:
        from .openclaw.demo import run_openclaw_demo

        gateways = [gw.name for gw in fleet.gateways]
        await run_openclaw_demo(url, api_key, gateways, list(cluster.names))


# -- OpenClaw gateways (``up --openclaw N``) -------------------------------------------------


def _openclaw_cluster(cluster: _Cluster, count: int) -> signal.Signals:
    """The cluster plus ``count`` real OpenClaw gateways O1... sharing one stub model.

    The gateways start first (synchronously, from this main thread: they die with it), are
    registered as ``driver: "openclaw"`` instances with their own tokens, and stop after the
    orchestrator and the reference instances. Each gets the orchestrator's key as
    ``ORCHESTRATOR_API_KEY`` in its environment (the one child that does: the config that
    ``skill install --gateway`` writes references it), and their state and ``fleet.json``
    live in ``<data_dir>/openclaw-gateways/`` while they run, for ``skill install`` to find.
    """
    settings = cluster.settings
    taken = [*cluster.names, *(spec.name for spec in settings.instances.static)]
    clash = sorted(set(gateway_names(count)).intersection(taken))
    if clash:
        raise ConfigError(f"instances {', '.join(clash)} clash with the OpenClaw gateway names")
    key = {API_KEY_VARIABLE: settings.api_key} if settings.api_key is not None else {}
    host, port = cluster.sock.getsockname()[:2]
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104  # compared, never bound
    with local_fleet(
        count,
        base_port=cluster.base_port,
        taken=taken,
        data_dir=settings.data_dir,
        orchestrator_url=f"http://{_url_host(host)}:{port}",
        secret_env=key,
    ) as fleet:
        instances = settings.instances.model_copy(
            update={"static": [*settings.instances.static, *fleet.specs()]}
        )
        settings = settings.model_copy(update={"instances": instances})
        return _serve(dataclasses.replace(cluster, settings=settings), fleet)


def _url_host(host: str) -> str:
    """``host`` as it goes into a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _banner(
    url: str, api_key: str, instances: Sequence[LocalInstance], *, key_note: str | None
) -> None:
    """Where everything listens and the two variables to export; the key itself only when
    it is the one kept in the data folder (``key_note``), never the environment's."""
    lines = [f"orchestrator listening on {url}"]
    for inst in instances:
        lines.append(f"  instance {inst.name:<4} {inst.url}  (pid {inst.process.pid})")
    lines.append("")
    if key_note is None:
        lines.append(f"{API_KEY_VARIABLE}: yours, from the environment or --config (not shown)")
    else:
        lines.append(f"{API_KEY_VARIABLE} ({key_note}):")
        lines.append(f"  export {API_KEY_VARIABLE}={api_key}")
    lines.append(f"  export ORCHESTRATOR_URL={url}")
    print("\n".join(lines), flush=True)
