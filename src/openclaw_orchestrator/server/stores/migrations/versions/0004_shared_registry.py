"""The instance registry and health verdicts shared by the replicas.

``orchestrator_instances`` holds the run-time registrations (config instances stay in each
replica's config), an unregistered one as a row without ``spec``; ``orchestrator_verdicts``
the latest health verdict of each instance; ``orchestrator_fleet_version`` the one counter
both tables' ``version`` comes from, so a replica asks "what changed since V" (see
:mod:`openclaw_orchestrator.server.stores.fleet`). Nothing else changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the three tables and the indexes the change polls use."""
    op.create_table(
        "orchestrator_fleet_version",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "orchestrator_instances",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_instances_version", "orchestrator_instances", ["version"])
    op.create_table(
        "orchestrator_verdicts",
        sa.Column("instance", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=True),
        sa.Column("changed_at", sa.Float, nullable=False),
        sa.Column("origin", sa.String(200), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_verdicts_version", "orchestrator_verdicts", ["version"])


def downgrade() -> None:
    """Drop them: each replica's registry and verdicts are its own again."""
    op.drop_index("ix_verdicts_version", table_name="orchestrator_verdicts")
    op.drop_table("orchestrator_verdicts")
    op.drop_index("ix_instances_version", table_name="orchestrator_instances")
    op.drop_table("orchestrator_instances")
    op.drop_table("orchestrator_fleet_version")
