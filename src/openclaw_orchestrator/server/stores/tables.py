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
    Boolean,
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
    false,
    text,
)

__all__ = [
    "DONE",
    "LEASE_NAME_MAX",
    "PENDING",
    "PROBE_ROW",
    "TOUCH_PROBE",
    "leases",
    "messages",
    "metadata",
    "sessions",
    "store_probe",
]

metadata = MetaData()

LEASE_NAME_MAX = 200
"""The longest lease name, and the longest holder id."""

PENDING = "pending"
"""A history row's status while its position is claimed and its reply not yet recorded."""
DONE = "done"
"""A history row's status once recorded: the history is the done rows."""

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
    # The session's lease (:mod:`..core.shared_sessions`): who may deliver its messages
    # now, until when (epoch seconds by the database's clock), and the fencing epoch.
    Column("epoch", BigInteger, nullable=False, server_default="0"),
    Column("holder", String(LEASE_NAME_MAX), nullable=True),
    Column("held_until", Float, nullable=True),
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
    # "pending": a position claimed by a lease holder before it delivers (no reply yet),
    # "done": recorded. Only done entries are history.
    Column("status", String(16), nullable=False, server_default=DONE),
    Column("epoch", BigInteger, nullable=True),
    UniqueConstraint("session_id", "idempotency_key", name="uq_messages_idempotency"),
    # Every claim asks "is a position of this session pending?": without this, the answer
    # reads the session's whole history, a longer read with every message.
    Index(
        "ix_messages_pending",
        "session_id",
        postgresql_where=text(f"status = '{PENDING}'"),
        sqlite_where=text(f"status = '{PENDING}'"),
    ),
)

PROBE_ROW = "probe"

store_probe = Table(
    "orchestrator_store_probe",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("probed_at", Float, nullable=False),
    Column("reserve", LargeBinary, nullable=True),
)

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

# -- shared registry and health (migration 0004) -----------------------------------------

FLEET_REASON_MAX = 1000
"""The longest verdict reason kept (longer ones are cut): a message, not a log."""

