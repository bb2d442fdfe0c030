"""Alembic's environment for the orchestrator's schema (:mod:`..tables`).

Online, Alembic runs on the connection the caller put in ``config.attributes["connection"]``
(the store's own, inside the transaction that holds the migration lock: Alembic's "sharing a
connection" recipe), so nothing here connects or needs an ``alembic.ini``. Offline
(``upgrade --sql``) it only renders SQL for ``sqlalchemy.url``'s dialect. SQLite cannot
ALTER most things in place: ``render_as_batch`` makes future migrations copy-and-move there.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import make_url

from openclaw_orchestrator.server.stores.tables import metadata


def run() -> None:
    """Run the migrations Alembic's command asked for, online or offline."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        url = context.config.get_main_option("sqlalchemy.url")
        batch = url is not None and make_url(url).get_backend_name() == "sqlite"
        context.configure(
            url=url, target_metadata=metadata, literal_binds=True, render_as_batch=batch
        )
    else:
        batch = connection.dialect.name == "sqlite"
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=batch)
    with context.begin_transaction():
        context.run_migrations()


run()
