"""Baseline: sessions, their histories and the store's probe row.

The schema as ``metadata.create_all`` made it before migrations existed: a history's
primary key is (session_id, seq), one idempotency key per session. A database created
before this revision has these tables and no ``alembic_version``: it is stamped at this
revision, not recreated (see ``migrate``).

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the three tables and their indexes."""
    op.create_table(
        "orchestrator_sessions",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("instance", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ttl", sa.Float, nullable=False),
        sa.Column("failover", sa.String(16), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_active_at", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=True),
        sa.Column("messages", sa.Integer, nullable=False),
    )
    op.create_index(
        "ix_sessions_state_active", "orchestrator_sessions", ["state", "last_active_at"]
    )
    op.create_index("ix_sessions_instance", "orchestrator_sessions", ["instance"])
    op.create_table(
        "orchestrator_messages",
        sa.Column(
            "session_id",
            sa.String(128),
            sa.ForeignKey("orchestrator_sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("instance", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON, nullable=True),
        sa.Column("reply", sa.JSON, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("session_id", "idempotency_key", name="uq_messages_idempotency"),
    )
    op.create_table(
        "orchestrator_store_probe",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("probed_at", sa.Float, nullable=False),
        sa.Column("reserve", sa.LargeBinary, nullable=True),
    )


def downgrade() -> None:
    """Drop everything: the orchestrator's state is gone."""
    op.drop_table("orchestrator_store_probe")
    op.drop_table("orchestrator_messages")
    op.drop_index("ix_sessions_instance", "orchestrator_sessions")
    op.drop_index("ix_sessions_state_active", "orchestrator_sessions")
    op.drop_table("orchestrator_sessions")
