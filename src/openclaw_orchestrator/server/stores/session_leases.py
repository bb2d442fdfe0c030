"""Session leases: what lets several replicas serve one session, one send at a time.

A session's row carries its lease (:mod:`.tables`): ``holder`` (the replica delivering its
messages now), ``held_until`` (epoch seconds by the database's clock) and ``epoch``, the
fencing token: bumped whenever the lease changes hands, on migration and on close, and sent
to the instance (``X-Session-Epoch``), which refuses a lower one. Every write a holder makes
under its lease is conditional on ``holder`` and ``epoch`` being still its own, so a replica
that lost the lease (paused past it, cut off) can neither record nor deliver.

**Claim, then deliver.** :meth:`SessionLeaseStore.claim_session` takes the lease and, in the
same transaction, claims the message's position: a ``pending`` history row with the message,
its idempotency key and the epoch. Only then is the message delivered; the reply turns the
row ``done`` (:meth:`~SessionLeaseStore.record_message`). A holder that dies in between
leaves the row ``pending``: the next holder finds it (``Claim.orphan``) and settles it
before anything else (the instance answers a redelivery of the same position from its
memory, so it never runs twice). Every execution is thus recorded once, and nothing is
recorded that did not run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ...domain.sessions import MessageRecord, SessionRecord
from ...errors import StaleEpochError

__all__ = ["Claim", "SessionLeaseStore", "lease_lost"]


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim found, the lease held at ``epoch``. At most one of the three is set:
    ``orphan``, a position an earlier holder claimed and never recorded (settle it first);
    ``earlier``, the recorded message of the same idempotency key (answer with it); or
    ``pending``, the position claimed for the message just asked for. None of them: a claim
    that asked for no position (a close)."""

    record: SessionRecord
    epoch: int
    orphan: MessageRecord | None = None
    earlier: MessageRecord | None = None
    pending: MessageRecord | None = None


@runtime_checkable
class SessionLeaseStore(Protocol):
    """The session operations several replicas share (PostgreSQL). Every method is one
    transaction, judged by the database's clock; every write under a lease is conditional
    on ``holder`` and ``epoch`` and raises :func:`lease_lost`'s error when they moved on."""

    async def claim_session(
        self,
        session_id: str,
        holder: str,
        ttl: float,
        *,
        check: Callable[[SessionRecord | None], SessionRecord],
        message: MessageRecord | None,
        sendable_at: float | None = None,
    ) -> Claim | None:
        """Take (or renew) the session's lease for ``ttl`` seconds and, unless an orphan or
        an earlier message with ``message``'s idempotency key is there, claim the next
        position for ``message`` (its ``seq`` and ``instance`` are filled in). With
        ``sendable_at`` (a wall-clock time), a session that is not open at that time (closed,
        or idle past its TTL) is not claimed; ``check`` then says why (it raises: unknown,
        closed, expired), as it does for an unknown one. None while another holder's lease
        is live."""
        ...

    async def renew_session_lease(
        self, session_id: str, holder: str, epoch: int, ttl: float
    ) -> bool:
        """Extend a lease still held at ``epoch``; False when it is not."""
        ...

    async def release_session_lease(self, session_id: str, holder: str, epoch: int) -> None:
        """Let the lease go now (no error when it was lost already)."""
        ...

    async def record_message(
        self,
        record: SessionRecord,
        holder: str,
        epoch: int,
        message: MessageRecord,
        *,
        release: bool,
    ) -> SessionRecord:
        """Turn the pending position ``message.seq`` into ``message`` (its reply, kind and
        instance) and move the session on to it; release the lease too when ``release``."""
        ...

    async def abandon_message(
        self, session_id: str, holder: str, epoch: int, seq: int, *, release: bool
    ) -> None:
        """Drop the pending position ``seq`` (its message did not run); release when
        ``release``."""
        ...

    async def bump_epoch(self, session_id: str, holder: str, epoch: int) -> int:
        """Move the fence on while holding the lease (a migration): the new epoch."""
        ...

    async def record_migration(
        self, record: SessionRecord, holder: str, epoch: int, note: MessageRecord
    ) -> SessionRecord:
        """Record the move ``note`` at position ``note.seq``; a pending position there moves
        one on (the message is delivered after the note), and the session to the note's
        instance."""
        ...

    async def close_leased(
        self, session_id: str, holder: str, epoch: int, closed_at: float
    ) -> tuple[SessionRecord, int]:
        """Close the session under the lease: the state, the time, the epoch bumped (so
        that no message of the old epoch can land on the instance after the close) and
        the lease released; the record and the new epoch."""
        ...

    async def history(
        self, session_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[MessageRecord]:
        """Recorded entries oldest first (the :class:`~.base.Store` method)."""
        ...

    async def orphaned_sessions(self, limit: int) -> list[str]:
        """Open sessions with a pending position and no live lease: their holder died
        between claiming and recording. At most ``limit``."""
        ...


def lease_lost(session_id: str, epoch: int) -> StaleEpochError:
    """The error of a write under a lease that moved on: this replica was paused or cut off
    past its lease and another took the session over; nothing of this write was recorded,
    and the instance refuses the old epoch too."""
    return StaleEpochError(
        f"session {session_id!r}: this replica lost the session's lease (epoch {epoch}) "
        "while serving it; another replica holds it now, and nothing was recorded here",
        field="session_id",
    )
