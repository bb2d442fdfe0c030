"""Idempotency keys and the retry budget shared by the replicas.

``orchestrator_idempotency`` holds one row per Idempotency-Key (scope and key): the request's
fingerprint, the replica working on it or the result it left, and until when the row means
anything (a claim's end, or the retention of a result; by the database's clock).
``orchestrator_retry_budget`` holds each replica's first attempts and retries per time
bucket, summed by every replica into the fleet's budget. Nothing else changes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``orchestrator_idempotency`` and ``orchestrator_retry_budget``."""
    op.create_table(
        "orchestrator_idempotency",
        sa.Column("scope", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("result", sa.LargeBinary, nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_idempotency_expires", "orchestrator_idempotency", ["expires_at"])
    op.create_table(
        "orchestrator_retry_budget",
        sa.Column("holder", sa.String(200), primary_key=True),
        sa.Column("bucket", sa.BigInteger, primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("retries", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_retry_budget_bucket", "orchestrator_retry_budget", ["bucket"])


def downgrade() -> None:
    """Drop both: keys in flight run again, and the budget starts from nothing."""
    op.drop_index("ix_retry_budget_bucket", table_name="orchestrator_retry_budget")
    op.drop_table("orchestrator_retry_budget")
    op.drop_index("ix_idempotency_expires", table_name="orchestrator_idempotency")
    op.drop_table("orchestrator_idempotency")
