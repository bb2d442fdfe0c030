"""Durable runs: ``orchestrator_runs`` (one row per run: the request, its state, its lease,
its result) and ``orchestrator_run_events`` (a run's events, numbered per run), on both
engines. Nothing else changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create both tables and the indexes claims and listings use."""
    op.create_table(
        "orchestrator_runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("deadline_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("delivered", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("idempotency_key", sa.String(255), nullable=True, unique=True),
        sa.Column("instance", sa.String(64), nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("callback", sa.JSON, nullable=True),
        sa.Column("holder", sa.String(200), nullable=True),
        sa.Column("held_until", sa.Float, nullable=True),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_runs_state_created", "orchestrator_runs", ["state", "created_at"])
    op.create_index("ix_runs_created", "orchestrator_runs", ["created_at", "id"])
    op.create_index("ix_runs_finished", "orchestrator_runs", ["finished_at"])
    op.create_table(
        "orchestrator_run_events",
        sa.Column(
            "run_id",
            sa.String(64),
            sa.ForeignKey("orchestrator_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop both: runs not finished are lost (their submits were acknowledged)."""
    op.drop_table("orchestrator_run_events")
    op.drop_index("ix_runs_finished", table_name="orchestrator_runs")
    op.drop_index("ix_runs_created", table_name="orchestrator_runs")
    op.drop_index("ix_runs_state_created", table_name="orchestrator_runs")
    op.drop_table("orchestrator_runs")
