"""A local fleet of OpenClaw gateways: the stub model plus N gateways that all use it.

``openclaw orchestrator up --openclaw N`` and the integration tests both start one::

    with start_fleet(["O1", "O2", "O3"], root=Path("/tmp/fleet")) as fleet:
        specs = fleet.specs()        # InstanceSpec(driver="openclaw", credentials=token)

Every gateway has its own state folder under ``root`` and its own random token. The stub
model runs as a child process (``python -m openclaw_orchestrator.devtools.openclaw.stub_model``).
Start-up is synchronous (gateways are processes; call it before or outside an event loop,
from the main thread) and stops everything it started when anything fails.
"""

from __future__ import annotations

import contextlib
import http.client
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    "PORT_OFFSET",
    "OpenClawFleet",
    "StubModelProcess",
    "fleet_banner",
    "gateway_names",
    "local_fleet",
    "start_fleet",
    "start_stub_model",
]

STUB_READY_TIMEOUT = 30.0
PORT_OFFSET = 100
"""``up --openclaw N`` puts gateway i on ``base_port + max(PORT_OFFSET, instances) + i``."""


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

    def __enter__(self) -> OpenClawFleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_fleet(
    names: Sequence[str],
    *,
    root: Path,
    ports: Sequence[int] | None = None,
    install: OpenClawInstall | None = None,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    tools_allow: Sequence[str] = (),
    warm: bool = True,
) -> OpenClawFleet:
    """The stub model and one gateway per name (state under ``root/<name>``), ready and,
    with ``warm``, past their slow first agent turn. Installs OpenClaw on first use."""
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
                )
            )
        wait_ready(gateways, timeout=ready_timeout)
        if warm:
            warm_up(gateways)
    except BaseException:
        for gw in gateways:
            with contextlib.suppress(Exception):
                gw.stop()
        stub.stop()
        raise
    return OpenClawFleet(stub, gateways, install)


def gateway_names(count: int) -> list[str]:
    """``O1`` ... ``O<count>``: the names ``up --openclaw`` gives its gateways."""
    return [f"O{i}" for i in range(1, count + 1)]


@contextlib.contextmanager
def local_fleet(count: int, *, base_port: int, taken: Collection[str]) -> Iterator[OpenClawFleet]:
    """``count`` (>= 1) gateways O1... on loopback for ``openclaw orchestrator up --openclaw
    N``, their state in a temporary folder removed when they stop. ``taken`` holds the
    instance names already in use; a clash is a ValueError."""
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
    with tempfile.TemporaryDirectory(prefix="openclaw-gateways-") as root:
        ports = [first + i for i in range(count)]
        with start_fleet(names, root=Path(root), ports=ports) as fleet:
            yield fleet


def fleet_banner(fleet: OpenClawFleet) -> str:
    """Where the gateways and their stub model listen (never their tokens)."""
    lines = [f"  stub model    {fleet.stub.url}/v1  (pid {fleet.stub.process.pid})"]
    for gw in fleet.gateways:
        lines.append(
            f"  gateway {gw.name:<4}  {gw.url}  (pid {gw.process.pid}, state {gw.state_dir})"
        )
    return "\n".join(lines)
