"""The composition root: builds the Orchestrator with its drivers and shared resources.

One ``aiohttp.ClientSession`` per process, opened here and closed here, shared by every
driver so connections to instances are pooled and kept alive across requests.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import aiohttp
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from ..domain.addresses import AddressPolicy
from ..settings import DEFAULT_MAX_CONNECTIONS, ConfigError, InstancesSettings, Settings
from .core.orchestrator import Orchestrator, Reducer
from .core.shared_fleet import shared_fleet
from .drivers.address_guard import GuardedResolver, guard_trace_config
from .drivers.base import InstanceDriver
from .drivers.lean import DEFAULT_KEEPALIVE
from .drivers.openclaw import OpenClawDriver
from .drivers.worker import WorkerDriver
from .observability.observer import OFF, Observer
from .shared_state import shared_state
from .stores.base import Store
from .stores.postgres import PostgresStore
from .stores.sqlite import SqliteStore, sqlite_path, sqlite_url

__all__ = ["build_drivers", "client_session", "load_reducers", "open_orchestrator", "open_store"]

POOL_LIMIT = 1024
KEEPALIVE_SECONDS = DEFAULT_KEEPALIVE  # under the instances' own idle timeout (drivers.lean)


def load_reducers(specs: Mapping[str, str]) -> dict[str, Reducer]:
    """Import the configured ``name -> module:function`` reducers (config only, never a
    request: a request can only *name* a reducer that is loaded here).

    Raises :class:`ConfigError` naming the reducer for anything that cannot be loaded, even
    an exception raised by the module while it imports; ``serve`` and ``up`` call this before
    they listen (:func:`~.runner.preflight`), so a bad reducer is one error line."""
    reducers: dict[str, Reducer] = {}
    for name, spec in specs.items():
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ConfigError(f"reducers.{name}: {spec!r} is not 'module:function'")
        try:
            func = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # any failure importing user code is a configuration error
            reason = f"{type(exc).__name__}: {exc}"
            raise ConfigError(f"reducers.{name}: cannot load {spec!r}: {reason}") from exc
        if not callable(func):
            raise ConfigError(f"reducers.{name}: {spec!r} is not callable")
        reducers[name] = func
    return reducers


def client_session(
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    address_policy: AddressPolicy | None = None,
) -> aiohttp.ClientSession:
    """The process-wide outbound session: big keep-alive pool, at most ``max_connections``
    per instance address (``instances.max_connections``), no cookies, no decompression
    (instance replies are small JSON), timeouts set per request, and every connect checked
    by ``address_policy`` (``instances.allow``/``deny``; the default deny list when None)."""
    policy = AddressPolicy.parse() if address_policy is None else address_policy
    connector = aiohttp.TCPConnector(
        limit=POOL_LIMIT,
        limit_per_host=max_connections,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ttl_dns_cache=300,
        resolver=GuardedResolver(policy),
    )
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=[guard_trace_config(policy)],
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
    )


def build_drivers(
    session: aiohttp.ClientSession, instances: InstancesSettings | None = None
) -> dict[str, InstanceDriver]:
    """One driver per instance kind, all sharing ``session``: ``worker`` (our instance
    protocol, over the ``instances.transport`` client) and ``openclaw`` (real OpenClaw
    gateways), with the reply and connection limits of ``instances``."""
    limits = instances or InstancesSettings()
    return {
        "worker": WorkerDriver(
            session,
            max_reply_bytes=limits.max_reply_bytes,
            transport=limits.transport,
            max_connections=limits.max_connections,
            address_policy=limits.address_policy(),
        ),
        "openclaw": OpenClawDriver(session, max_reply_bytes=limits.max_reply_bytes),
    }


def open_store(settings: Settings, *, observer: Observer = OFF) -> Store:
    """The configured store: ``database_url``, else SQLite under ``data_dir``. A SQLite
    file gets :class:`SqliteStore`, PostgreSQL :class:`PostgresStore`; anything else
    (another database, SQLite ``:memory:``) is a :class:`ConfigError` naming the setting.
    Its commits are counted by ``observer`` (when metrics are on)."""
    url = settings.database_url or sqlite_url(settings.data_dir)
    expected = "a SQLite file (sqlite:///path/to/orchestrator.db) or PostgreSQL "
    expected += "(postgresql+asyncpg://user@host/db)"
    try:
        parsed = make_url(url)
    except ArgumentError:  # its message repeats the URL, password and all
        raise ConfigError(f"database_url: not a database URL; expected {expected}") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return PostgresStore(
            url,
            transaction_pooling=settings.database_transaction_pooling,
            on_commit=_commit_hook(observer, PostgresStore.ENGINE),
        )
    if sqlite_path(url) is not None:
        return SqliteStore(
            url,
            min_free_bytes=settings.store_reserve_bytes,
            on_commit=_commit_hook(observer, SqliteStore.ENGINE),
        )
    if backend == "sqlite":
        raise ConfigError(f"database_url: SQLite needs a file, not {parsed.database!r}")
    raise ConfigError(f"database_url: {backend!r} is not {expected}")


def _commit_hook(observer: Observer, engine: str) -> Callable[[float, int], None] | None:
    """``observer.store_commit`` for ``engine``; None (no call at all) with metrics off."""
    if observer.metrics is None:
        return None
    return functools.partial(observer.store_commit, engine)


@asynccontextmanager
async def open_orchestrator(
    settings: Settings, *, observer: Observer = OFF
) -> AsyncIterator[Orchestrator]:
    """An Orchestrator with its HTTP session, store, prober and sweeper running; everything
    closed on exit. ``observer`` (the app's metrics and traces) watches every part; its
    ``replica`` id is the shared fleet's holder, so metrics name who owns what."""
    reducers = load_reducers(settings.reducers)
    store = open_store(settings, observer=observer)
    await store.open()
    try:
        limits = settings.instances
        async with client_session(
            max_connections=limits.max_connections, address_policy=limits.address_policy()
        ) as session:
            drivers = build_drivers(session, limits)
            fleet = shared_fleet(store, settings, holder=observer.replica or None)
            orchestrator = Orchestrator(
                settings,
                drivers=drivers,
                reducers=reducers,
                store=store,
                fleet=fleet,
                observer=observer,
            )
            try:
                async with orchestrator, shared_state(store, orchestrator):
                    yield orchestrator
            finally:
                for driver in drivers.values():
                    await driver.aclose()
    finally:
        await store.aclose()
