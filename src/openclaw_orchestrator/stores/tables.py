"""The schema, in SQLAlchemy Core: portable between SQLite and PostgreSQL.

Times are epoch seconds (float); JSON values use the dialect's JSON type. A history entry's
primary key is (session_id, seq): two writers can never record the same position twice.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

__all__ = ["messages", "metadata", "sessions"]

metadata = MetaData()

sessions = Table(
    "orchestrator_sessions",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("instance", String(64), nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("ttl", Float, nullable=False),
    Column("failover", String(16), nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_active_at", Float, nullable=False),
    Column("closed_at", Float, nullable=True),
    Column("messages", Integer, nullable=False, default=0),
    Index("ix_sessions_state_active", "state", "last_active_at"),
    Index("ix_sessions_instance", "instance"),
)

messages = Table(
    "orchestrator_messages",
    metadata,
    Column(
        "session_id",
        String(128),
        ForeignKey("orchestrator_sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("instance", String(64), nullable=False),
    Column("data", JSON, nullable=True),
    Column("reply", JSON, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("request_id", String(128), nullable=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("session_id", "idempotency_key", name="uq_messages_idempotency"),
)
