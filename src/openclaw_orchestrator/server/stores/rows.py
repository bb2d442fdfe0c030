"""Records and rows: the one mapping between the domain's records and the tables' columns,
used by both stores, so that a column added to :mod:`.tables` is mapped in one place.

A row is a tuple in the order of :data:`SESSION_COLUMNS` or :data:`MESSAGE_COLUMNS` (the
stores select and insert exactly these, by name). JSON columns are the one difference
between the stores: plain ``sqlite3`` moves them as text (:data:`JSON_AS_TEXT`), while
SQLAlchemy's JSON type converts them itself (:data:`JSON_AS_VALUES`).

:func:`select_sessions` is the one listing query, the same SQL text on both databases.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...domain.sessions import MessageRecord, SessionRecord
from .base import SessionQuery
from .tables import sessions

__all__ = [
    "JSON_AS_TEXT",
    "JSON_AS_VALUES",
    "MESSAGE_COLUMNS",
    "SESSION_COLUMNS",
    "RowMapper",
    "select_sessions",
]

SESSION_COLUMNS = (
    "id", "instance", "token_hash", "state", "ttl", "failover", "metadata", "created_at",
    "last_active_at", "closed_at", "messages",
)  # fmt: skip
MESSAGE_COLUMNS = (
    "session_id", "seq", "kind", "instance", "data", "reply", "latency_ms", "request_id",
    "idempotency_key", "created_at",
)  # fmt: skip


def _same(value: Any) -> Any:
    return value


def _loads(value: Any) -> Any:
    # The JSON columns have NUMERIC affinity in SQLite: the text of a bare number is stored
    # as that number and comes back as int or float (SQLAlchemy reads it the same way).
    return json.loads(value) if isinstance(value, str | bytes) else value


@dataclass(frozen=True, slots=True)
class RowMapper:
    """Records to rows and back; ``encode``/``decode`` carry the JSON columns."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]

    def session_row(self, r: SessionRecord) -> tuple[Any, ...]:
        """``r`` in :data:`SESSION_COLUMNS` order."""
        return (
            r.id, r.instance, r.token_hash, r.state, r.ttl, r.failover,
            self.encode(dict(r.metadata)), r.created_at, r.last_active_at, r.closed_at,
            r.messages,
        )  # fmt: skip

    def session(self, row: Sequence[Any]) -> SessionRecord:
        """The record of a row selected as :data:`SESSION_COLUMNS`."""
        return SessionRecord(
            id=row[0], instance=row[1], token_hash=row[2], state=row[3], ttl=row[4],
            failover=row[5], metadata=self.decode(row[6]) or {}, created_at=row[7],
            last_active_at=row[8], closed_at=row[9], messages=row[10],
        )  # fmt: skip

    def message_row(self, e: MessageRecord) -> tuple[Any, ...]:
        """``e`` in :data:`MESSAGE_COLUMNS` order."""
        return (
            e.session_id, e.seq, e.kind, e.instance, self.encode(e.data), self.encode(e.reply),
            e.latency_ms, e.request_id, e.idempotency_key, e.created_at,
        )  # fmt: skip

    def message(self, row: Sequence[Any]) -> MessageRecord:
        """The record of a row selected as :data:`MESSAGE_COLUMNS`."""
        return MessageRecord(
            session_id=row[0], seq=row[1], kind=row[2], instance=row[3],
            data=self.decode(row[4]), reply=self.decode(row[5]), latency_ms=row[6],
            request_id=row[7], idempotency_key=row[8], created_at=row[9],
        )  # fmt: skip


JSON_AS_TEXT = RowMapper(json.dumps, _loads)
"""Plain ``sqlite3``: JSON as text, written as SQLAlchemy's JSON type writes it (``None``
as JSON ``null``), so files written through SQLAlchemy (as earlier versions did) read the
same."""

JSON_AS_VALUES = RowMapper(_same, _same)
"""SQLAlchemy Core: its JSON type encodes and decodes."""


def select_sessions(query: SessionQuery) -> tuple[str, dict[str, Any]]:
    """The SELECT of :data:`SESSION_COLUMNS` that ``query`` asks for, and its parameters:
    the same text on SQLite and PostgreSQL (named parameters), so the two stores cannot
    disagree on what a filter means or on the order."""
    filters = (
        ("instance", "instance = :instance", query.instance),
        ("state", "state = :state", query.state),
        ("active_since", "last_active_at >= :active_since", query.active_since),
    )
    given = [(name, condition, value) for name, condition, value in filters if value is not None]
    sql = f"SELECT {', '.join(SESSION_COLUMNS)} FROM {sessions.name}"  # noqa: S608  # constants
    if given:
        sql += " WHERE " + " AND ".join(condition for _, condition, _ in given)
    params = {name: value for name, _, value in given}
    return sql + " ORDER BY last_active_at DESC LIMIT :limit", {**params, "limit": query.limit}
