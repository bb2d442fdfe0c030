"""Sessions: spawn, send in order, history, close, expiry and migration.

A session is pinned to one instance. Sends to one session run one at a time, in arrival
order (an asyncio lock per session, taken before anything is read); sends to different
sessions run concurrently. A send is acknowledged only after the store has committed its
message and reply. With ``failover: "migrate"`` a send to a session whose instance is down
moves it: the history is replayed to a healthy instance, the move is recorded, and the
message is delivered there.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ...domain.sessions import (
    MessageRecord,
    SessionRecord,
    as_of,
    check_sendable,
    check_token,
    hash_token,
    make_token,
)
from ...errors import (
    ForbiddenError,
    InstanceDownError,
    InvalidRequestError,
    NotFoundError,
    OrchestratorError,
    StorageUnavailableError,
)
from ...models import (
    MAX_HISTORY_OFFSET,
    SESSION_ID_PATTERN,
    HistoryEntry,
    HistoryPage,
    SendResult,
    SessionInfo,
    SessionList,
    SpawnRequest,
    SpawnResult,
)
from ...settings import Settings
from ..drivers.base import Fence
from ..logs import get_logger
from ..stores.base import SessionQuery, Store
from ..stores.leases import LeaseStore, holder_id
from ..stores.session_leases import SessionLeaseStore
from .clock import moment, moment_or_none
from .dispatcher import Dispatcher, Streaming
from .interfaces import InstanceRegistry
from .leadership import Leadership
from .session_instances import Placement, SessionInstances
from .shared_sessions import LeasedSessions

__all__ = ["MAX_HISTORY_PAGE", "SessionService"]

log = get_logger("sessions")

TOKEN_BYTES = 24
MAX_HISTORY_PAGE = 1000
SWEEPER = "session-sweeper"
"""With replicas, the sweeper (expiry, purge, orphans) runs on the holder of the lease
``leader:session-sweeper`` (:class:`~.leadership.Leadership`) alone."""
_SESSION_ID = re.compile(SESSION_ID_PATTERN)


def _info(record: SessionRecord) -> dict[str, Any]:
    return {
        "session_id": record.id,
        "instance": record.instance,
        "state": record.state,
        "metadata": dict(record.metadata),
        "ttl": record.ttl,
        "failover": record.failover,
        "created_at": moment_or_none(record.created_at),
        "last_active_at": moment_or_none(record.last_active_at),
        "expires_at": moment_or_none(record.expires_at),
        "closed_at": moment_or_none(record.closed_at),
        "messages": record.messages,
    }


def _entry(m: MessageRecord) -> HistoryEntry:
    return HistoryEntry(
        seq=m.seq,
        kind=m.kind,
        data=m.data,
        reply=m.reply,
        instance=m.instance,
        latency_ms=m.latency_ms,
        request_id=m.request_id,
        created_at=moment(m.created_at),
    )


def _streamed(stream: Streaming | None) -> bool:
    """Whether part of a streaming send's output reached the caller already."""
    return stream is not None and stream.started


@dataclass(slots=True)
class _Gate:
    """A per-session lock and how many sends hold or wait for it (to drop idle gates)."""

    lock: asyncio.Lock
    users: int = 0


