"""Stores that cannot write, for real: a full tmpfs under SqliteStore's file and under
PostgresStore's tablespace (one test, both stores); SQLite's free-space reserve; PostgreSQL
connections reset, refused and terminated.

Each failure surfaces as ``StorageFullError`` (507) or ``StorageUnavailableError`` (503),
never as a driver's exception; the store says so in ``status()``, refuses in
``check_writable()``, and becomes ok again by itself once the fault is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from openclaw_orchestrator.errors import StorageFullError, StorageUnavailableError
from openclaw_orchestrator.server.stores.base import Store
from openclaw_orchestrator.server.stores.health import DiskSpace, StoreState, probe_delay
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.server.stores.postgres import storage_error as postgres_storage_error
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url
from openclaw_orchestrator.server.stores.sqlite import storage_error as sqlite_storage_error

from ..storage_faults import (
    TcpRelay,
    drop_database,
    fill_disk,
    postgres_database,
    terminate_backends,
    tmpfs,
)
from .test_store_contract import message, session

MIB = 1024 * 1024


async def wait_ok(store: Store, timeout: float = 5.0) -> None:
    """Wait until the store has found its way back by itself."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not store.status().is_ok:
        assert loop.time() < deadline, f"still {store.status()} after {timeout}s"
        await asyncio.sleep(0.05)


def incompressible(n: int) -> str:
    """``n`` characters that no page compression can shrink much."""
    return secrets.token_hex(n // 2)


@pytest.mark.parametrize(
    ("probe", "delay"), [(1, 0.0), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 2.0), (500, 2.0)]
)
def test_probe_delay_is_immediate_then_doubles_to_the_cap(probe: int, delay: float) -> None:
    """The first probe runs at once (a blip is over fast), then waits double, capped."""
    assert probe_delay(probe, base=0.2, cap=2.0) == pytest.approx(delay)


def test_storage_errors_are_told_apart(tmp_path: Path) -> None:
    """Disk full, unusable file, refused socket and everything else map apart, in each store."""
    space = DiskSpace(str(tmp_path), min_free_bytes=0)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # what sqlite3 sets when SQLITE_FULL is raised
    assert isinstance(sqlite_storage_error(full, space), StorageFullError)
    assert isinstance(sqlite_storage_error(OSError(errno.ENOSPC, "full"), space), StorageFullError)
    assert type(sqlite_storage_error(OSError(errno.EIO, "io"), space)) is StorageUnavailableError
    assert sqlite_storage_error(sqlite3.IntegrityError("taken"), space) is None
    assert sqlite_storage_error(ValueError("a bug"), space) is None
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    assert type(postgres_storage_error(refused)) is StorageUnavailableError
    assert postgres_storage_error(ValueError("a bug")) is None


# -- SQLite on a disk that fills up --------------------------------------------------------


