"""A local fleet of OpenClaw gateways: the stub model plus N gateways that all use it.

``openclaw orchestrator up --openclaw N`` and the integration tests both start one::

    with start_fleet(["O1", "O2", "O3"], root=Path("/tmp/fleet")) as fleet:
        specs = fleet.specs()        # InstanceSpec(driver="openclaw", credentials=token)

Every gateway has its own state folder under ``root`` and its own random token. The stub
model runs as a child process (``python -m openclaw_orchestrator.devtools.openclaw.stub_model``).
While the fleet runs, ``root/fleet.json`` records each gateway's name, URL, state folder and
pid (never its token), so ``openclaw orchestrator skill install --gateway NAME`` finds it;
``up --openclaw N`` keeps its fleet in ``<data_dir>/openclaw-gateways/`` for that.
Start-up is synchronous (gateways are processes; call it before or outside an event loop,
from the main thread) and stops everything it started when anything fails.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from ...models import InstanceSpec
from ..child_server import ChildServer
from .gateway import (
    DEFAULT_READY_TIMEOUT,
    Gateway,
    die_with_parent,
    free_port,
    start_gateway,
    wait_ready,
    warm_up,
)
from .install import OpenClawInstall, ensure_openclaw
from .stub_model import DEFAULT_MODEL_ID

__all__ = [
    "FLEET_DIR",
    "FLEET_RECORD",
    "PORT_OFFSET",
    "FleetRecord",
    "OpenClawFleet",
    "StubModelProcess",
    "fleet_banner",
    "gateway_names",
    "local_fleet",
    "read_fleet_record",
    "start_fleet",
    "start_stub_model",
]

STUB_READY_TIMEOUT = 30.0
PORT_OFFSET = 100
"""``up --openclaw N`` puts gateway i on ``base_port + max(PORT_OFFSET, instances) + i``."""
FLEET_RECORD = "fleet.json"
"""The record of a running fleet, in its root folder."""
FLEET_DIR = "openclaw-gateways"
"""Where ``up --openclaw N`` keeps its fleet, in its data folder (removed when it stops)."""


class StubModelProcess(ChildServer):
    """The stub model server running as a child process (its OpenAI API is under ``/v1``)."""

    def is_ready(self) -> bool:
        """Whether it answers ``GET /v1/models``."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2.0)
        try:
            conn.request("GET", "/v1/models")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def wait_ready(self, timeout: float = STUB_READY_TIMEOUT) -> None:
        """Wait until it answers; RuntimeError if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"stub model exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"stub model not ready after {timeout:g}s")
            time.sleep(0.05)


def start_stub_model(
    *, host: str = "127.0.0.1", port: int = 0, model_id: str = DEFAULT_MODEL_ID
) -> StubModelProcess:
    """Start the stub model (port 0: a free one) and wait until it answers."""
    port = port or free_port(host)
    cmd = [sys.executable, "-m", "openclaw_orchestrator.devtools.openclaw.stub_model"]
    args = ["--host", host, "--port", str(port), "--model", model_id]
    process = subprocess.Popen(  # noqa: S603  # our own module, fixed argv
        [*cmd, *args], stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    stub = StubModelProcess(host, port, process)
    try:
        stub.wait_ready()
    except BaseException:
        stub.stop()
        raise
    return stub


@dataclass
class OpenClawFleet:
    """The stub model and the gateways using it; a context manager that stops them all."""

    stub: StubModelProcess
    gateways: list[Gateway]
    install: OpenClawInstall = field(repr=False)
    root: Path | None = None

    def __getitem__(self, name: str) -> Gateway:
        for gw in self.gateways:
            if gw.name == name:
                return gw
        raise KeyError(name)

    def specs(self, *, tags: Sequence[str] = ("openclaw",), **fields: Any) -> list[InstanceSpec]:
        """An instance entry per gateway (``driver: "openclaw"``, its token as credentials)."""
        return [gw.spec(tags=tags, **fields) for gw in self.gateways]

    def stop(self) -> None:
        """Stop every gateway (all asked at once, then awaited), then the stub model."""
        for gw in self.gateways:
            gw.request_stop()
        for gw in self.gateways:
            gw.stop()
        self.stub.stop()
        if self.root is not None:
            (self.root / FLEET_RECORD).unlink(missing_ok=True)

    def __enter__(self) -> OpenClawFleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class FleetRecord:
    """What ``root/fleet.json`` says about a running fleet: per gateway its URL, state
    folder and pid; the orchestrator's URL when known; the secret variables its gateways
    were given (names only)."""

    gateways: Mapping[str, Mapping[str, Any]]
    orchestrator_url: str | None = None
    secret_env: Sequence[str] = ()

    @classmethod
    def of(
        cls, gateways: Sequence[Gateway], orchestrator_url: str | None, secret_env: Sequence[str]
    ) -> FleetRecord:
        """The record of ``gateways`` as started."""
        entries = {
            gw.name: {"url": gw.url, "state_dir": str(gw.state_dir), "pid": gw.process.pid}
            for gw in gateways
        }
        return cls(entries, orchestrator_url, tuple(secret_env))

    def state_dir(self, name: str) -> Path:
        """Gateway ``name``'s state folder; KeyError when the fleet has no such gateway."""
        return Path(self.gateways[name]["state_dir"])

    def is_running(self, name: str) -> bool:
        """Whether gateway ``name``'s recorded process still exists."""
        try:
            os.kill(int(self.gateways[name]["pid"]), 0)
        except (ProcessLookupError, KeyError, ValueError, TypeError):
            return False
        except PermissionError:
            return True
        return True

    def write(self, root: Path) -> None:
        """Into ``root/fleet.json`` (a temporary file renamed into place)."""
        body = {
            "gateways": dict(self.gateways),
            "orchestrator_url": self.orchestrator_url,
            "secret_env": list(self.secret_env),
        }
        scratch = root / f".{FLEET_RECORD}.{os.getpid()}"
        scratch.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        scratch.replace(root / FLEET_RECORD)