class SessionService:
    """Sessions over the registry, reaching instances through the dispatcher (its deadlines,
    load count and passive health) and placing new sessions with ``place``."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        registry: InstanceRegistry,
        store: Store,
        settings: Settings,
        *,
        place: Placement,
        wall_clock: Callable[[], float] = time.time,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._dispatcher = dispatcher
        self._store = store
        self._settings = settings.sessions
        self._instances = SessionInstances(
            dispatcher,
            registry,
            store,
            placement=place,
            default_policy=self._settings.policy,
            close_timeout=settings.health.probe_timeout,
            wall_clock=wall_clock,
        )
        self._now = wall_clock
        self._token_bytes = token_bytes
        self._gates: dict[str, _Gate] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._leader: Leadership | None = None  # replicas: the sweeper's lease, once started
        self._holder = holder_id()
        # A store the replicas share: sends and closes go under the session's lease.
        self._leased = (
            LeasedSessions(
                store,
                self._instances,
                holder=self._holder,
                lease_ttl=self._settings.lease_ttl,
                clock=dispatcher.clock,
                wall_clock=wall_clock,
            )
            if isinstance(store, SessionLeaseStore)
            else None
        )

    def __repr__(self) -> str:
        return f"<SessionService [{len(self._gates)} busy] store={self._store!r}>"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the expiry sweeper: here, or with replicas on the one that leads."""
        if self._sweeper is None:
            if self._leased is not None and isinstance(self._store, LeaseStore):
                leader = self._leader = Leadership(self._store, SWEEPER, holder=self._holder)
                sweeping = leader.run(lambda _lease: self._sweep_loop())
            else:
                sweeping = self._sweep_loop()
            self._sweeper = asyncio.create_task(sweeping, name="session-sweeper")

    def leading(self) -> dict[str, bool]:
        """Per leader role (``session-sweeper``): whether this replica does that work now,
        i.e. holds its lease (replicas), or runs it at all (one process: the only one that
        could). What a metrics scrape reads."""
        if self._leader is not None:
            return {self._leader.role: self._leader.is_leader}
        return {SWEEPER: self._sweeper is not None}

    @property
    def leases_held(self) -> int | None:
        """Session leases this replica holds now; None where the store has none (one
        process serializes a session's sends by its own lock). What a metrics scrape reads."""
        return self._leased.leases_held if self._leased is not None else None

    async def aclose(self) -> None:
        """Stop the sweeper (the store is closed by whoever opened it)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    async def _sweep_loop(self) -> None:
        while True:
            try:
                self._store.check_writable()
                await self.sweep()
            except StorageUnavailableError as exc:  # the store recovers by itself
                log.warning("sessions.sweep_skipped", error=exc.code, reason=exc.message)
            except Exception:  # anything else must not end the sweeper either
                log.exception("sessions.sweep_failed")
            await asyncio.sleep(self._settings.sweep_interval)

    async def sweep(self) -> tuple[int, int]:
        """Expire idle sessions, purge old ones and (replicas) settle the positions dead
        replicas left pending; returns (expired, purged)."""
        if self._leased is not None:
            settled = 0
            for session_id in await self._leased.orphaned():
                async with self._gate(session_id):  # never beside this process's own send
                    settled += await self._leased.settle_orphan(
                        session_id,
                        self._dispatcher.deadline(None),
                        f"sweep-{secrets.token_hex(4)}",
                    )
            if settled:
                log.info("sessions.orphans_settled", count=settled)
        now = self._now()
        expired = await self._store.expire_idle(now)
        for record in expired:
            log.info("sessions.expired", session_id=record.id, instance=record.instance)
            await self._instances.close(record)
        purged = await self._store.purge(now - self._settings.retention)
        if purged:
            log.info("sessions.purged", count=purged)
        return len(expired), purged

    # -- access ----------------------------------------------------------------------------

    async def authorize(self, session_id: str, token: str) -> None:
        """Allow ``token`` for ``session_id`` only, and only while the session is open and
        not idle past its TTL (checked now, not left to the sweeper)."""
        if not _SESSION_ID.fullmatch(session_id):
            raise ForbiddenError("this session token does not grant that session")
        check_token(await self._store.get_session(session_id), token, self._now())

    # -- spawn -----------------------------------------------------------------------------

    async def spawn(self, request: SpawnRequest) -> SpawnResult:
        """Create a session pinned to a healthy instance; the token is returned this once."""
        session_id = request.session_id or f"s_{secrets.token_hex(8)}"
        instance = self._instances.place(session_id, request)
        token = make_token(self._token_bytes(TOKEN_BYTES))
        now = self._now()
        record = SessionRecord(
            id=session_id,
            instance=instance,
            token_hash=hash_token(token),
            ttl=request.ttl or self._settings.ttl,
            failover=request.failover,
            metadata=request.metadata,
            created_at=now,
            last_active_at=now,
        )
        await self._store.create_session(record)
        log.info("sessions.spawned", session_id=session_id, instance=instance)
        return SpawnResult(**_info(record), token=token)

    # -- send ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _gate(self, session_id: str) -> AsyncIterator[None]:
        gate = self._gates.setdefault(session_id, _Gate(asyncio.Lock()))
        gate.users += 1
        try:
            async with gate.lock:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[session_id]

    async def send(
        self,
        session_id: str,
        data: Any,
        *,
        timeout: float | None,
        idempotency_key: str | None,
        request_id: str,
        stream: Streaming | None = None,
    ) -> SendResult:
        """:meth:`_send`, observed: a ``session.send`` span and ``orchestrator_session_sends``
        (conflicts and migrations too)."""
        sending = self._send(
            session_id,
            data,
            timeout=timeout,
            idempotency_key=idempotency_key,
            request_id=request_id,
            stream=stream,
        )
        observer = self._dispatcher.observer
        if not observer.is_on:
            return await sending
        with observer.span("session.send", {"session.id": session_id}):
            try:
                sent = await sending
            except OrchestratorError as exc:
                observer.session_send(exc.instance, exc.code, None)
                raise
        observer.session_send(sent.instance, "ok", sent.migrated_from)
        return sent

    async def _send(
        self,
        session_id: str,
        data: Any,
        *,
        timeout: float | None,
        idempotency_key: str | None,
        request_id: str,
        stream: Streaming | None = None,
    ) -> SendResult:
        """Deliver ``data`` to the session's instance, in order; acknowledge once durable.
        With ``stream`` the instance streams its output there as it goes; the history
        records the final reply as always, and once part of the output has reached the
        caller the session is not migrated to send it again."""
        self._dispatcher.check_hops()
        deadline = self._dispatcher.deadline(timeout)
        if self._leased is not None:
            self._store.check_writable()
            async with self._gate(session_id):  # one waiter per replica polls the lease
                sent = await self._leased.send(
                    session_id,
                    data,
                    deadline=deadline,
                    idempotency_key=idempotency_key,
                    request_id=request_id,
                    stream=stream,
                )
            return self._result(
                sent.message,
                request_id=request_id,
                replayed=sent.replayed,
                moved_from=sent.moved_from,
            )
        async with self._gate(session_id):
            record = check_sendable(
                await self._store.get_session(session_id), session_id, self._now()
            )
            if idempotency_key is not None:
                earlier = await self._store.find_by_key(session_id, idempotency_key)
                if earlier is not None:
                    return self._result(earlier, request_id=request_id, replayed=True)
            # Nothing is delivered that could not be recorded: 503/507 while the store
            # cannot write (a cached flag; see stores/health.py).
            self._store.check_writable()
            record, moved_from = await self._instances.ensure_reachable(
                record, deadline, request_id
            )
            started = self._dispatcher.clock()
            try:
                reply = await self._instances.deliver(
                    record, data, deadline, request_id, stream=stream
                )
            except InstanceDownError:
                # Refused: the message never arrived, so moving and resending cannot
                # duplicate it (a timeout could have, so it is never migrated on; nor can
                # a message whose output had begun to stream).
                if record.failover != "migrate" or moved_from is not None or _streamed(stream):
                    raise
                moved_from = record.instance
                record = await self._instances.migrate(record, deadline, request_id)
                started = self._dispatcher.clock()
                reply = await self._instances.deliver(
                    record, data, deadline, request_id, stream=stream
                )
            message = MessageRecord(
                session_id=session_id,
                seq=record.messages + 1,
                kind="message",
                instance=record.instance,
                data=data,
                reply=reply,
                latency_ms=round((self._dispatcher.clock() - started) * 1000, 3),
                request_id=request_id,
                idempotency_key=idempotency_key,
                created_at=self._now(),
            )
            engine = getattr(self._store, "ENGINE", "")
            with self._dispatcher.observer.span("store.commit", {"db.system": engine}):
                await self._store.append(record, message)
        return self._result(message, request_id=request_id, moved_from=moved_from)

    def _result(
        self,
        m: MessageRecord,
        *,
        request_id: str,
        replayed: bool = False,
        moved_from: str | None = None,
    ) -> SendResult:
        return SendResult(
            session_id=m.session_id,
            seq=m.seq,
            instance=m.instance,
            reply=m.reply,
            latency_ms=m.latency_ms or 0.0,
            request_id=m.request_id if replayed and m.request_id else request_id,
            migrated_from=moved_from,
            replayed=replayed,
        )

    # -- read and close --------------------------------------------------------------------

    async def _get(self, session_id: str) -> SessionRecord:
        record = await self._store.get_session(session_id)
        if record is None:
            raise NotFoundError(f"no session {session_id!r}", field="session_id")
        return record

    async def info(self, session_id: str) -> SessionInfo:
        """One session's state, as of now (idle past its TTL: ``expired``)."""
        return SessionInfo(**_info(as_of(await self._get(session_id), self._now())))

    async def history(self, session_id: str, *, offset: int, limit: int) -> HistoryPage:
        """A page of the history, oldest first."""
        if not 1 <= limit <= MAX_HISTORY_PAGE:
            raise InvalidRequestError(f"limit must be 1 to {MAX_HISTORY_PAGE}", field="limit")
        if not 0 <= offset <= MAX_HISTORY_OFFSET:
            raise InvalidRequestError(f"offset must be 0 to {MAX_HISTORY_OFFSET}", field="offset")
        record = await self._get(session_id)
        entries = await self._store.history(session_id, offset=offset, limit=limit)
        end = offset + len(entries)
        return HistoryPage(
            session_id=session_id,
            messages=[_entry(m) for m in entries],
            total=record.messages,
            offset=offset,
            limit=limit,
            next_offset=end if end < record.messages else None,
        )

    async def list(
        self, *, instance: str | None, state: str | None, active_within: float | None
    ) -> SessionList:
        """Sessions by instance, state (as of now: an open session idle past its TTL is
        ``expired`` before the sweeper records it) and recent activity (minutes)."""
        if state is not None and state not in ("open", "closed", "expired"):
            raise InvalidRequestError("state must be open, closed or expired", field="state")
        now = self._now()
        since = None if active_within is None else now - active_within * 60
        stored_as = ("expired", "open") if state == "expired" else (state,)
        records = [
            as_of(record, now)
            for stored in stored_as
            for record in await self._store.list_sessions(
                SessionQuery(instance=instance, state=stored, active_since=since)
            )
        ]
        if state is not None:
            records = [r for r in records if r.state == state]
        records.sort(key=lambda r: r.last_active_at, reverse=True)
        return SessionList(sessions=[SessionInfo(**_info(r)) for r in records])

    async def close(self, session_id: str) -> SessionInfo:
        """Close the session (after any send in flight); closing twice is harmless."""
        if self._leased is not None:
            async with self._gate(session_id):
                closed, epoch = await self._leased.close(
                    session_id,
                    deadline=self._dispatcher.deadline(None),
                    request_id=f"close-{secrets.token_hex(4)}",
                )
            if epoch is not None:
                await self._instances.close(closed, fence=Fence(epoch))
                log.info("sessions.closed", session_id=session_id)
            return SessionInfo(**_info(closed))
        async with self._gate(session_id):
            await self._get(session_id)
            record = await self._store.set_state(session_id, "closed", closed_at=self._now())
        if record is None:  # purged between the two reads
            raise NotFoundError(f"no session {session_id!r}", field="session_id")
        await self._instances.close(record)
        log.info("sessions.closed", session_id=session_id)
        return SessionInfo(**_info(record))
