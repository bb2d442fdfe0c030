"""Sessions across replicas: the session's lease on its row, and claimed positions.

A session row gains its lease: ``holder`` (the replica delivering its messages now),
``held_until`` (epoch seconds by the database's clock) and ``epoch``, the fencing token
sent to the instance and bumped whenever the lease changes hands, on migration and on
close. A history row gains ``status``: ``pending`` while a lease holder has claimed the
position and not yet recorded the reply, ``done`` once recorded (every existing row), and
the ``epoch`` that claimed it, and a partial index finds a session's pending position
without reading its history. Nothing else changes: a database at ``0002`` keeps its rows.

On PostgreSQL, the two statements of every send are functions, so that each is one round
trip and one transaction: ``orchestrator_claim_session`` (lock the session row, take or
renew the lease, find an orphaned position or the idempotency key's earlier message, else
claim the next position) and ``orchestrator_record_message`` (the pending position
becomes the reply, the session moves on, conditional on the lease); and their batched forms
``orchestrator_claim_sessions`` and ``orchestrator_record_messages``, which settle many
sends in one transaction (group commit). What they decide is described in
:mod:`openclaw_orchestrator.server.stores.session_leases`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


CLAIM = """
CREATE OR REPLACE FUNCTION orchestrator_claim_session(
    p_id varchar, p_holder varchar, p_ttl double precision, p_now double precision,
    p_sendable boolean, p_want boolean, p_data json, p_request_id varchar,
    p_key varchar, p_created_at double precision
) RETURNS TABLE (claimed text, fence_epoch bigint, session_row json, message_row json)
LANGUAGE plpgsql AS $$
DECLARE
    s orchestrator_sessions%ROWTYPE;
    m orchestrator_messages%ROWTYPE;
    db_now double precision := extract(epoch FROM now());
    fence bigint;
BEGIN
    SELECT * INTO s FROM orchestrator_sessions WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::bigint, NULL::json, NULL::json;
        RETURN;
    END IF;
    IF s.holder IS DISTINCT FROM p_holder AND s.held_until > db_now THEN
        RETURN QUERY SELECT 'busy'::text, s.epoch, row_to_json(s), NULL::json;
        RETURN;
    END IF;
    IF p_sendable AND (s.state <> 'open' OR s.last_active_at + s.ttl < p_now) THEN
        RETURN QUERY SELECT 'refused'::text, s.epoch, row_to_json(s), NULL::json;
        RETURN;
    END IF;
    fence := CASE WHEN s.holder = p_holder AND s.held_until > db_now
                  THEN s.epoch ELSE s.epoch + 1 END;
    UPDATE orchestrator_sessions
       SET holder = p_holder, held_until = db_now + p_ttl, epoch = fence
     WHERE id = p_id RETURNING * INTO s;
    SELECT * INTO m FROM orchestrator_messages
     WHERE session_id = p_id AND status = 'pending' ORDER BY seq LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT 'orphan'::text, fence, row_to_json(s), row_to_json(m);
        RETURN;
    END IF;
    IF NOT p_want THEN
        RETURN QUERY SELECT 'held'::text, fence, row_to_json(s), NULL::json;
        RETURN;
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT * INTO m FROM orchestrator_messages
         WHERE session_id = p_id AND idempotency_key = p_key;
        IF FOUND THEN
            RETURN QUERY SELECT 'earlier'::text, fence, row_to_json(s), row_to_json(m);
            RETURN;
        END IF;
    END IF;
    INSERT INTO orchestrator_messages (session_id, seq, kind, instance, data, request_id,
                                       idempotency_key, created_at, status, epoch)
    VALUES (p_id, s.messages + 1, 'message', s.instance, p_data, p_request_id, p_key,
            p_created_at, 'pending', fence)
    RETURNING * INTO m;
    RETURN QUERY SELECT 'pending'::text, fence, row_to_json(s), row_to_json(m);
