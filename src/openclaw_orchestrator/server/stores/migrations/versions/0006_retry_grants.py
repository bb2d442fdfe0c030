"""Retry grants: the part of the fleet's retry budget each replica holds.

``orchestrator_retry_grants`` holds one row per replica: the retries it was granted at its
last exchange (dealt one replica at a time under an advisory lock, among the replicas that
want retries), whether it wants retries, and until when the grant counts, by the database's
clock. Nothing else changes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``orchestrator_retry_grants``."""
    op.create_table(
        "orchestrator_retry_grants",
        sa.Column("holder", sa.String(200), primary_key=True),
        sa.Column("granted", sa.Integer, nullable=False),
        sa.Column("wanting", sa.Boolean, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop it: replicas deal the budget from nothing at their next exchange."""
    op.drop_table("orchestrator_retry_grants")
