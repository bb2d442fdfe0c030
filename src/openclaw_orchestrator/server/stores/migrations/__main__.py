"""The DBA's command: ``python -m openclaw_orchestrator.server.stores.migrations``.

    upgrade --url URL          bring the database to the newest revision (what start-up does)
    upgrade --url URL --sql    print that upgrade's SQL instead, for review; touches nothing
    current --url URL          the database's revision, and whether it is the newest
    history                    every revision this version knows, newest first

``URL`` is the orchestrator's ``database_url`` (``postgresql+asyncpg://...`` or
``sqlite:///path``). Exit 2 with one line when the database cannot be migrated.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from alembic import command
from sqlalchemy import Connection, create_engine, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ....settings import ConfigError
from ..sqlite import SqliteFileLock, sqlite_path
from . import alembic_config, head, migrate, migrate_locked, revision_of

T = TypeVar("T")


async def on_database(url: str, work: Callable[[Connection], T]) -> T:
    """``work(connection)`` in one transaction on ``url``'s database, as the stores connect
    (a SQLite file locked against a running orchestrator for the time)."""
    path = sqlite_path(url)
    if path is not None:
        with SqliteFileLock(path):
            sync_engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
            try:
                with sync_engine.begin() as conn:
                    return work(conn)
            finally:
                sync_engine.dispose()
    if make_url(url).get_backend_name() != "postgresql":
        raise ConfigError(f"--url: not a SQLite file or PostgreSQL URL: {url!r}")
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as aconn:
            return await aconn.run_sync(work)
    finally:
        await engine.dispose()


def upgrade(url: str, *, sql: bool) -> None:
    """Migrate to head (as a replica does at start-up), or print the SQL of doing it."""
    if sql:
        command.upgrade(alembic_config(url=url, stdout=sys.stdout), "head", sql=True)
        return
    locked = make_url(url).get_backend_name() == "postgresql"
    asyncio.run(on_database(url, migrate_locked if locked else migrate))
    print(f"{head()} (head)")


def current(url: str) -> None:
    """Print the database's revision: ``0001 (head)``, ``0001 (head is 0002)``, ``none``."""
    revision = asyncio.run(on_database(url, revision_of))
    newest = head()
    note = "" if revision is None else " (head)" if revision == newest else f" (head is {newest})"
    print(f"{revision or 'none'}{note}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one command; a refusal is one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m openclaw_orchestrator.server.stores.migrations"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upgrade", help="migrate the database to the newest revision")
    up.add_argument("--url", required=True, help="the orchestrator's database_url")
    up.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
    now = commands.add_parser("current", help="the database's revision")
    now.add_argument("--url", required=True, help="the orchestrator's database_url")
    commands.add_parser("history", help="the revisions this version knows")
    args = parser.parse_args(argv)
    try:
        if args.command == "upgrade":
            upgrade(args.url, sql=args.sql)
        elif args.command == "current":
            current(args.url)
        else:
            command.history(alembic_config(stdout=sys.stdout))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
