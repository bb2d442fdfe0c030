"""Leases: one row per named lease, for work that one replica at a time must own.

A lease (:mod:`..leases`) names its holder, a fencing ``epoch`` bumped whenever it changes
hands, and when it expires, judged by the database's clock (a ``timestamptz`` on
PostgreSQL). Nothing else changes: a database at ``0001`` keeps its rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``orchestrator_leases``."""
    op.create_table(
        "orchestrator_leases",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the leases: every lease is free again (nobody holds anything)."""
    op.drop_table("orchestrator_leases")
