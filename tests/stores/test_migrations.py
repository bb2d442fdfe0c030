"""The versioned schema (:mod:`openclaw_orchestrator.server.stores.migrations`): what a store's
``open()`` does to a fresh database, to one made before migrations existed and to one a
newer orchestrator migrated; replicas starting together on one PostgreSQL database; the
DBA's command. Both stores where it applies; PostgreSQL in a database of its own (skipped
with the reason when no server answers, failed in CI)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, insert, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from openclaw_orchestrator.server.stores.migrations import (
    BASELINE,
    HEAD,
    MIGRATION_LOCK_KEY,
    alembic_config,
    head,
    revision_of,
)
from openclaw_orchestrator.server.stores.migrations.__main__ import on_database
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url
from openclaw_orchestrator.server.stores.tables import metadata, sessions
from openclaw_orchestrator.settings import ConfigError

from ..storage_faults import postgres_database

T = TypeVar("T")
COMMAND = [sys.executable, "-m", "openclaw_orchestrator.server.stores.migrations"]
FUTURE = "9999_future"
BASELINE_TABLES = {"orchestrator_sessions", "orchestrator_messages", "orchestrator_store_probe"}
TABLES = set(metadata.tables)  # every table of tables.py, the later revisions' too
REPLICA = """
import asyncio, sys
from openclaw_orchestrator.server.stores.postgres import PostgresStore

async def start() -> None:
    store = PostgresStore(sys.argv[1])
    await store.open()
    await store.aclose()

while sys.stdin.readline():
    asyncio.run(start())
    print("opened", flush=True)
"""
"""A replica's start-up (a new store on its own loop opened, then closed) for each line read:
three of them are told "go" together, and each answers once its store has opened. The
import (~1 s of CPU) is paid once per process, not once per round."""
ROUNDS = 3


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL database (dropped after)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        async with postgres_database() as pg:
            yield pg


def store_for(url: str) -> SqliteStore | PostgresStore:
    """The store ``open_store`` picks for ``url``."""
    return PostgresStore(url) if url.startswith("postgresql") else SqliteStore(url)


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[SqliteStore | PostgresStore]:
    """The store for ``url``, open for the block."""
    store = store_for(url)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def run(url: str, work: Callable[[Connection], T]) -> T:
    """``work`` in one transaction on ``url``'s database (no store open)."""
    return await on_database(url, work)


def schema_drift(conn: Connection) -> list[Any]:
    """What differs between the database and :mod:`tables` (Alembic's autogenerate)."""
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


def table_names(conn: Connection) -> set[str]:
    """The tables in the database."""
    return set(inspect(conn).get_table_names())


def version_rows(conn: Connection) -> list[str]:
    """Every row of ``alembic_version``."""
    return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def session_row(session_id: str) -> dict[str, Any]:
    """A session row as the stores write it."""
    return {
        "id": session_id, "instance": "A", "token_hash": "0" * 64, "state": "open",
        "ttl": 60.0, "failover": "none", "metadata": {"k": "v"}, "created_at": 1.0,
        "last_active_at": 1.0, "closed_at": None, "messages": 0,
    }  # fmt: skip


def make_legacy(conn: Connection) -> None:
    """A database as the code before migrations left it: the baseline's tables as they were
    then (revision 0001's schema; later revisions' tables and columns did not exist yet),
    no ``alembic_version``, and a session."""
    from alembic import command

    command.upgrade(alembic_config(conn), BASELINE)
    conn.execute(text("DROP TABLE alembic_version"))
    columns = ", ".join(session_row("kept"))
    values = ", ".join(f":{name}" for name in session_row("kept"))
    row = {**session_row("kept"), "metadata": '{"k": "v"}'}
    conn.execute(text(f"INSERT INTO orchestrator_sessions ({columns}) VALUES ({values})"), row)  # noqa: S608


def set_future_revision(conn: Connection) -> None:
    """What a newer orchestrator's migration leaves: a revision this code never saw."""
    conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The DBA's command, as pasted into a shell."""
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=60)