@contextlib.asynccontextmanager
async def sqlite_on(disk: Path, *, min_free_bytes: int) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(sqlite_url(disk / "data"), min_free_bytes=min_free_bytes)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def test_sqlite_refuses_before_writing_when_free_space_is_below_the_reserve(
    tmp_path: Path,
) -> None:
    """With less than ``min_free_bytes`` free, check_writable() refuses (507) before any
    write is tried, status() says full without any traffic, and freeing space ends it."""
    with tmpfs(tmp_path / "disk", 4 * MIB) as disk:
        async with sqlite_on(disk, min_free_bytes=MIB) as store:
            await store.create_session(session())  # writes work (free space not read yet)
            filler = fill_disk(disk, leave=MIB // 2)
            status = store.status()
            assert status.state is StoreState.FULL
            assert status.reason is not None
            assert "bytes free" in status.reason
            with pytest.raises(StorageFullError):
                store.check_writable()
            filler.unlink()
            await wait_ok(store)
            store.check_writable()


# -- PostgreSQL ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def postgres_store(url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def test_postgres_terminated_connections_are_unavailable_then_recover() -> None:
    """PostgreSQL ending every connection (as on restart) is StorageUnavailableError (503),
    not a driver error, and the store reconnects by itself."""
    async with postgres_database() as url, postgres_store(url) as store:
        await store.create_session(session())
        assert await terminate_backends(url) >= 1
        with pytest.raises(StorageUnavailableError) as caught:
            await store.get_session("s1")
        assert type(caught.value) is StorageUnavailableError
        assert store.status().state is StoreState.UNAVAILABLE
        await wait_ok(store)
        assert await store.get_session("s1") is not None


async def test_postgres_unreachable_is_unavailable_everywhere_and_recovers_by_itself() -> None:
    """With the connection to PostgreSQL cut (resets, then refused connects), every store
    operation is StorageUnavailableError, check_writable() refuses with a Retry-After, and
    once the network is back the store recovers without a restart, losing nothing."""
    async with postgres_database() as url:
        parsed = make_url(url)
        relay = TcpRelay(parsed.port or 5432)
        await relay.start()
        try:
            async with postgres_store(parsed.set(port=relay.port).render_as_string(False)) as s:
                await s.create_session(session())
                first = await s.append(session(), message(1))
                await relay.cut()
                with pytest.raises(StorageUnavailableError):
                    await s.get_session("s1")
                for operation in (
                    lambda: s.append(first, message(2)),
                    lambda: s.create_session(session("s2")),
                    lambda: s.list_sessions(),
                    lambda: s.history("s1"),
                    lambda: s.set_state("s1", "closed", closed_at=2000.0),
                    lambda: s.expire_idle(3000.0),
                ):
                    with pytest.raises(StorageUnavailableError):
                        await operation()
                with pytest.raises(StorageUnavailableError) as caught:
                    s.check_writable()
                assert caught.value.retry_after is not None
                assert caught.value.retry_after >= 1
                await asyncio.sleep(0.5)  # probes keep failing while it is cut
                assert s.status().state is StoreState.UNAVAILABLE
                await relay.restore()
                await wait_ok(s)
                await s.append(first, message(2))
                assert [m.seq for m in await s.history("s1")] == [1, 2]
        finally:
            await relay.cut()


@contextlib.asynccontextmanager
async def postgres_on_small_disk(size: int) -> AsyncIterator[tuple[str, Path]]:
    """A database whose files live in a tablespace on a ``size``-byte tmpfs (the server
    runs on this machine as user postgres); yields its URL and the mount point."""
    async with postgres_database() as url:
        mount = Path(tempfile.mkdtemp(prefix="orchestrator-pg-disk-"))
        try:
            with tmpfs(mount, size):
                location = _postgres_folder(mount)
                async with _tablespace_database(url, location) as db_url:
                    yield db_url, mount
        finally:
            os.rmdir(mount)


def _postgres_folder(mount: Path) -> Path:
    """A folder on ``mount`` that the server (user postgres) owns; skips where it cannot."""
    mount.chmod(0o755)
    location = mount / "tablespace"
    location.mkdir()
    try:
        shutil.chown(location, "postgres", "postgres")
    except (LookupError, PermissionError) as exc:
        pytest.skip(f"cannot hand a folder to user postgres: {exc}")
    return location


@contextlib.asynccontextmanager
async def _tablespace_database(url: str, location: Path) -> AsyncIterator[str]:
    parsed = make_url(url)
    name = f"{parsed.database}_disk"
    admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    space = f"ts_{secrets.token_hex(4)}"
    try:
        async with admin.connect() as conn:
            try:
                await conn.execute(text(f"CREATE TABLESPACE {space} LOCATION '{location}'"))
            except Exception as exc:  # the server is elsewhere, or cannot see this folder
                pytest.skip(f"PostgreSQL cannot use a tablespace here: {exc!s:.200}")
            await conn.execute(text(f'CREATE DATABASE "{name}" TABLESPACE {space}'))
        try:
            yield parsed.set(database=name).render_as_string(hide_password=False)
        finally:
            await drop_database(admin, name)
            async with admin.connect() as conn:
                await conn.execute(text(f"DROP TABLESPACE IF EXISTS {space}"))
    finally:
        await admin.dispose()


# -- both stores on a disk that fills up ---------------------------------------------------


@contextlib.asynccontextmanager
async def store_on_small_disk(kind: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Path]]:
    """A store of ``kind`` whose files live on a small tmpfs; yields it and the mount. The
    SQLite store keeps a reserve that a full disk is below, as the server's default does."""
    if kind == "sqlite":
        with tmpfs(tmp_path / "disk", 4 * MIB) as disk:
            async with sqlite_on(disk, min_free_bytes=64 * 1024) as store:
                yield store, disk
        return
    async with postgres_on_small_disk(24 * MIB) as (url, disk), postgres_store(url) as pg:
        yield pg, disk


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_full_disk_is_storage_full_until_space_is_freed(kind: str, tmp_path: Path) -> None:
    """A commit that hits a full disk is StorageFullError (507, Retry-After); the store
    stays full while the disk is (a small probe write that fits does not fool it), reads
    go on, and it writes again by itself once space is freed; nothing committed is lost."""
    async with store_on_small_disk(kind, tmp_path) as (store, disk):
        await store.create_session(session())
        first = await store.append(session(), message(1))
        filler = fill_disk(disk)
        big = incompressible(MIB // 2)
        try:
            with pytest.raises(StorageFullError) as caught:
                await store.append(first, message(2, data=big))
            assert caught.value.status == 507
            assert caught.value.retry_after is not None
            assert caught.value.retry_after >= 1
            await asyncio.sleep(0.5)  # probes run and fail
            assert store.status().state is StoreState.FULL
            with pytest.raises(StorageFullError):
                store.check_writable()
            assert await store.get_session("s1") == first
        finally:
            filler.unlink()
        await wait_ok(store)
        await store.append(first, message(2, data=big))
        assert [m.seq for m in await store.history("s1")] == [1, 2]
