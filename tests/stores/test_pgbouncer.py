"""The PostgreSQL store behind PgBouncer in transaction mode (issue 11, item 7).

A real PgBouncer (Debian's package; ``.ci/run`` installs it) on a random port in front of the
machine's PostgreSQL, ``pool_mode = transaction`` with four server connections, so that the
clients' transactions are spread over server connections that others used before. With
``database_transaction_pooling`` the store starts (migrating under its transaction-scoped
advisory lock), and two replicas' stores do sessions, leases and claims at once without a
prepared-statement error; without it, asyncpg's per-connection statement names collide."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from openclaw_orchestrator.domain.sessions import MessageRecord, SessionRecord
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from tests.ports import free_port

from ..storage_faults import IN_CI, postgres_database

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@contextlib.contextmanager
def pgbouncer(pool_size: int = 4) -> Iterator[int]:
    """PgBouncer in transaction mode in front of 127.0.0.1:5432; yields its port."""
    if not os.path.exists(PGBOUNCER):
        reason = "pgbouncer is not installed (.ci/run installs it)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    folder.chmod(0o755)
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n* = host=127.0.0.1 port=5432\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 200\n"
    )
    for path in folder.iterdir():
        path.chmod(0o644)
    user = ["-u", "postgres"] if os.geteuid() == 0 else []  # it refuses to run as root
    log = folder / "pgbouncer.log"  # its stderr: it cannot write into a folder of root's
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [PGBOUNCER, *user, str(folder / "pgbouncer.ini")], stdout=sink, stderr=sink
        )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            if proc.poll() is not None:
                raise AssertionError(f"pgbouncer exited: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def through_pgbouncer() -> AsyncIterator[str]:
    """A fresh database, and its URL through PgBouncer."""
    async with postgres_database() as direct:
        with pgbouncer() as port:
            yield make_url(direct).set(port=port).render_as_string(hide_password=False)


async def workload(stores: list[PostgresStore], prefix: str) -> None:
    """Sessions, appends, reads, leases and session claims from every store at once."""

    def present(record: SessionRecord | None) -> SessionRecord:
        assert record is not None
        return record

    async def one(i: int) -> None:
        store = stores[i % len(stores)]
        session_id = f"{prefix}-{i}"
        await store.create_session(SessionRecord(session_id, "A", "0" * 64, 60.0))
        record = await store.get_session(session_id)
        assert record is not None
        await store.append(record, MessageRecord(session_id, 1, "message", "A", data=i))
        assert len(await store.history(session_id)) == 1
        await store.acquire_lease(f"lease-{i}", f"h{i}", 5.0)
        ask = MessageRecord(session_id, 0, "message", "", data={"i": i}, created_at=1.0)
        claim = await store.claim_session(session_id, f"h{i}", 5.0, check=present, message=ask)
        assert claim is not None
        assert claim.pending is not None
        done = MessageRecord(session_id, claim.pending.seq, "message", "A", data={"i": i})
        await store.record_message(claim.record, f"h{i}", claim.epoch, done, release=True)

    await asyncio.gather(*(one(i) for i in range(40)))


async def open_and_work(stores: list[PostgresStore]) -> None:
    """Start every store, then three rounds of the workload."""
    for store in stores:
        await store.open()
    for round_ in range(3):
        await workload(stores, f"r{round_}")


async def test_two_stores_work_behind_pgbouncer_in_transaction_mode() -> None:
    """Start-up (migration) and a concurrent workload through PgBouncer: no error."""
    async with through_pgbouncer() as url:
        stores = [PostgresStore(url, transaction_pooling=True) for _ in range(2)]
        for store in stores:
            await store.open()
        try:
            await workload(stores, "ok")
            assert len(await stores[0].list_sessions()) == 40
        finally:
            for store in stores:
                await store.aclose()


async def test_without_the_setting_prepared_statements_collide() -> None:
    """The control: the same workload with asyncpg's default statement cache fails behind
    PgBouncer 1.18 in transaction mode, which is why the setting exists."""
    async with through_pgbouncer() as url:
        stores = [PostgresStore(url) for _ in range(2)]
        try:
            with pytest.raises(Exception, match="prepared statement"):
                await open_and_work(stores)
        finally:
            for store in stores:
                await store.aclose()
