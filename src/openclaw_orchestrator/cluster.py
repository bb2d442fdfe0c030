"""``openclaw orchestrator up``: an orchestrator plus local reference instances, in the
foreground.

Instances run as child processes (one per name, ports ``base_port + i``); the orchestrator
runs in this process. Ctrl-C or SIGTERM stops everything: children are terminated, then
killed if they linger, and on Linux they also get SIGTERM if this process dies abruptly
(``PR_SET_PDEATHSIG``), so nothing is left orphaned.
"""

from __future__ import annotations

import asyncio
import ctypes
import secrets
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from pydantic import SecretStr

from .logs import configure_logging
from .models import InstanceSpec
from .openclaw.fleet import OpenClawFleet, fleet_banner, gateway_names, local_fleet
from .runner import check_bind
from .settings import ConfigError, Settings, load_settings

__all__ = ["LocalInstance", "run_cluster", "start_instance"]

READY_TIMEOUT = 30.0
STOP_GRACE = 5.0
_PR_SET_PDEATHSIG = 1


@dataclass
class LocalInstance:
    """A reference instance running as a child process."""

    name: str
    port: int
    host: str
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Terminate it and wait; kill it if it will not stop."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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
    process = subprocess.Popen(cmd, preexec_fn=_die_with_parent)  # noqa: S603  # our own module, fixed argv; preexec only sets the death signal
    return LocalInstance(name, port, host, process)


async def wait_ready(instances: Sequence[LocalInstance], *, timeout: float = READY_TIMEOUT) -> None:
    """Wait until every instance answers its health check (or one exits)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        for inst in instances:
            while True:
                if inst.process.poll() is not None:
                    raise RuntimeError(
                        f"instance {inst.name} exited with {inst.process.returncode}"
                    )
                try:
                    async with session.get(f"{inst.url}/api/health/check") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if loop.time() > deadline:
                    raise RuntimeError(f"instance {inst.name} not ready after {timeout:g}s")
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
) -> tuple[Settings, bool]:
    """Settings for the orchestrator of a local cluster: the config file's, plus the local
    instances, plus an API key (the environment's, else a fresh one: then ``True``)."""
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
    key = base.api_key or SecretStr(secrets.token_urlsafe(24))
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
    return settings, base.api_key is None


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
    """Run the cluster in the foreground until Ctrl-C/SIGTERM; returns the exit code.

    ``openclaw`` > 0 also starts that many real OpenClaw gateways O1... (see
    :func:`_openclaw_cluster`)."""
    settings, generated = cluster_settings(
        names,
        host=host,
        port=port,
        base_port=base_port,
        config=config,
        health_interval=health_interval,
        data_dir=data_dir,
    )
    check_bind(settings)
    configure_logging(settings.log_level, settings.log_format)
    if openclaw > 0:
        return _openclaw_cluster(
            settings, names, host, base_port, handler, demo, generated, openclaw
        )
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(settings, names, host, base_port, handler, demo, generated))


async def _run(
    settings: Settings,
    names: Sequence[str],
    host: str,
    base_port: int,
    handler: str,
    demo: bool,
    generated: bool,
    fleet: OpenClawFleet | None = None,
) -> int:
    from .api.app import create_app
    from .server import running

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    instances = [
        start_instance(n, host=host, port=base_port + i, handler=handler)
        for i, n in enumerate(names)
    ]
    try:
        await wait_ready(instances)
        api_key = settings.api_key.get_secret_value() if settings.api_key else ""
        async with running(
            create_app(settings, server_process=True), host=settings.host, port=settings.port
        ) as url:
            _banner(url, api_key, instances, generated=generated)
            if fleet is not None:
                print(fleet_banner(fleet), flush=True)
            if demo and instances:
                from .demo import run_demo

                await run_demo(url, api_key, instances)
            if demo and fleet is not None:
                from .openclaw.demo import run_openclaw_demo

                gateways = [gw.name for gw in fleet.gateways]
                await run_openclaw_demo(url, api_key, gateways, list(names))
            print("Ctrl-C stops the orchestrator and every instance.", flush=True)
            await stop.wait()
    finally:
        for inst in instances:
            inst.stop()
    return 0


# -- OpenClaw gateways (``up --openclaw N``) -------------------------------------------------


def _openclaw_cluster(
    settings: Settings,
    names: Sequence[str],
    host: str,
    base_port: int,
    handler: str,
    demo: bool,
    generated: bool,
    count: int,
) -> int:
    """The cluster plus ``count`` real OpenClaw gateways O1... sharing one stub model.

    The gateways start first (synchronously, from this main thread: they die with it), are
    registered as ``driver: "openclaw"`` instances with their own tokens, and stop after the
    orchestrator and the reference instances.
    """
    taken = [*names, *(spec.name for spec in settings.instances.static)]
    clash = sorted(set(gateway_names(count)).intersection(taken))
    if clash:
        raise ConfigError(f"instances {', '.join(clash)} clash with the OpenClaw gateway names")
    with local_fleet(count, base_port=base_port, taken=taken) as fleet:
        instances = settings.instances.model_copy(
            update={"static": [*settings.instances.static, *fleet.specs()]}
        )
        settings = settings.model_copy(update={"instances": instances})
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(
                _run(settings, names, host, base_port, handler, demo, generated, fleet)
            )


def _banner(url: str, api_key: str, instances: Sequence[LocalInstance], *, generated: bool) -> None:
    lines = [f"orchestrator listening on {url}"]
    for inst in instances:
        lines.append(f"  instance {inst.name:<4} {inst.url}  (pid {inst.process.pid})")
    lines.append("")
    origin = "generated for this run" if generated else "from the environment"
    lines.append(f"ORCHESTRATOR_API_KEY ({origin}):")
    lines.append(f"  export ORCHESTRATOR_API_KEY={api_key}")
    lines.append(f"  export ORCHESTRATOR_URL={url}")
    print("\n".join(lines), flush=True)
