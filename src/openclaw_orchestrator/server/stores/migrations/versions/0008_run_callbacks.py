"""Run callbacks: ``orchestrator_run_callbacks`` (one row per run submitted with a
callback: its URL, secret, delivery state and lease) and ``orchestrator_callback_attempts``
(every delivery attempt), on both engines. Nothing else changes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create both tables and the partial index of pending callbacks by due time."""
    op.create_table(
        "orchestrator_run_callbacks",
        sa.Column(
            "run_id",
            sa.String(64),
            sa.ForeignKey("orchestrator_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(256), nullable=False),
        sa.Column("delivery_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_at", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("holder", sa.String(200), nullable=True),
        sa.Column("held_until", sa.Float, nullable=True),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_run_callbacks_due",
        "orchestrator_run_callbacks",
        ["next_at"],
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )
    op.create_table(
        "orchestrator_callback_attempts",
        sa.Column(
            "run_id",
            sa.String(64),
            sa.ForeignKey("orchestrator_run_callbacks.run_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("n", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
    )


def downgrade() -> None:
    """Drop both: callbacks not yet delivered are lost."""
    op.drop_table("orchestrator_callback_attempts")
    op.drop_index("ix_run_callbacks_due", table_name="orchestrator_run_callbacks")
    op.drop_table("orchestrator_run_callbacks")