async def test_a_fresh_database_is_migrated_to_head(url: str) -> None:
    """Opening a store on an empty database creates exactly the schema of ``tables.py`` (no
    drift, indexes and constraints included) and records the newest revision, once."""
    async with opened(url):
        pass
    assert await run(url, table_names) == {*TABLES, "alembic_version"}
    assert await run(url, version_rows) == [head()]
    assert await run(url, schema_drift) == []


async def test_opening_again_changes_nothing(url: str) -> None:
    """A second start on a database at head finds nothing to do and keeps the data."""
    async with opened(url):
        pass
    await run(url, lambda conn: conn.execute(insert(sessions).values(session_row("s1"))))
    async with opened(url) as store:
        assert (await store.get_session("s1")) is not None
    assert await run(url, version_rows) == [head()]


async def test_a_database_made_before_migrations_is_stamped_and_keeps_its_rows(url: str) -> None:
    """Tables from the old ``metadata.create_all`` and no ``alembic_version``: stamped at the
    baseline, then brought to head (the later revisions' tables added), not recreated; its
    session is still there."""
    await run(url, make_legacy)
    assert await run(url, table_names) == BASELINE_TABLES
    assert await run(url, revision_of) is None
    async with opened(url) as store:
        kept = await store.get_session("kept")
    assert kept is not None
    assert kept.metadata == {"k": "v"}
    assert await run(url, version_rows) == [head()]
    assert await run(url, schema_drift) == []


async def test_a_newer_schema_is_refused_naming_both_revisions(url: str) -> None:
    """A database a newer orchestrator migrated: this one refuses to start (it must not
    write into a schema it does not know), naming the database's revision and its own."""
    async with opened(url):
        pass
    await run(url, set_future_revision)
    store = store_for(url)
    with pytest.raises(ConfigError, match=f"revision '{FUTURE}'.*newest is '{head()}'"):
        await store.open()
    await store.aclose()
    assert await run(url, version_rows) == [FUTURE]  # untouched


async def test_three_replicas_migrate_one_fresh_database_at_once() -> None:
    """Three processes opening a PostgresStore on one empty database together: all start
    (one migrates under the advisory lock, the others wait and find it done), and there is
    one version row. Without the lock, ``create_all`` raced this way failed 2 trials in 10.
    The same three processes start a store in each round, told to at the same moment (a
    tighter race than three interpreters finishing their imports at different times)."""
    async with postgres_database() as url:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", REPLICA, url,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            for _ in range(3)
        ]  # fmt: skip
        try:
            for _ in range(ROUNDS):  # a fresh database each round would cost more than it shows
                answers = await asyncio.gather(*(start_replica(p) for p in procs))
                if answers != [b"opened\n"] * 3:
                    await stop_replicas(procs)
                    pytest.fail(f"a replica did not start: {await replica_errors(procs)}")
                assert await run(url, version_rows) == [head()]
                await run(url, lambda conn: conn.execute(text("DROP TABLE alembic_version")))
                await run(url, lambda conn: metadata.drop_all(conn))
        finally:
            await stop_replicas(procs)
        assert [p.returncode for p in procs] == [0, 0, 0], await replica_errors(procs)
        async with opened(url):
            pass
        assert await run(url, schema_drift) == []


async def start_replica(proc: asyncio.subprocess.Process) -> bytes:
    """Tell ``proc`` to start its store; its answer (empty if it exited instead)."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    except ConnectionError:  # it has exited: its stdout is at EOF
        pass
    return await proc.stdout.readline()


async def stop_replicas(procs: list[asyncio.subprocess.Process]) -> None:
    """End of input: each replica's loop ends and it exits (killed if it does not)."""
    for proc in procs:
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def replica_errors(procs: list[asyncio.subprocess.Process]) -> list[str]:
    """What the exited replicas wrote on stderr (a traceback if one failed to start)."""
    return [
        (await p.stderr.read()).decode(errors="replace") if p.stderr is not None else ""
        for p in procs
    ]


