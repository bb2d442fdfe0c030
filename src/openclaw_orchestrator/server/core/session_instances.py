"""The instance side of sessions: where a session is placed, delivering its messages,
moving it when its instance is down (``failover: "migrate"``), and telling the instance
when it closes. Every call goes through the dispatcher (deadline, load, passive health)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

from ...domain.balancing import Policy
from ...domain.sessions import MessageRecord, SessionRecord, rendezvous_order
from ...errors import (
    InstanceDownError,
    InvalidRequestError,
    NoHealthyInstanceError,
    OrchestratorError,
)
from ...models import InstanceSpec, SpawnRequest
from ..drivers.base import Fence, InstanceDriver
from ..logs import get_logger
from ..stores.base import Store
from .dispatcher import Dispatcher, Streaming
from .interfaces import InstanceRegistry
from .registry import InstanceRecord

__all__ = ["CONSISTENT_HASH", "MIGRATE_PAGE_ROWS", "Placement", "SessionInstances"]

log = get_logger("sessions")

MIGRATE_PAGE_ROWS = 64
"""History rows read from the store at a time while a session migrates."""
CONSISTENT_HASH = "consistent_hash"

Placement = Callable[[list[str], Policy], tuple[str, ...]]
"""The balancer's order over live instance names under a policy (routing's ``plan``)."""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class SessionInstances:
    """Places, reaches, moves and closes sessions on instances.

    Wired once (frozen): ``placement`` orders live instances under a policy,
    ``default_policy`` applies when a spawn names none, ``close_timeout`` bounds the
    best-effort close, and ``wall_clock`` stamps the migration notes."""

    dispatcher: Dispatcher
    registry: InstanceRegistry
    store: Store
    _: KW_ONLY
    placement: Placement
    default_policy: str
    close_timeout: float
    wall_clock: Callable[[], float]

    def __repr__(self) -> str:
        return f"<SessionInstances default_policy={self.default_policy}>"

    def place(self, session_id: str, request: SpawnRequest) -> str:
        """The instance a new session is pinned to: the one asked for (known and not down),
        else the session policy's choice among the live ones."""
        registry = self.registry
        if request.instance is not None:
            if request.instance not in registry:
                raise InvalidRequestError(
                    f"unknown instance {request.instance!r}", field="instance"
                )
            if registry.get(request.instance).health.is_down():
                raise InstanceDownError(
                    f"instance {request.instance} is down", instance=request.instance
                )
            return request.instance
        return self._choose(session_id, request.policy or self.default_policy, exclude=())

    def _choose(self, session_id: str, policy: str, *, exclude: tuple[str, ...]) -> str:
        live = [r for r in self.registry if not r.health.is_down() and r.name not in exclude]
        if not live:
            raise NoHealthyInstanceError("no healthy instance to place the session on")
        policy = policy.replace("-", "_")
        if policy == CONSISTENT_HASH:
            weights = {r.name: r.spec.weight for r in live}
            return rendezvous_order(session_id, [r.name for r in live], weights)[0]
        try:
            chosen = Policy(policy)
        except ValueError:
            raise InvalidRequestError(f"unknown policy {policy!r}", field="policy") from None
        return self.placement([r.name for r in live], chosen)[0]

    def _record_of(self, name: str) -> InstanceRecord | None:
        registry = self.registry
        return registry.get(name) if name in registry else None

    async def ensure_reachable(
        self, record: SessionRecord, deadline: float, request_id: str
    ) -> tuple[SessionRecord, str | None]:
        """The session, moved first if its instance is down and it may migrate."""
        pinned = self._record_of(record.instance)
        if pinned is not None and not pinned.health.is_down():
            return record, None
        if record.failover != "migrate":
            raise InstanceDownError(
                f"instance {record.instance} of session {record.id} is down; the session "
                "stays pinned (spawn with failover 'migrate' to move it)",
                instance=record.instance,
            )
        return await self.migrate(record, deadline, request_id), record.instance

    def fences(self, instance: str) -> bool:
        """Whether ``instance`` is registered and its driver enforces session fencing."""
        rec = self._record_of(instance)
        return rec is not None and self.dispatcher.fences(rec.spec)

    def is_down(self, instance: str) -> bool:
        """Whether ``instance`` is unknown now or judged down."""
        rec = self._record_of(instance)
        return rec is None or rec.health.is_down()

    async def deliver(
        self,
        record: SessionRecord,
        data: Any,
        deadline: float,
        request_id: str,
        *,
        fence: Fence | None = None,
        stream: Streaming | None = None,
    ) -> Any:
        """Send one message to the session's instance, fenced when ``fence`` is given and
        streamed to ``stream`` when given; its reply."""
        rec = self._record_of(record.instance)
        if rec is None:
            raise InstanceDownError(
                f"instance {record.instance} is no longer registered", instance=record.instance
            )
        on_delta = None if stream is None else stream.to(record.instance)

        def send(driver: InstanceDriver, spec: InstanceSpec, timeout: float) -> Awaitable[Any]:
            if on_delta is None:
                return driver.session_send(
                    spec, record.id, data, timeout=timeout, request_id=request_id, fence=fence
                )
            return driver.session_send(
                spec,
                record.id,
                data,
                timeout=timeout,
                request_id=request_id,
                fence=fence,
                on_delta=on_delta,
            )

        return await self.dispatcher.call(rec, deadline, send)

    async def migrate(
        self, record: SessionRecord, deadline: float, request_id: str
    ) -> SessionRecord:
        """Replay the history to a healthy instance and record the move (one process: the
        session's lock is the only fence). See :meth:`move`."""
        note = await self.move(record, deadline, request_id)
        return await self.store.append(record, note)

    async def move(
        self,
        record: SessionRecord,
        deadline: float,
        request_id: str,
        *,
        fence: Fence | None = None,
    ) -> MessageRecord:
        """Replay the history to a healthy instance (fenced when ``fence`` is given: its
        ``seq`` is where the history ends); the note recording the move, at the next
        position, for the caller to record. The history is read from the store
        :data:`MIGRATE_PAGE_ROWS` rows at a time while the driver sends it in pages, so a
        long one is never in memory whole."""
        target = self._choose(record.id, CONSISTENT_HASH, exclude=(record.instance,))
        replayed = 0

        async def history() -> AsyncIterator[tuple[Any, Any]]:
            nonlocal replayed
            offset = 0
            while True:
                rows = await self.store.history(record.id, offset=offset, limit=MIGRATE_PAGE_ROWS)
                for m in rows:
                    if m.kind == "message":
                        replayed += 1
                        yield m.data, m.reply
                if len(rows) < MIGRATE_PAGE_ROWS:
                    return
                offset += len(rows)

        def restore(driver: InstanceDriver, spec: InstanceSpec, timeout: float) -> Awaitable[None]:
            return driver.session_restore(
                spec, record.id, history(), timeout=timeout, request_id=request_id, fence=fence
            )

        await self.dispatcher.call(self.registry.get(target), deadline, restore)
        log.warning(
            "sessions.migrated",
            session_id=record.id,
            old=record.instance,
            new=target,
            replayed=replayed,
        )
        return MessageRecord(
            session_id=record.id,
            seq=record.messages + 1,
            kind="migration",
            instance=target,
            data={"from": record.instance, "to": target, "replayed": replayed},
            request_id=request_id,
            created_at=self.wall_clock(),
        )

    async def close(self, record: SessionRecord, *, fence: Fence | None = None) -> None:
        """Tell the instance it can drop the session (fenced: it keeps a tombstone, so no
        message of an older epoch starts the session again); best effort, never fails the
        caller."""
        rec = self._record_of(record.instance)
        if rec is None or rec.health.is_down():
            return

        def close(driver: InstanceDriver, spec: InstanceSpec, timeout: float) -> Awaitable[None]:
            return driver.session_close(spec, record.id, timeout=timeout, fence=fence)

        deadline = self.dispatcher.clock() + self.close_timeout
        try:
            await self.dispatcher.call(rec, deadline, close)
        except OrchestratorError as exc:
            log.info("sessions.close_on_instance_failed", session_id=record.id, error=exc.code)
