"""Real storage faults for tests: a small tmpfs that can be filled, a loopback TCP relay
that can be cut (a real socket failure between the store and PostgreSQL), and a private
database on the shared PostgreSQL server.

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted the test skips with the
reason. A test needing PostgreSQL skips when no server answers, and fails in CI (CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .conftest import IN_CI

POSTGRES_URL = os.environ.get(
    "ORCHESTRATOR_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
CHUNK = 64 * 1024


@contextlib.contextmanager
def tmpfs(folder: Path, size_bytes: int) -> Iterator[Path]:
    """``folder`` as a fresh tmpfs of ``size_bytes``, unmounted on exit; skips the test
    when mounting is not permitted here."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(folder: Path, *, leave: int = 0) -> Path:
    """Write a filler file in ``folder`` until at most ``leave`` bytes are free; returns
    it (delete it to free the space)."""
    filler = folder / "filler"
    with filler.open("wb") as out:
        while (free := _free(folder)) > leave:
            try:
                out.write(b"\0" * min(CHUNK, free - leave))
                out.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler


def _free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


class TcpRelay:
    """A loopback TCP relay to ``target_port``: :meth:`cut` closes the listener and every
    relayed connection (the client sees resets, then refused connects); :meth:`restore`
    listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        state = "cut" if self._server is None else "open"
        return f"<TcpRelay :{self.port} -> :{self.target_port} {state}, {len(self._writers)}>"

    async def start(self) -> int:
        """Listen (on a free port the first time); returns the port."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Listen again on the same port."""
        await self.start()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        self._writers -= {writer, up_writer}

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh database on the shared PostgreSQL server (dropped on exit); yields its URL.

    The admin engine pools nothing: each statement's connection is closed when its block
    ends, so a teardown cut short (a timeout) never leaves a connection open on the loop,
    which would keep a module-scoped uvloop from ever closing."""
    url = make_url(POSTGRES_URL)
    name = f"store_faults_{secrets.token_hex(4)}"
    admin = create_async_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any failure to reach it is a reason to skip (or fail in CI)
        await admin.dispose()
        reason = f"PostgreSQL at {POSTGRES_URL} is not available: {exc!s:.200}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            await drop_database(admin, name)
        finally:
            await admin.dispose()


DROP_PATIENCE = 60.0
"""Seconds a drop keeps trying while the server cannot checkpoint."""


async def drop_database(admin: AsyncEngine, name: str) -> None:
    """``DROP DATABASE … WITH (FORCE)``, tried again while the server cannot checkpoint (a
    drop asks for one): the disk-full tests fill a tablespace of the shared server, and
    until they drop it every checkpoint, so every other test's drop, fails with
    'checkpoint request failed'."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DROP_PATIENCE
    while True:
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except DBAPIError as exc:
            if "checkpoint request failed" not in str(exc) or loop.time() > deadline:
                raise
        await asyncio.sleep(0.5)


async def terminate_backends(database_url: str) -> int:
    """End every server process serving ``database_url``'s database, as a PostgreSQL
    restart does (the clients get 'terminating connection due to administrator command')."""
    url = make_url(database_url)
    admin = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": url.database},
            )
            return len(rows.all())
    finally:
        await admin.dispose()