async def test_a_replica_waits_for_the_migration_lock() -> None:
    """While another transaction holds the migration lock, ``open()`` waits; it proceeds as
    soon as that transaction ends (transaction-scoped: nothing to unlock by hand)."""
    async with postgres_database() as url:
        holder = create_async_engine(url)
        try:
            async with holder.connect() as conn:
                tx = await conn.begin()
                await conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))
                store = PostgresStore(url)
                opening = asyncio.create_task(store.open())
                await asyncio.sleep(0.5)
                assert not opening.done()
                await tx.commit()
                await asyncio.wait_for(opening, 10)
                await store.aclose()
        finally:
            await holder.dispose()
        assert await run(url, version_rows) == [head()]


async def test_the_dba_command_upgrades_and_reports(url: str) -> None:
    """``python -m openclaw_orchestrator.server.stores.migrations``: ``current`` on an empty
    database says none, ``upgrade`` migrates to head, ``current`` then says so; ``upgrade
    --sql`` prints the DDL (it touches nothing, so it runs alongside the other three)."""

    def upgrade_and_report() -> None:
        before = cli("current", "--url", url)
        assert (before.returncode, before.stdout) == (0, "none\n"), before.stderr
        up = cli("upgrade", "--url", url)
        assert (up.returncode, up.stdout) == (0, f"{head()} (head)\n"), up.stderr
        now = cli("current", "--url", url)
        assert now.stdout == f"{head()} (head)\n"

    sql, _ = await asyncio.gather(
        asyncio.to_thread(cli, "upgrade", "--url", url, "--sql"),
        asyncio.to_thread(upgrade_and_report),
    )
    assert await run(url, schema_drift) == []
    assert sql.returncode == 0, sql.stderr
    assert "CREATE TABLE orchestrator_sessions" in sql.stdout
    assert "CREATE TABLE orchestrator_leases" in sql.stdout


def test_the_dba_command_lists_the_history() -> None:
    """``history`` lists the revisions from the baseline on (it reads no database: once)."""
    history = cli("history")
    assert history.returncode == 0, history.stderr
    assert f"<base> -> {BASELINE}" in history.stdout
    assert f"{BASELINE} -> 0002" in history.stdout


async def test_the_dba_command_refuses_a_newer_schema_in_one_line(url: str) -> None:
    """``upgrade`` on a database a newer version migrated: exit 2, one ``error:`` line."""
    async with opened(url):
        pass
    await run(url, set_future_revision)
    done = await asyncio.to_thread(cli, "upgrade", "--url", url)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: database schema is at revision '9999_future'")


async def test_the_dba_command_leaves_a_running_sqlite_store_alone(tmp_path: Path) -> None:
    """On a SQLite file an orchestrator has open, ``upgrade`` is refused (exit 2): one
    process per file, the DBA's included."""
    url = sqlite_url(tmp_path)
    async with opened(url):
        done = await asyncio.to_thread(cli, "upgrade", "--url", url)
    assert done.returncode == 2
    assert "SQLite store is for one process" in done.stderr


def test_the_head_constant_is_the_newest_script() -> None:
    """``HEAD`` lets a start-up at the newest revision skip importing Alembic; it must name
    the newest file in ``versions/`` (add a revision: bump it)."""
    assert head() == HEAD


def test_a_start_up_at_head_does_not_import_alembic(tmp_path: Path) -> None:
    """Opening a SQLite store whose schema is current imports no Alembic (≈ 150 ms)."""
    probe = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url\n"
        "async def main():\n"
        f"    store = SqliteStore(sqlite_url(Path({str(tmp_path)!r})))\n"
        "    await store.open()\n"
        "    await store.aclose()\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    again = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert (first.returncode, again.returncode) == (0, 0), (first.stderr, again.stderr)
    assert (first.stdout.strip(), again.stdout.strip()) == ("True", "False")
