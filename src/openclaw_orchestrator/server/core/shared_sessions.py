"""Sends and closes of a session shared by several replicas (PostgreSQL), under its lease.

One process serializes a session's sends with an in-process lock (:mod:`.sessions`); replicas
cannot share that lock, so they share the session's *lease* in the database
(:mod:`..stores.session_leases`): any replica accepts any send, takes the lease (waiting,
with short jittered polls, while another replica holds it), claims the message's position,
delivers it fenced with ``Fence(epoch, seq)``, records the reply and lets the lease go.

What happens when something fails half-way:

- **The instance refused the message** (4xx, a handler error, a stale fence): it did not
  run (protocol v1.2: a failed message is not remembered), so its position is dropped.
- **No answer** (timeout, connection lost): it may have run. The position stays claimed
  (``pending``) and the caller gets the error; the next holder settles it first by
  delivering it again at the same position, which the instance answers from its memory if
  it ran (``X-Session-Replayed``) or runs now, and records the reply. A retry with the same
  ``Idempotency-Key`` returns that outcome.
- **The replica died** between claiming and recording: the same, once its lease expires
  (the next send, or the sweeper's :meth:`LeasedSessions.settle_orphans`).
- **The instance cannot be fenced** (an OpenClaw gateway): a position left pending cannot
  be redelivered without risking a second run, so it is recorded as ``interrupted`` (its
  message, no reply) and the session moves on.
- **This replica lost its lease** (paused past it): every write it makes under the old
  epoch is refused (``stale_epoch``), and so are its late calls at the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any

from ...domain.sessions import MessageRecord, SessionRecord, check_sendable
from ...errors import (
    InstanceDownError,
    NotFoundError,
    OrchestratorError,
    StaleEpochError,
    TimeoutExceededError,
)
from ..drivers.base import Fence
from ..logs import get_logger
from ..stores.session_leases import Claim, SessionLeaseStore
from .dispatcher import Streaming
from .session_instances import SessionInstances

__all__ = ["FIRST_POLL", "LAST_POLL", "LeasedSessions", "Sent"]

log = get_logger("sessions")

FIRST_POLL = 0.002
"""Seconds before the first retry of a lease another replica holds; doubling from there."""
LAST_POLL = 0.05
"""The longest wait between tries of a busy lease."""
ORPHANS_PER_SWEEP = 100
"""Sessions left pending by a dead holder that one sweep settles, at most."""


@dataclass(frozen=True, slots=True)
class Sent:
    """A send's outcome: the recorded message, the instance it moved from (migration) and
    whether it is an earlier send's outcome (the same idempotency key)."""

    message: MessageRecord
    moved_from: str | None = None
    replayed: bool = False


def _present(session_id: str) -> Callable[[SessionRecord | None], SessionRecord]:
    """A claim's check that only needs the session to exist (the sweeper, a close)."""

    def check(record: SessionRecord | None) -> SessionRecord:
        if record is None:
            raise NotFoundError(f"no session {session_id!r}", field="session_id")
        return record

    return check


@dataclass(slots=True)
class _Held:
    """A send under the lease, as it goes: the session, the epoch (a migration moves it
    on) and the pending message (a migration moves it one position on)."""

    record: SessionRecord
    epoch: int
    pending: MessageRecord

    def fence(self) -> Fence:
        """The pending message's fence."""
        return Fence(self.epoch, self.pending.seq)


@dataclass(slots=True)
class _Hold:
    """One operation's share of :attr:`LeasedSessions.leases_held`: one from its first
    successful claim until it ends (its lease let go by then, or left to run out)."""

    owner: LeasedSessions
    counted: bool = False

    def took(self) -> None:
        """The operation's claim succeeded (again: a renewal counts once)."""
        if not self.counted:
            self.counted = True
            self.owner.leases_held += 1


