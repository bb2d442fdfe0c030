"""Replicas in one test process: each an :class:`Orchestrator` with its own
:class:`PostgresStore` (its own pool) and :class:`SharedFleet` on one fresh database, and
reference instances that count the probes they answer. What only separate processes show
(``kill -9``) is in ``tests/replicas/test_replicas_fleet.py``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import HandlerContext, echo
from openclaw_orchestrator.domain.health import HealthPolicy
from openclaw_orchestrator.server.composition import build_drivers, client_session
from openclaw_orchestrator.server.core.clock import Clock
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.server.core.shared_fleet import SharedFleet
from openclaw_orchestrator.server.drivers.worker import DEFAULT_HEALTH_PATH
from openclaw_orchestrator.server.hosting import BackgroundServer, bind_socket
from openclaw_orchestrator.server.stores.fleet import FleetStore
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.settings import Settings

__all__ = [
    "POLL_INTERVAL",
    "ProbedInstance",
    "Replica",
    "Waited",
    "probed_instance",
    "replicas",
    "wait_until",
]

POLL_INTERVAL = 0.1
WAIT_LIMIT = 15.0  # how long wait_until looks before the test fails (never a pass criterion)


@dataclass
class Replica:
    """One in-process replica: its orchestrator, store and fleet."""

    index: int
    orchestrator: Orchestrator
    store: PostgresStore
    fleet: SharedFleet

    def has(self, name: str) -> bool:
        """Whether ``name`` is in this replica's registry."""
        return name in self.orchestrator.registry

    def lacks(self, name: str) -> bool:
        """Whether ``name`` is not in this replica's registry."""
        return not self.has(name)

    def is_in(self, name: str, state: str) -> bool:
        """Whether ``name``'s health state here is ``state``."""
        return self.state(name) == state

    def state(self, name: str) -> str | None:
        """``name``'s health state here, or None when unknown here."""
        registry = self.orchestrator.registry
        return registry.get(name).health.state.value if name in registry else None


class ProbeCounter:
    """ASGI wrapper counting the health checks (probes) an instance answers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.probes = 0
        self.times: list[float] = []  # time.monotonic() of each probe

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == DEFAULT_HEALTH_PATH:
            self.probes += 1
            self.times.append(time.monotonic())
        await self.app(scope, receive, send)


async def slow_echo(payload: Any, context: HandlerContext) -> Any:
    """Echo, after ``{"sleep": s}`` seconds when asked (a task that outlives its deadline)."""
    if isinstance(payload, dict) and isinstance(payload.get("sleep"), int | float):
        await asyncio.sleep(payload["sleep"])
    return await echo(payload, context)


@dataclass
class ProbedInstance:
    """A reference instance on a fixed port, counting probes; stoppable and restartable."""

    name: str
    port: int
    counter: ProbeCounter
    server: BackgroundServer | None = None

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def probes(self) -> int:
        """Probes answered so far."""
        return self.counter.probes

    async def start(self) -> None:
        """Serve on its port (again)."""
        sock = bind_socket("127.0.0.1", self.port)
        self.server = BackgroundServer(self.counter, sock=sock)
        await self.server.start()

    async def stop(self) -> None:
        """Stop serving: connections are refused until :meth:`start`."""
        if self.server is not None:
            self.server.request_stop()
            await self.server.wait_stopped()
            self.server = None


@contextlib.asynccontextmanager
async def probed_instance(name: str) -> AsyncIterator[ProbedInstance]:
    """A running :class:`ProbedInstance` on a free port, stopped at the end."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    instance = ProbedInstance(name, port, ProbeCounter(create_instance_app(name, slow_echo)))
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@contextlib.asynccontextmanager
async def replicas(
    database_url: str,
    config: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    count: int = 3,
    clocks: Mapping[int, Clock] | None = None,
) -> AsyncIterator[list[Replica]]:
    """``count`` started replicas on ``database_url``; ``config`` is every replica's
    settings (or one per replica); ``clocks`` gives a replica a clock of its own."""
    configs = [config] * count if isinstance(config, Mapping) else list(config)
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for index, settings_data in enumerate(configs):
            settings = Settings.model_validate(settings_data)
            store = PostgresStore(database_url)
            await store.open()
            stack.push_async_callback(store.aclose)
            session = await stack.enter_async_context(client_session())
            clock = (clocks or {}).get(index, time.monotonic)
            policy = HealthPolicy(**settings.health.model_dump())
            fleet = SharedFleet(
                FleetStore(store.engine), store, policy, clock=clock, poll_interval=POLL_INTERVAL
            )
            orchestrator = Orchestrator(
                settings, drivers=build_drivers(session), store=store, clock=clock, fleet=fleet
            )
            await stack.enter_async_context(orchestrator)
            started.append(Replica(index, orchestrator, store, fleet))
        yield started


@dataclass(frozen=True)
class Waited:
    """How long a condition took to hold, in seconds and in polls of the watched replica."""

    seconds: float
    polls: int


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]], *, fleet: SharedFleet | None = None
) -> Waited:
    """Poll ``check`` every 10 ms until true; how long that took (wall seconds and, given a
    ``fleet``, how many of its polls completed meanwhile). Fails after ``WAIT_LIMIT``."""
    started, polls = time.monotonic(), None if fleet is None else fleet.polls
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            elapsed = time.monotonic() - started
            return Waited(elapsed, 0 if fleet is None or polls is None else fleet.polls - polls)
        if time.monotonic() - started > WAIT_LIMIT:
            raise AssertionError(f"not true after {WAIT_LIMIT} s")
        await asyncio.sleep(0.01)