fleet_version = Table(
    "orchestrator_fleet_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)
"""One row: the fleet's change counter. Every write of the two tables below takes the next
value in its transaction, so the row lock orders commits and versions alike."""

fleet_instances = Table(
    "orchestrator_instances",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("spec", JSON, nullable=True),  # NULL: unregistered (the row carries the version)
    Column("source", String(16), nullable=False),
    Column("heartbeat_at", Float, nullable=True),  # epoch seconds, the database's clock
    Column("expires_at", Float, nullable=True),  # idem; NULL: no heartbeat_ttl
    Column("version", BigInteger, nullable=False),
    Index("ix_instances_version", "version"),
)

fleet_verdicts = Table(
    "orchestrator_verdicts",
    metadata,
    Column("instance", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("reason", String(FLEET_REASON_MAX), nullable=True),
    Column("changed_at", Float, nullable=False),  # epoch seconds, the database's clock
    Column("origin", String(LEASE_NAME_MAX), nullable=False),  # the deciding replica
    Column("version", BigInteger, nullable=False),
    Index("ix_verdicts_version", "version"),
)

# -- shared idempotency keys and retry budget (migration 0005) -----------------------------

IDEMPOTENCY_SCOPE_MAX = 32
IDEMPOTENCY_KEY_MAX = 255

idempotency = Table(
    "orchestrator_idempotency",
    metadata,
    Column("scope", String(IDEMPOTENCY_SCOPE_MAX), primary_key=True),
    Column("key", String(IDEMPOTENCY_KEY_MAX), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("holder", String(LEASE_NAME_MAX), nullable=False),
    Column("status", String(8), nullable=False),
    Column("result", LargeBinary, nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_idempotency_expires", "expires_at"),
)
"""One row per Idempotency-Key (:mod:`..core.shared_idempotency`): ``running`` while its
``holder`` works (``expires_at`` is the claim's end), ``done`` with the result kept until
``expires_at`` (the retention). Both times by the database's clock."""

retry_budget = Table(
    "orchestrator_retry_budget",
    metadata,
    Column("holder", String(LEASE_NAME_MAX), primary_key=True),
    Column("bucket", BigInteger, primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("retries", BigInteger, nullable=False),
    Index("ix_retry_budget_bucket", "bucket"),
)
"""Each replica's first attempts and retries per time bucket (:mod:`..core.fleet_budget`)."""

# -- retry grants (migration 0006) --------------------------------------------------------

retry_grants = Table(
    "orchestrator_retry_grants",
    metadata,
    Column("holder", String(LEASE_NAME_MAX), primary_key=True),
    Column("granted", Integer, nullable=False),
    Column("wanting", Boolean, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
"""The retries each replica was granted at its last exchange and may still spend, until
``expires_at`` by the database's clock, and whether it wants retries (the headroom is dealt
among those that do; :mod:`..stores.budget_sql`)."""

# -- durable runs (migration 0007) --------------------------------------------------------

runs = Table(
    "orchestrator_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("request", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("deadline_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("delivered", Boolean, nullable=False, server_default=false()),
    Column("idempotency_key", String(255), nullable=True, unique=True),
    Column("instance", String(64), nullable=True),
    Column("result", JSON, nullable=True),
    Column("error", JSON, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("callback", JSON, nullable=True),
    Column("holder", String(LEASE_NAME_MAX), nullable=True),
    Column("held_until", Float, nullable=True),
    Column("epoch", BigInteger, nullable=False, server_default="0"),
    Index("ix_runs_state_created", "state", "created_at"),
    Index("ix_runs_created", "created_at", "id"),
    Index("ix_runs_finished", "finished_at"),
)
"""One row per durable run (:mod:`.runs`): the request as submitted, where it stands, its
lease (``holder``, ``held_until`` by the store's clock, ``epoch``), its result or error."""

run_events = Table(
    "orchestrator_run_events",
    metadata,
    Column(
        "run_id",
        String(64),
        ForeignKey("orchestrator_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True),
    Column("type", String(16), nullable=False),
    Column("data", JSON, nullable=False),
    Column("at", Float, nullable=False),
)
"""A run's events, numbered from 1 per run (what ``GET …/runs/{id}/events`` streams)."""

# -- run callbacks (migration 0008) -------------------------------------------------------

CALLBACK_URL_MAX = 2048
CALLBACK_SECRET_MAX = 256
CALLBACK_ERROR_MAX = 500

run_callbacks = Table(
    "orchestrator_run_callbacks",
    metadata,
    Column(
        "run_id",
        String(64),
        ForeignKey("orchestrator_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("url", String(CALLBACK_URL_MAX), nullable=False),
    Column("secret", String(CALLBACK_SECRET_MAX), nullable=False),
    Column("delivery_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("holder", String(LEASE_NAME_MAX), nullable=True),
    Column("held_until", Float, nullable=True),
    Column("epoch", BigInteger, nullable=False, server_default="0"),
    # The deliverer's one question, "which pending callbacks are due?", reads only these.
    Index(
        "ix_run_callbacks_due",
        "next_at",
        postgresql_where=text("state = 'pending'"),
        sqlite_where=text("state = 'pending'"),
    ),
)
"""A run's callback (:mod:`.callbacks`): where to POST the finished run, the secret that
signs it (needed to sign, so kept; never shown), where its delivery stands and the lease of
the replica delivering it (``held_until`` by the store's clock). Goes with its run."""

callback_attempts = Table(
    "orchestrator_callback_attempts",
    metadata,
    Column(
        "run_id",
        String(64),
        ForeignKey("orchestrator_run_callbacks.run_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("n", Integer, primary_key=True),
    Column("at", Float, nullable=False),
    Column("status", Integer, nullable=True),
    Column("error", String(CALLBACK_ERROR_MAX), nullable=True),
    Column("latency_ms", Float, nullable=True),
)
"""Every delivery attempt of a callback, numbered from 1, written before the request is
sent and completed with its answer."""
