"""Which store a configuration gets: a SQLite file or PostgreSQL, and nothing else, said
in one line before the server listens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openclaw_orchestrator.server.composition import open_store
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_path, sqlite_url
from openclaw_orchestrator.settings import ConfigError, Settings
from tests.cli.test_first_minutes import one_error_line
from tests.test_cluster_up import clean_env, free_port, free_range, started


def test_open_store_picks_the_store_by_url(tmp_path: Path) -> None:
    """A SQLite file gets SqliteStore, PostgreSQL PostgresStore; SQLite in memory or any
    other database is a ConfigError naming database_url, with no password shown."""
    assert isinstance(open_store(Settings(data_dir=tmp_path)), SqliteStore)
    pg = Settings(data_dir=tmp_path, database_url="postgresql+asyncpg://u@127.0.0.1/db")
    assert isinstance(open_store(pg), PostgresStore)
    for url in ("sqlite:///:memory:", "mysql+aiomysql://u:secret@127.0.0.1/db", "not a url"):
        with pytest.raises(ConfigError, match=r"^database_url: ") as caught:
            open_store(Settings(data_dir=tmp_path, database_url=url))
        assert "secret" not in str(caught.value)
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite+aiosqlite:///x/y.db") == "x/y.db"
    with pytest.raises(ValueError, match="SQLite file"):
        SqliteStore("postgresql+asyncpg://u@127.0.0.1/db")
    with pytest.raises(ValueError, match="PostgreSQL URL"):
        PostgresStore(sqlite_url(tmp_path))


@pytest.mark.parametrize("command", ["serve", "up"])
async def test_a_database_no_store_serves_is_one_error_line_before_listening(
    tmp_path: Path, command: str
) -> None:
    """``database_url`` naming SQLite in memory: one `error:` line naming the setting,
    exit 2, nothing listening and nothing started."""
    config = tmp_path / "memory.json"
    config.write_text(json.dumps({"database_url": "sqlite:///:memory:"}))
    args = [command, "--config", str(config), "--port", str(free_port())]
    if command == "up":
        args += ["--instances", "A", "--base-port", str(free_range(1))]
    async with started(*args, env=clean_env(tmp_path)) as proc:
        assert await proc.finish() == 2, proc
    assert one_error_line(proc) == "error: database_url: SQLite needs a file, not ':memory:'"
