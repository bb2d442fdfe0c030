"""One process per SQLite file: a second orchestrator process on the same database is refused
with one clear line (exit 2 from ``serve``), the lock goes with its process even on
``kill -9``, and ``aclose`` hands the file over. Real processes throughout: the lock is
``flock``, which only another process sees."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from openclaw_orchestrator.server.stores.sqlite import SqliteFileLock, SqliteStore, sqlite_url
from openclaw_orchestrator.settings import ConfigError

from ..orchestrator_process import orchestrator_process

OPENCLAW = str(Path(sys.executable).parent / "openclaw")
REFUSAL = "a SQLite store is for one process"
HOLD_LOCK = """
import sys, time
from openclaw_orchestrator.server.stores.sqlite import SqliteFileLock
SqliteFileLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""
TRY_LOCK = """
import sys
from openclaw_orchestrator.server.stores.sqlite import SqliteFileLock
from openclaw_orchestrator.settings import ConfigError
try:
    SqliteFileLock(sys.argv[1]).acquire()
except ConfigError:
    sys.exit(1)
"""


def serve_again(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """A second ``openclaw orchestrator serve`` on ``data_dir``'s database, run to its end."""
    command = [OPENCLAW, "orchestrator", "serve", "--port", "0", "--data-dir", str(data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def can_lock_elsewhere(database: str) -> bool:
    """Whether another process could take the database's lock now."""
    done = subprocess.run([sys.executable, "-c", TRY_LOCK, database], timeout=30, check=False)
    return done.returncode == 0


async def test_a_second_serve_on_one_sqlite_file_exits_2_with_one_line(tmp_path: Path) -> None:
    """With one orchestrator serving a SQLite file, a second ``serve`` on it exits 2 before
    listening, with one line that says why and to use PostgreSQL for replicas. After
    ``kill -9`` of the first, no stale lock is left: a new one serves the same file."""
    async with orchestrator_process(tmp_path, {}) as first:
        second = await asyncio.to_thread(serve_again, first.data_dir)
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.startswith("error: ")
        assert REFUSAL in second.stderr
        assert "PostgreSQL" in second.stderr
        first.process.kill()
        await first.process.wait()
    database = str(tmp_path / "data" / "orchestrator.db")
    assert await asyncio.to_thread(Path(f"{database}.lock").exists)  # the file stays, not the lock
    assert await asyncio.to_thread(can_lock_elsewhere, database)
    async with orchestrator_process(tmp_path, {}) as again:
        assert again.process.returncode is None


async def test_a_store_is_refused_while_another_process_holds_the_file(tmp_path: Path) -> None:
    """Another process holding the lock: the store is refused when built (what ``serve``'s
    preflight does) and, if built before, when opened; both with the one-process message."""
    url = sqlite_url(tmp_path)
    built_before = SqliteStore(url)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_LOCK, str(tmp_path / "orchestrator.db"),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        with pytest.raises(ConfigError, match=REFUSAL):
            SqliteStore(url)
        with pytest.raises(ConfigError, match=REFUSAL):
            await built_before.open()
        await built_before.aclose()
    finally:
        holder.kill()
        await holder.wait()
    store = SqliteStore(url)  # the holder died (SIGKILL): the file is free
    await store.open()
    await store.aclose()


async def test_aclose_hands_the_file_to_another_process(tmp_path: Path) -> None:
    """An open store holds the lock against other processes; after ``aclose`` they get it.
    Stores of the same process share it (one process per file, not one store)."""
    url = sqlite_url(tmp_path)
    database = str(tmp_path / "orchestrator.db")
    store = SqliteStore(url)
    await store.open()
    reopened = SqliteStore(url)
    await reopened.open()
    await reopened.aclose()
    assert not await asyncio.to_thread(can_lock_elsewhere, database)  # the first still has it
    await store.aclose()
    assert await asyncio.to_thread(can_lock_elsewhere, database)
    assert repr(SqliteFileLock(database)).endswith("[not held]>")
