"""The composition root: builds the Orchestrator with its drivers and shared resources.

One ``aiohttp.ClientSession`` per process, opened here and closed here, shared by every
driver so connections to instances are pooled and kept alive across requests.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp

from .drivers.base import InstanceDriver
from .drivers.openclaw import OpenClawDriver
from .drivers.worker import WorkerDriver
from .service import Orchestrator, Reducer
from .settings import ConfigError, Settings
from .stores.base import Store
from .stores.sql import SqlStore, sqlite_url
from .stores.sqlite_writer import SqliteStore, sqlite_path

__all__ = ["build_drivers", "client_session", "load_reducers", "open_orchestrator", "open_store"]

POOL_LIMIT = 1024
KEEPALIVE_SECONDS = 30.0


def load_reducers(specs: Mapping[str, str]) -> dict[str, Reducer]:
    """Import the configured ``name -> module:function`` reducers (config only, never a
    request: a request can only *name* a reducer that is loaded here)."""
    reducers: dict[str, Reducer] = {}
    for name, spec in specs.items():
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ConfigError(f"reducers.{name}: {spec!r} is not 'module:function'")
        try:
            func = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"reducers.{name}: cannot load {spec!r}: {exc}") from exc
        if not callable(func):
            raise ConfigError(f"reducers.{name}: {spec!r} is not callable")
        reducers[name] = func
    return reducers


def client_session() -> aiohttp.ClientSession:
    """The process-wide outbound session: big keep-alive pool, no cookies, no decompression
    (instance replies are small JSON), timeouts set per request."""
    connector = aiohttp.TCPConnector(
        limit=POOL_LIMIT, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
    )


def build_drivers(session: aiohttp.ClientSession) -> dict[str, InstanceDriver]:
    """One driver per instance kind, all sharing ``session``: ``worker`` (our instance
    protocol) and ``openclaw`` (real OpenClaw gateways)."""
    return {"worker": WorkerDriver(session), "openclaw": OpenClawDriver(session)}


def open_store(settings: Settings) -> Store:
    """The configured store: ``database_url``, else SQLite under ``data_dir``. A SQLite
    file gets :class:`SqliteStore` (plain ``sqlite3``, one writer thread, group commit);
    PostgreSQL and ``:memory:`` get :class:`SqlStore` (SQLAlchemy)."""
    url = settings.database_url or sqlite_url(settings.data_dir)
    if sqlite_path(url) is not None:
        return SqliteStore(url)
    return SqlStore(url)


@asynccontextmanager
async def open_orchestrator(settings: Settings) -> AsyncIterator[Orchestrator]:
    """An Orchestrator with its HTTP session, store, prober and sweeper running; everything
    closed on exit."""
    reducers = load_reducers(settings.reducers)
    store = open_store(settings)
    await store.open()
    try:
        async with client_session() as session:
            drivers = build_drivers(session)
            orchestrator = Orchestrator(settings, drivers=drivers, reducers=reducers, store=store)
            try:
                async with orchestrator:
                    yield orchestrator
            finally:
                for driver in drivers.values():
                    await driver.aclose()
    finally:
        await store.aclose()
