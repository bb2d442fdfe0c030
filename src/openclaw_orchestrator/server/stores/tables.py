"""The schema, in SQLAlchemy Core: portable between SQLite and PostgreSQL.

Times are epoch seconds (float); JSON values use the dialect's JSON type. A history entry's
primary key is (session_id, seq): two writers can never record the same position twice.
``store_probe`` holds one row that the store rewrites to learn it can write again after a
failure (:mod:`.health`); after a full disk, PostgreSQL also writes (and rolls back) a
``reserve`` there, so that a row that happened to fit in a page does not pass for free space.
``orchestrator_leases`` holds one row per named lease (:mod:`.leases`): who holds it, its
fencing ``epoch`` and its expiry, a timestamp judged by the database's clock.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

__all__ = [
    "LEASE_NAME_MAX",
    "PROBE_ROW",
    "TOUCH_PROBE",
    "leases",
    "messages",
    "metadata",
    "sessions",
    "store_probe",
]

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

PROBE_ROW = "probe"

store_probe = Table(
    "orchestrator_store_probe",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("probed_at", Float, nullable=False),
    Column("reserve", LargeBinary, nullable=True),
)

LEASE_NAME_MAX = 200
"""The longest lease name, and the longest holder id."""

leases = Table(
    "orchestrator_leases",
    metadata,
    Column("name", String(LEASE_NAME_MAX), primary_key=True),
    Column("holder", String(LEASE_NAME_MAX), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

TOUCH_PROBE = (
    "INSERT INTO orchestrator_store_probe (id, probed_at) VALUES (:id, :at) "
    "ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at"
)
"""One committed write, the same SQL on SQLite and PostgreSQL (named parameters)."""