def read_fleet_record(root: Path) -> FleetRecord | None:
    """The record of the fleet running under ``root``; None when there is none (no fleet
    there, or it has stopped); ValueError for a record that is not one."""
    try:
        raw = orjson.loads((root / FLEET_RECORD).read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{root / FLEET_RECORD}: not JSON: {exc}") from exc
    gateways = raw.get("gateways") if isinstance(raw, dict) else None
    if not isinstance(gateways, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("state_dir"), str)
        for entry in gateways.values()
    ):
        raise ValueError(f"{root / FLEET_RECORD}: not a fleet record")
    url = raw.get("orchestrator_url")
    secret_env = raw.get("secret_env") or []
    return FleetRecord(gateways, url if isinstance(url, str) else None, tuple(secret_env))


def start_fleet(
    names: Sequence[str],
    *,
    root: Path,
    ports: Sequence[int] | None = None,
    install: OpenClawInstall | None = None,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    tools_allow: Sequence[str] = (),
    warm: bool = True,
    secret_env: Mapping[str, SecretStr] | None = None,
    orchestrator_url: str | None = None,
) -> OpenClawFleet:
    """The stub model and one gateway per name (state under ``root/<name>``), ready and,
    with ``warm``, past their slow first agent turn. Installs OpenClaw on first use.

    ``secret_env`` goes into every gateway's environment (see :func:`start_gateway`);
    ``orchestrator_url``, when known, is recorded for ``skill install``."""
    if ports is not None and len(ports) != len(names):
        raise ValueError("ports: one per gateway name")
    install = install or ensure_openclaw()
    stub = start_stub_model()
    gateways: list[Gateway] = []
    try:
        for i, name in enumerate(names):
            gateways.append(
                start_gateway(
                    install,
                    name=name,
                    state_dir=root / name,
                    port=ports[i] if ports is not None else free_port(),
                    token=SecretStr(secrets.token_urlsafe(24)),
                    model_url=stub.url,
                    tools_allow=tools_allow,
                    secret_env=secret_env,
                )
            )
        wait_ready(gateways, timeout=ready_timeout)
        if warm:
            warm_up(gateways)
        record = FleetRecord.of(gateways, orchestrator_url, sorted(secret_env or {}))
        record.write(root)
    except BaseException:
        for gw in gateways:
            with contextlib.suppress(Exception):
                gw.stop()
        stub.stop()
        raise
    return OpenClawFleet(stub, gateways, install, root)


def gateway_names(count: int) -> list[str]:
    """``O1`` ... ``O<count>``: the names ``up --openclaw`` gives its gateways."""
    return [f"O{i}" for i in range(1, count + 1)]


@contextlib.contextmanager
def local_fleet(
    count: int,
    *,
    base_port: int,
    taken: Collection[str],
    data_dir: Path | None = None,
    orchestrator_url: str | None = None,
    secret_env: Mapping[str, SecretStr] | None = None,
) -> Iterator[OpenClawFleet]:
    """``count`` (>= 1) gateways O1... on loopback for ``openclaw orchestrator up --openclaw
    N``, their state in ``<data_dir>/openclaw-gateways/`` (a temporary folder without
    ``data_dir``), removed when they stop. ``taken`` holds the instance names already in
    use; a clash is a ValueError. ``secret_env`` and ``orchestrator_url``: see
    :func:`start_fleet`."""
    names = gateway_names(count)
    clash = sorted(set(names).intersection(taken))
    if count < 1 or clash:
        raise ValueError(
            f"--openclaw {count}: clashes with instances {', '.join(clash)}"
            if clash
            else f"--openclaw {count}: need at least one gateway"
        )
    first = base_port + max(PORT_OFFSET, len(taken))
    print(
        f"starting {count} OpenClaw gateway(s) (first use installs Node and openclaw into "
        "the cache; start-up takes about a minute)...",
        flush=True,
    )
    ports = [first + i for i in range(count)]
    options: dict[str, Any] = {"secret_env": secret_env, "orchestrator_url": orchestrator_url}
    with (
        _fleet_root(data_dir) as root,
        start_fleet(names, root=root, ports=ports, **options) as fleet,
    ):
        yield fleet


@contextlib.contextmanager
def _fleet_root(data_dir: Path | None) -> Iterator[Path]:
    """``<data_dir>/openclaw-gateways`` (what a crashed run left there removed first), or a
    temporary folder; removed afterwards either way."""
    if data_dir is None:
        with tempfile.TemporaryDirectory(prefix="openclaw-gateways-") as scratch:
            yield Path(scratch)
        return
    root = data_dir / FLEET_DIR
    with contextlib.suppress(ValueError):
        record = read_fleet_record(root)
        if record is not None and any(map(record.is_running, record.gateways)):
            raise RuntimeError(f"gateways of another run are still running from {root}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fleet_banner(fleet: OpenClawFleet) -> str:
    """Where the gateways and their stub model listen (never their tokens)."""
    lines = [f"  stub model    {fleet.stub.url}/v1  (pid {fleet.stub.process.pid})"]
    for gw in fleet.gateways:
        lines.append(
            f"  gateway {gw.name:<4}  {gw.url}  (pid {gw.process.pid}, state {gw.state_dir})"
        )
    return "\n".join(lines)
