"""The store interface the session service depends on.

Every method is one transaction. ``append`` is the durability point: when it returns, the
message and its reply are committed, and only then is a send acknowledged.

A store that cannot reach its database or write to its disk raises
``StorageUnavailableError`` (503) or ``StorageFullError`` (507) from any method, never a
driver's own exception, and stays in that state until it has written again by itself
(:mod:`.health`); :meth:`Store.check_writable` lets a caller refuse work before doing
something that could not be recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from ...domain.sessions import MessageRecord, SessionRecord
from ...errors import ConflictError
from .health import StoreStatus

if TYPE_CHECKING:
    from .callbacks import CallbackStore
    from .runs import RunStore

__all__ = [
    "DEFAULT_SESSION_QUERY",
    "SESSION_LIST_LIMIT",
    "SessionQuery",
    "Store",
    "append_conflict",
    "appended",
]

SESSION_LIST_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class SessionQuery:
    """Which sessions :meth:`Store.list_sessions` returns: those matching every filter given
    (None matches any), most recently active first, at most ``limit``. One value, so that
    both stores read a listing from one definition (:func:`.rows.select_sessions`)."""

    instance: str | None = None
    state: str | None = None
    active_since: float | None = None
    limit: int = SESSION_LIST_LIMIT


DEFAULT_SESSION_QUERY = SessionQuery()


class Store(Protocol):
    """Sessions and their histories, and (``runs``) durable runs."""

    @property
    def runs(self) -> RunStore:
        """The store's durable runs (:mod:`.runs`)."""
        ...

    @property
    def callbacks(self) -> CallbackStore:
        """The durable runs' callbacks (:mod:`.callbacks`)."""
        ...

    async def open(self) -> None:
        """Create what is missing (tables, indexes) and get ready."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...

    def check_writable(self) -> None:
        """Raise ``StorageUnavailableError``/``StorageFullError`` (with ``retry_after``)
        while the store is known to be unable to write. No I/O to the database: cheap
        enough to call before every send."""
        ...

    def status(self) -> StoreStatus:
        """ok, unavailable or full, and why (for the health check)."""
        ...

    async def create_session(self, record: SessionRecord) -> None:
        """Insert a new session; ``SessionExistsError`` when the id is taken."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""
        ...

    async def list_sessions(
        self, query: SessionQuery = DEFAULT_SESSION_QUERY
    ) -> list[SessionRecord]:
        """Sessions matching every filter of ``query``, most recently active first."""
        ...

    async def append(self, record: SessionRecord, *entries: MessageRecord) -> SessionRecord:
        """Commit ``entries`` (consecutive seqs after ``record.messages``) and the session's
        new count, last activity and instance; returns the updated record."""
        ...

    async def find_by_key(self, session_id: str, idempotency_key: str) -> MessageRecord | None:
        """The message sent earlier with this idempotency key, if any."""
        ...

    async def history(
        self, session_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[MessageRecord]:
        """Entries oldest first, from ``offset`` (0-based), at most ``limit``."""
        ...

    async def set_state(
        self, session_id: str, state: str, *, closed_at: float
    ) -> SessionRecord | None:
        """Close or expire a session; returns it, or None when unknown."""
        ...

    async def expire_idle(self, now: float) -> list[SessionRecord]:
        """Mark open sessions idle past their TTL as expired; returns them."""
        ...

    async def purge(self, closed_before: float) -> int:
        """Delete sessions (and histories) closed or expired before ``closed_before``."""
        ...


def appended(record: SessionRecord, entries: tuple[MessageRecord, ...]) -> SessionRecord:
    """What :meth:`Store.append` makes of ``record``: the count moved on by ``entries``,
    the last entry's time and instance (unchanged without entries)."""
    if not entries:
        return record
    last = entries[-1]
    return replace(
        record,
        messages=record.messages + len(entries),
        last_active_at=last.created_at,
        instance=last.instance,
    )


def append_conflict(record: SessionRecord) -> ConflictError:
    """The error of an append that hit a constraint: its position or its idempotency key
    was taken by another writer (or the session row is gone)."""
    return ConflictError(
        f"session {record.id!r} was written concurrently (position {record.messages + 1} "
        "is taken, or the idempotency key was used); nothing was recorded",
        field="session_id",
    )
