"""The schema's versions: Alembic migrations, applied by the store at start-up.

``versions/`` holds one file per revision (``0001`` is the schema as it was before
migrations existed, ``0002`` adds the leases). :func:`migrate` brings a database to the
newest revision on a connection the caller owns, inside its transaction;
:func:`migrate_locked` does it behind PostgreSQL's
``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)``, so that of replicas starting together one
migrates and the others wait, then find the schema at head. The lock is transaction-scoped
(released by the COMMIT or rollback), never session-level, so a PgBouncer in transaction
mode cannot leave it held on a server connection. For a DBA:
``python -m openclaw_orchestrator.server.stores.migrations`` (see ``__main__``); nothing
needs an ``alembic.ini``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sqlalchemy import Connection, inspect, text

from ....settings import ConfigError
from ..tables import sessions

if TYPE_CHECKING:  # Alembic costs ~150 ms to import: only a start-up that migrates pays it
    from alembic.config import Config

__all__ = [
    "BASELINE",
    "HEAD",
    "MIGRATION_LOCK_KEY",
    "alembic_config",
    "head",
    "migrate",
    "migrate_locked",
    "revision_of",
]

BASELINE = "0001"
"""The revision of the schema that ``metadata.create_all`` made before migrations existed."""
HEAD = "0008"
"""The newest revision in ``versions/`` (a test keeps it equal to :func:`head`): a database
already there is recognised without importing Alembic."""
MIGRATION_LOCK_KEY = 0x6F63_6C61_776D_6967  # "oclawmig": one fixed 64-bit advisory lock key
_LOCK = text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")  # a literal: no binds
_VERSION_TABLE = "alembic_version"
_READ_VERSION = text(f"SELECT version_num FROM {_VERSION_TABLE}")  # noqa: S608  # a constant


def alembic_config(
    connection: Connection | None = None, *, url: str | None = None, stdout: TextIO | None = None
) -> Config:
    """Alembic's configuration for our scripts, on ``connection`` (online) or for ``url``'s
    dialect (offline, ``--sql``); no ``alembic.ini``."""
    from alembic.config import Config

    config = Config(stdout=stdout) if stdout is not None else Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this code knows, as Alembic reads ``versions/``."""
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:  # pragma: no cover - the package ships its versions
        raise RuntimeError("no migrations found")
    return revision


def revision_of(connection: Connection) -> str | None:
    """The database's revision (``alembic_version``), or None: unversioned. Read directly:
    a start-up with nothing to migrate runs no Alembic at all (nor logs its chatter)."""
    if not inspect(connection).has_table(_VERSION_TABLE):
        return None
    revision: str | None = connection.execute(_READ_VERSION).scalar()
    return revision


def migrate(connection: Connection) -> None:
    """Bring the database to :func:`head` in the caller's transaction: stamp a database made
    before migrations at :data:`BASELINE` (its rows stay), refuse one at a revision this code
    does not know (a newer orchestrator's: an older one must not write into it)."""
    current = revision_of(connection)
    if current == HEAD:
        return  # the usual start-up: nothing to do, and no Alembic to import
    from alembic import command
    from alembic.script import ScriptDirectory

    config = alembic_config(connection)
    scripts = ScriptDirectory.from_config(config)
    if current is None and inspect(connection).has_table(sessions.name):
        command.stamp(config, BASELINE)
        current = BASELINE
    if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
        raise ConfigError(
            f"database schema is at revision {current!r}, which this orchestrator does not "
            f"know (its newest is {scripts.get_current_head()!r}): a newer version migrated "
            "it; run that version (or newer), not this one"
        )
    if current != scripts.get_current_head():
        command.upgrade(config, "head")


def migrate_locked(connection: Connection) -> None:
    """:func:`migrate` on PostgreSQL, one process at a time: the advisory lock is held until
    the caller's transaction ends, so a replica waiting for it then finds the schema at head."""
    connection.execute(_LOCK)
    migrate(connection)