@dataclass(slots=True, eq=False, repr=False)
class LeasedSessions:
    """Sends and closes under the session's lease, for replicas sharing a store."""

    store: SessionLeaseStore
    instances: SessionInstances
    _: KW_ONLY
    holder: str
    lease_ttl: float
    clock: Callable[[], float]
    wall_clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    leases_held: int = field(default=0, init=False)
    """Session leases this replica holds now (sends, closes and settlements between their
    claim and their end): what a metrics scrape reads. One per session at most, as this
    process runs one operation per session at a time (:mod:`.sessions`' lock); a count,
    never the ids, so it costs two integer updates per operation."""

    def __repr__(self) -> str:
        return (
            f"<LeasedSessions holder={self.holder} lease_ttl={self.lease_ttl:g}s "
            f"held={self.leases_held}>"
        )

    @contextlib.contextmanager
    def _holding(self) -> Iterator[_Hold]:
        """Count the operation in :attr:`leases_held` from its claim to its end."""
        hold = _Hold(self)
        try:
            yield hold
        finally:
            if hold.counted:
                self.leases_held -= 1

    # -- the lease -------------------------------------------------------------------------

    async def _claim(
        self,
        session_id: str,
        deadline: float,
        check: Callable[[SessionRecord | None], SessionRecord],
        message: MessageRecord | None,
        hold: _Hold,
        *,
        sendable: bool = False,
    ) -> Claim:
        """The lease (and a position for ``message``), waiting while another replica
        holds it; ``timeout`` (504) when it is still held at the deadline."""
        delay = FIRST_POLL
        while True:
            claim = await self.store.claim_session(
                session_id,
                self.holder,
                self.lease_ttl,
                check=check,
                message=message,
                sendable_at=self.wall_clock() if sendable else None,
            )
            if claim is not None:
                hold.took()
                return claim
            pause = delay * self.rng.uniform(0.5, 1.5)
            if self.clock() + pause >= deadline:
                raise TimeoutExceededError(
                    f"session {session_id!r} was busy on another replica until the deadline",
                    field="session_id",
                )
            await self.sleep(pause)
            delay = min(delay * 2, LAST_POLL)

    @contextlib.asynccontextmanager
    async def _renewing(self, held: _Held) -> AsyncIterator[None]:
        """Keep the lease while the block runs (a slow instance): renewed every third of
        its TTL, at the epoch ``held`` has then (a migration moves it on), by a task started
        only once the block outlives the first third."""

        async def renew() -> None:
            while await self.store.renew_session_lease(
                held.record.id, self.holder, held.epoch, self.lease_ttl
            ):
                await self.sleep(self.lease_ttl / 3)
            log.warning("sessions.lease_lost", session_id=held.record.id, epoch=held.epoch)

        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        timer = loop.call_later(self.lease_ttl / 3, lambda: tasks.append(loop.create_task(renew())))
        try:
            yield
        finally:
            timer.cancel()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OrchestratorError):
                    await task

    async def _release(self, session_id: str, epoch: int) -> None:
        with contextlib.suppress(OrchestratorError):  # it expires by itself anyway
            await self.store.release_session_lease(session_id, self.holder, epoch)

    # -- send ------------------------------------------------------------------------------

    async def send(
        self,
        session_id: str,
        data: Any,
        *,
        deadline: float,
        idempotency_key: str | None,
        request_id: str,
        stream: Streaming | None = None,
    ) -> Sent:
        """Deliver ``data`` in order under the lease (streamed to ``stream`` when given);
        acknowledged once recorded."""
        ask = MessageRecord(
            session_id=session_id,
            seq=0,  # the claim fills in the position
            kind="message",
            instance="",
            data=data,
            request_id=request_id,
            idempotency_key=idempotency_key,
            created_at=self.wall_clock(),
        )

        def sendable(record: SessionRecord | None) -> SessionRecord:
            return check_sendable(record, session_id, self.wall_clock())

        with self._holding() as hold:
            while True:
                claim = await self._claim(session_id, deadline, sendable, ask, hold, sendable=True)
                if claim.orphan is not None:
                    settled = await self._settle(claim, deadline, request_id)
                    if settled is not None and idempotency_key is not None:
                        if settled.idempotency_key == idempotency_key:
                            await self._release(session_id, claim.epoch)
                            return Sent(settled, replayed=True)
                    continue  # the lease is still ours: claim our own position now
                if claim.earlier is not None:
                    await self._release(session_id, claim.epoch)
                    return Sent(claim.earlier, replayed=True)
                assert claim.pending is not None  # the claim asked for a position
                return await self._deliver(claim, claim.pending, deadline, request_id, stream)

    async def _deliver(
        self,
        claim: Claim,
        pending: MessageRecord,
        deadline: float,
        request_id: str,
        stream: Streaming | None,
    ) -> Sent:
        held = _Held(claim.record, claim.epoch, pending)
        moved_from: str | None = None
        async with self._renewing(held):
            try:
                if self.instances.is_down(held.record.instance):
                    if held.record.failover != "migrate":
                        raise InstanceDownError(
                            f"instance {held.record.instance} of session {held.record.id} is "
                            "down; the session stays pinned (spawn with failover 'migrate' "
                            "to move it)",
                            instance=held.record.instance,
                        )
                    moved_from = held.record.instance
                    await self._migrate(held, deadline, request_id)
                started = self.clock()
                try:
                    reply = await self.instances.deliver(
                        held.record,
                        pending.data,
                        deadline,
                        request_id,
                        fence=held.fence(),
                        stream=stream,
                    )
                except InstanceDownError:
                    # Refused by a dead instance: move and resend, as one process does (a
                    # timeout could have run it, so it is never migrated on; nor a message
                    # whose output had begun to stream).
                    if (
                        held.record.failover != "migrate"
                        or moved_from is not None
                        or (stream is not None and stream.started)
                    ):
                        raise
                    moved_from = held.record.instance
                    await self._migrate(held, deadline, request_id)
                    started = self.clock()
                    reply = await self.instances.deliver(
                        held.record,
                        pending.data,
                        deadline,
                        request_id,
                        fence=held.fence(),
                        stream=stream,
                    )
            except BaseException as exc:
                await self._failed(held, exc)
                raise
            done = replace(
                held.pending,
                reply=reply,
                instance=held.record.instance,
                latency_ms=round((self.clock() - started) * 1000, 3),
                created_at=self.wall_clock(),
            )
            try:
                await self.store.record_message(
                    held.record, self.holder, held.epoch, done, release=True
                )
            except StaleEpochError:
                # Paused past the lease: the new holder settled this position by
                # redelivering it (the instance answered from memory). Then it ran once and
                # is recorded, and this caller may have its answer; otherwise, refused.
                settled = await self._settled_by_successor(held.pending)
                if settled is None:
                    raise
                return Sent(settled, moved_from=moved_from)
        return Sent(done, moved_from=moved_from)

    async def _settled_by_successor(self, pending: MessageRecord) -> MessageRecord | None:
        """The entry recorded at ``pending``'s position if it is ``pending``'s message (the
        same request), else None."""
        found = await self.history_at(pending.session_id, pending.seq)
        if found is None or found.kind != "message" or found.request_id != pending.request_id:
            return None
        return found if found.data == pending.data else None

    async def history_at(self, session_id: str, seq: int) -> MessageRecord | None:
        """The recorded entry at position ``seq`` (positions have no gaps: an abandoned one
        is taken again by the next message)."""
        rows = await self.store.history(session_id, offset=seq - 1, limit=1)
        return rows[0] if rows and rows[0].seq == seq else None

    async def _failed(self, held: _Held, exc: BaseException) -> None:
        """After a failed delivery, let the lease go, and: drop the position if the message
        did not run; keep it pending if it may have and the instance fences (the next holder
        settles it); record it as ``interrupted`` if it may have and the instance cannot
        fence (see the module docstring)."""
        record, pending = held.record, held.pending
        uncertain = isinstance(exc, TimeoutExceededError | InstanceDownError) or not isinstance(
            exc, OrchestratorError
        )
        try:
            if not uncertain:
                await self.store.abandon_message(
                    record.id, self.holder, held.epoch, pending.seq, release=True
                )
                return
            log.warning(
                "sessions.outcome_unknown",
                session_id=record.id,
                seq=pending.seq,
                reason=type(exc).__name__,
            )
            if self.instances.fences(record.instance):
                await self.store.release_session_lease(record.id, self.holder, held.epoch)
            else:
                unknown = replace(pending, kind="interrupted", created_at=self.wall_clock())
                await self.store.record_message(
                    record, self.holder, held.epoch, unknown, release=True
                )
        except OrchestratorError as cleanup:  # the lease expires by itself; keep exc
            log.warning("sessions.release_failed", session_id=record.id, error=cleanup.code)

    async def _migrate(self, held: _Held, deadline: float, request_id: str) -> None:
        """Move the session under the lease: the epoch bumped first (so the old instance
        and any stale sender are fenced off, and ``held`` follows it at once), the history
        restored up to the position before the pending message, the move recorded there and
        the message one on."""
        record = held.record
        held.epoch = await self.store.bump_epoch(record.id, self.holder, held.epoch)
        note = await self.instances.move(
            record, deadline, request_id, fence=Fence(held.epoch, record.messages)
        )
        held.record = await self.store.record_migration(record, self.holder, held.epoch, note)
        held.pending = replace(held.pending, seq=note.seq + 1, instance=note.instance)

    # -- orphans ---------------------------------------------------------------------------

    async def _settle(self, claim: Claim, deadline: float, request_id: str) -> MessageRecord | None:
        """Settle the position a dead or failed holder left pending, under our lease (kept):
        redelivered at the same position to an instance that fences (it answers from its
        memory if the message ran, else runs it now) and recorded; recorded as
        ``interrupted`` where that is not safe; dropped if the instance refuses it (it did
        not run). The settled entry, or None when dropped."""
        record, epoch, orphan = claim.record, claim.epoch, claim.orphan
        assert orphan is not None  # only called for a claim with an orphan
        fenced = self.instances.fences(record.instance)
        gone = self.instances.is_down(record.instance)
        if fenced and not gone:
            started = self.clock()
            try:
                async with self._renewing(_Held(record, epoch, orphan)):
                    reply = await self.instances.deliver(
                        record, orphan.data, deadline, request_id, fence=Fence(epoch, orphan.seq)
                    )
            except (TimeoutExceededError, InstanceDownError):
                await self._release(record.id, epoch)
                raise
            except OrchestratorError as exc:
                if isinstance(exc, StaleEpochError):
                    await self._release(record.id, epoch)
                    raise
                log.info("sessions.orphan_refused", session_id=record.id, seq=orphan.seq)
                await self.store.abandon_message(
                    record.id, self.holder, epoch, orphan.seq, release=False
                )
                return None
            done = replace(
                orphan,
                reply=reply,
                latency_ms=round((self.clock() - started) * 1000, 3),
                created_at=self.wall_clock(),
            )
            log.warning("sessions.redelivered", session_id=record.id, seq=orphan.seq)
        elif fenced and record.failover != "migrate":
            await self._release(record.id, epoch)
            raise InstanceDownError(
                f"instance {record.instance} of session {record.id} is down with message "
                f"{orphan.seq} unsettled; the session stays pinned",
                instance=record.instance,
            )
        else:
            done = replace(orphan, kind="interrupted", reply=None, created_at=self.wall_clock())
            log.warning("sessions.interrupted", session_id=record.id, seq=orphan.seq)
        await self.store.record_message(record, self.holder, epoch, done, release=False)
        return done

    async def orphaned(self) -> list[str]:
        """Sessions whose holder died between claiming and recording (no live lease), at
        most :data:`ORPHANS_PER_SWEEP`: for the sweeper to settle."""
        return await self.store.orphaned_sessions(ORPHANS_PER_SWEEP)

    async def settle_orphan(self, session_id: str, deadline: float, request_id: str) -> bool:
        """Settle ``session_id``'s pending position if it still has one and its lease is
        free; whether it did. The caller holds this process's lock of the session, as a send
        does: a send of this process and the sweeper share one holder id, so the lease alone
        does not keep them apart. Anything that stops it now (the instance is unreachable,
        another replica holds the session) leaves it for the next sweep."""

        try:
            with self._holding() as hold:
                claim = await self.store.claim_session(
                    session_id,
                    self.holder,
                    self.lease_ttl,
                    check=_present(session_id),
                    message=None,
                )
                if claim is None:
                    return False
                hold.took()
                if claim.orphan is not None:
                    await self._settle(claim, deadline, request_id)
                await self._release(session_id, claim.epoch)
        except OrchestratorError as exc:
            log.info("sessions.orphan_unsettled", session_id=session_id, error=exc.code)
            return False
        return claim.orphan is not None

    # -- close -----------------------------------------------------------------------------

    async def close(
        self, session_id: str, *, deadline: float, request_id: str
    ) -> tuple[SessionRecord, int | None]:
        """Close under the lease (after any send in flight, on any replica), settling a
        pending position first; the record and the epoch the instance is told to close at
        (None when the session was closed already: nothing to tell)."""

        with self._holding() as hold:
            claim = await self._claim(session_id, deadline, _present(session_id), None, hold)
            closed_at = self.wall_clock()  # after the send in flight: it is recorded before
            if claim.record.state != "open":
                await self._release(session_id, claim.epoch)
                return claim.record, None
            if claim.orphan is not None:
                try:
                    await self._settle(claim, deadline, request_id)
                except OrchestratorError:
                    claim = await self._claim(
                        session_id, deadline, _present(session_id), None, hold
                    )
                    if claim.orphan is not None:  # unreachable now: closing settles it so
                        orphan = replace(
                            claim.orphan, kind="interrupted", reply=None, created_at=closed_at
                        )
                        await self.store.record_message(
                            claim.record, self.holder, claim.epoch, orphan, release=False
                        )
            return await self.store.close_leased(session_id, self.holder, claim.epoch, closed_at)
