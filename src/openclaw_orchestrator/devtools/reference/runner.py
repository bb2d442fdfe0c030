"""Running a reference instance in the foreground, optionally self-registering.

With a ``register_url`` the instance announces itself to an orchestrator in its lifespan:
``POST /api/cluster/register`` at startup, the same POST every ``heartbeat_ttl / 3``
seconds as its heartbeat, and ``DELETE /api/cluster/instances/{name}`` on shutdown. A
failed call is logged and retried at the next beat, so an instance may start before its
orchestrator does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Self, Unpack

import aiohttp
import uvicorn
from starlette.applications import Starlette

from ...models import is_valid_name
from ...sdk.closing import AsyncClosesOnExit
from ...server.gc_tuning import settle_after_startup
from ...server.hosting import uvicorn_config
from ...server.logs import configure_logging, flush_logs, get_logger
from ...server.serve import listen_socket
from ...server.tasks import cancel_and_wait
from .app import AppLifespan, InstanceOptions, create_instance_app
from .handlers import Handler, resolve_handler

__all__ = [
    "DEFAULT_HEARTBEAT_TTL",
    "Registrar",
    "Registration",
    "registration_lifespan",
    "run_instance",
]

DEFAULT_HEARTBEAT_TTL = 30.0
REGISTER_PATH = "/api/cluster/register"
INSTANCES_PATH = "/api/cluster/instances"
MAX_CALL_TIMEOUT = 5.0
"""Seconds one register/deregister call may take (less when the heartbeat is faster)."""

_log = get_logger("reference.registrar")


@dataclass(frozen=True, slots=True)
class Registration:
    """Who this instance is and where its orchestrator lives; secrets stay out of the repr.

    ``token`` is the instance's own bearer token, sent as ``credentials`` so the orchestrator
    can call it back; ``api_key`` authenticates this instance to the orchestrator.
    """

    register_url: str
    name: str
    url: str
    api_key: str | None = field(default=None, repr=False)
    heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.heartbeat_ttl <= 0:
            raise ValueError("heartbeat_ttl must be greater than zero")

    @property
    def interval(self) -> float:
        """Seconds between heartbeats: three chances before the TTL runs out."""
        return self.heartbeat_ttl / 3

    def body(self) -> dict[str, Any]:
        """The JSON of ``POST /api/cluster/register``."""
        body: dict[str, Any] = {
            "name": self.name,
            "url": self.url,
            "driver": "worker",
            "heartbeat_ttl": self.heartbeat_ttl,
        }
        if self.token:
            body["credentials"] = self.token
        return body

    def headers(self) -> dict[str, str]:
        """``Authorization`` for the orchestrator's API, when there is a key."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class Registrar(AsyncClosesOnExit):
    """Registers at entry, heartbeats in a task, deregisters at exit; never raises on I/O.

    It owns its ``aiohttp.ClientSession`` unless one is passed in.
    """

    def __init__(
        self, registration: Registration, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.registration = registration
        self._session = session
        self._owns_session = session is None
        self._task: asyncio.Task[None] | None = None
        self.beats = 0
        self.failures = 0

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        await self.register()
        self._task = asyncio.create_task(self._heartbeat(), name="instance-heartbeat")
        return self

    async def register(self) -> bool:
        """One ``POST /api/cluster/register``; whether the orchestrator accepted it."""
        reg = self.registration
        url = reg.register_url.rstrip("/") + REGISTER_PATH
        ok = await self._call("POST", url, json=reg.body(), event="instance.register_failed")
        if ok and not self.beats:
            _log.info("instance.registered", instance=reg.name, url=reg.url, at=reg.register_url)
        self.beats += ok
        self.failures += not ok
        return ok

    async def deregister(self) -> bool:
        """``DELETE /api/cluster/instances/{name}``; a 404 (already gone) counts as done."""
        reg = self.registration
        url = f"{reg.register_url.rstrip('/')}{INSTANCES_PATH}/{reg.name}"
        return await self._call("DELETE", url, event="instance.deregister_failed", gone_ok=True)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.registration.interval)
            await self.register()

    async def _call(
        self, method: str, url: str, *, event: str, json: Any = None, gone_ok: bool = False
    ) -> bool:
        """One call to the orchestrator; failures are logged (never the key), not raised."""
        if self._session is None:
            raise RuntimeError("Registrar used outside 'async with'")
        timeout = aiohttp.ClientTimeout(
            total=min(MAX_CALL_TIMEOUT, max(1.0, self.registration.interval))
        )
        headers = self.registration.headers()
        try:
            async with self._session.request(
                method, url, json=json, headers=headers, timeout=timeout
            ) as resp:
                if resp.ok or (gone_ok and resp.status == 404):
                    return True
                detail = (await resp.text())[:200]
                _log.warning(
                    event, instance=self.registration.name, status=resp.status, detail=detail
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            _log.warning(
                event, instance=self.registration.name, error=f"{type(exc).__name__}: {exc}"
            )
        return False

    async def aclose(self) -> None:
        """Stop the heartbeat, deregister, and close the session if it is ours."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
            await self.deregister()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def __repr__(self) -> str:
        state = "beating" if self._task is not None else "idle"
        where = f"{self.registration.name} -> {self.registration.register_url}"
        return f"<Registrar {where} {state} beats={self.beats} failures={self.failures}>"


def registration_lifespan(registration: Registration) -> AppLifespan:
    """An app lifespan that keeps ``registration`` alive while the app serves."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with Registrar(registration):
                yield
        finally:  # the deregistration's lines, before uvicorn re-raises SIGTERM
            flush_logs()

    return lifespan


def local_url(host: str, port: int) -> str:
    """How others reach ``host:port``; a wildcard host is announced as loopback."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104  # only compared, never bound here
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_instance(
    *,
    name: str,
    host: str = "127.0.0.1",
    port: int,
    handler: str | Handler = "echo",
    shard: str | None = None,
    register_url: str | None = None,
    api_key: str | None = None,
    public_url: str | None = None,
    heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL,
    log_level: str = "warning",
    log_format: str = "json",
    **options: Unpack[InstanceOptions],
) -> None:
    """Serve instance ``name`` on ``host:port`` in the foreground until SIGINT/SIGTERM.

    ``handler`` is ``echo``, ``search`` (``shard`` ``"i/n"`` optional) or ``module:function``.
    Port 0 picks a free port (announced correctly when registering). Raises ValueError for a
    bad name, handler or shard before anything is bound. Once bound, one line on stdout says
    where: ``instance A listening on http://127.0.0.1:18801`` (as ``up`` announces the
    orchestrator). Logs go to stderr (``log_format`` ``json`` or ``console``). ``options``
    (token, faults, limits) are :func:`~.app.create_instance_app`'s.
    """
    if not is_valid_name(name):
        raise ValueError(f"instance name {name!r}: letters, digits, '_', '.', ':' (max 64)")
    fn = resolve_handler(handler, shard=shard) if isinstance(handler, str) else handler
    configure_logging(log_level, log_format)
    sock = listen_socket(host, port)  # a taken port: ListenError, one line and exit 2
    try:
        here = local_url(host, sock.getsockname()[1])
        lifespan = None
        if register_url:
            url = public_url or here
            registration = Registration(
                register_url,
                name,
                url,
                api_key=api_key,
                heartbeat_ttl=heartbeat_ttl,
                token=options.get("token"),
            )
            lifespan = registration_lifespan(registration)
        app = create_instance_app(name, fn, lifespan=lifespan, **options)
        server = uvicorn.Server(uvicorn_config(app, log_level=log_level))
        settle_after_startup()  # this process serves until it stops (see gc_tuning)
        print(f"instance {name} listening on {here}", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