END
$$
"""

RECORD = """
CREATE OR REPLACE FUNCTION orchestrator_record_message(
    p_id varchar, p_holder varchar, p_epoch bigint, p_seq integer, p_kind varchar,
    p_instance varchar, p_reply json, p_latency_ms double precision,
    p_created_at double precision, p_request_id varchar, p_release boolean
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM orchestrator_sessions
      WHERE id = p_id AND holder = p_holder AND epoch = p_epoch FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE orchestrator_messages
       SET status = 'done', kind = p_kind, instance = p_instance, reply = p_reply,
           latency_ms = p_latency_ms, created_at = p_created_at, request_id = p_request_id
     WHERE session_id = p_id AND seq = p_seq AND status = 'pending';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE orchestrator_sessions
       SET messages = p_seq, last_active_at = p_created_at, instance = p_instance,
           held_until = CASE WHEN p_release THEN extract(epoch FROM now()) ELSE held_until END
     WHERE id = p_id;
    RETURN true;
END
$$
"""

# Group commit: one call (one transaction, one WAL flush) settles many sends, each as the
# single function would, in the order of their session ids, so that two replicas' batches
# lock the rows they share in the same order and never deadlock.
CLAIM_MANY = """
CREATE OR REPLACE FUNCTION orchestrator_claim_sessions(
    p_ids varchar[], p_holders varchar[], p_ttls double precision[], p_nows double precision[],
    p_sendables boolean[], p_wants boolean[], p_datas json[], p_request_ids varchar[],
    p_keys varchar[], p_created_ats double precision[]
) RETURNS TABLE (idx integer, claimed text, fence_epoch bigint, session_row json,
                 message_row json)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    FOR i IN SELECT t.ord FROM unnest(p_ids) WITH ORDINALITY AS t(id, ord) ORDER BY t.id, t.ord
    LOOP
        RETURN QUERY SELECT i, c.* FROM orchestrator_claim_session(
            p_ids[i], p_holders[i], p_ttls[i], p_nows[i], p_sendables[i], p_wants[i], p_datas[i],
            p_request_ids[i], p_keys[i], p_created_ats[i]) AS c;
    END LOOP;
END
$$
"""

RECORD_MANY = """
CREATE OR REPLACE FUNCTION orchestrator_record_messages(
    p_ids varchar[], p_holders varchar[], p_epochs bigint[], p_seqs integer[], p_kinds varchar[],
    p_instances varchar[], p_replies json[], p_latencies double precision[],
    p_created_ats double precision[], p_request_ids varchar[], p_releases boolean[]
) RETURNS TABLE (idx integer, recorded boolean)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    FOR i IN SELECT t.ord FROM unnest(p_ids) WITH ORDINALITY AS t(id, ord) ORDER BY t.id, t.ord
    LOOP
        RETURN QUERY SELECT i, orchestrator_record_message(
            p_ids[i], p_holders[i], p_epochs[i], p_seqs[i], p_kinds[i], p_instances[i],
            p_replies[i], p_latencies[i], p_created_ats[i], p_request_ids[i], p_releases[i]);
    END LOOP;
END
$$
"""

FUNCTIONS = (CLAIM, RECORD, CLAIM_MANY, RECORD_MANY)
FUNCTION_NAMES = (
    "orchestrator_record_messages",
    "orchestrator_claim_sessions",
    "orchestrator_record_message",
    "orchestrator_claim_session",
)


def upgrade() -> None:
    """Add the lease columns and the entries' status (batch mode: SQLite too), and on
    PostgreSQL the two functions of a send."""
    with op.batch_alter_table("orchestrator_sessions") as batch:
        batch.add_column(sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("holder", sa.String(200), nullable=True))
        batch.add_column(sa.Column("held_until", sa.Float, nullable=True))
    with op.batch_alter_table("orchestrator_messages") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="done"))
        batch.add_column(sa.Column("epoch", sa.BigInteger, nullable=True))
    pending = sa.text("status = 'pending'")
    op.create_index(
        "ix_messages_pending",
        "orchestrator_messages",
        ["session_id"],
        postgresql_where=pending,
        sqlite_where=pending,
    )
    if op.get_bind().dialect.name == "postgresql":
        for function in FUNCTIONS:
            op.execute(function)


def downgrade() -> None:
    """Drop them: pending positions are dropped too (their sends were never acknowledged)."""
    if op.get_bind().dialect.name == "postgresql":
        for name in FUNCTION_NAMES:
            op.execute(f"DROP FUNCTION IF EXISTS {name}")
    op.execute("DELETE FROM orchestrator_messages WHERE status = 'pending'")
    op.drop_index("ix_messages_pending", "orchestrator_messages")
    with op.batch_alter_table("orchestrator_messages") as batch:
        batch.drop_column("epoch")
        batch.drop_column("status")
    with op.batch_alter_table("orchestrator_sessions") as batch:
        batch.drop_column("held_until")
        batch.drop_column("holder")
        batch.drop_column("epoch")
