"""Leadership: work that one replica of the fleet at a time must do (the session sweeper,
cleanups), run only while this replica holds the lease ``leader:<name>``.

:class:`Leadership` contends for the lease (:class:`~..stores.leases.LeaseStore`, judged by
the database's clock) every ``ttl / 3`` seconds; once it holds it, it starts the body and
renews every ``ttl / 3``. When a renewal finds the lease gone (taken over after this replica
stalled) or cannot renew before the lease would run out by this replica's own clock, the
body is cancelled and the replica contends again. :attr:`Leadership.is_leader` turns False
at the latest when the lease may have run out (its deadline is counted from *before* the
acquiring statement was sent), so a body may check it before a side effect; the lease's
``epoch`` (handed to the body) is the fencing token for writes that must be refused from a
former leader. Stopping (cancelling :meth:`Leadership.run`) releases the lease, so a
successor takes over at once; a replica that dies is succeeded after ``ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ...errors import OrchestratorError
from ..logs import get_logger
from ..stores.leases import Lease, LeaseStore, check_lease, holder_id
from .clock import Clock, Sleep

__all__ = ["DEFAULT_LEADER_TTL", "Leadership", "run_as_leader"]

T = TypeVar("T")
DEFAULT_LEADER_TTL = 5.0
"""Seconds a leader's lease lasts unrenewed: how long a dead leader's work waits."""

log = get_logger("orchestrator")


class Leadership:
    """Contends for ``leader:<name>`` and runs a body while holding it (module docstring)."""

    def __init__(
        self,
        leases: LeaseStore,
        name: str,
        *,
        ttl: float = DEFAULT_LEADER_TTL,
        holder: str | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.lease_name = f"leader:{name}"
        self.holder = holder or holder_id()
        check_lease(self.lease_name, self.holder, ttl)
        self.ttl = ttl
        self._leases, self._clock, self._sleep = leases, clock, sleep
        self._lease: Lease | None = None
        self._valid_until = 0.0

    def __repr__(self) -> str:
        state = f"leader epoch={self.epoch}" if self.is_leader else "follower"
        return f"<Leadership {self.lease_name} {self.holder} [{state}]>"

    @property
    def role(self) -> str:
        """The work this lease is for (``session-sweeper``): the metrics' ``role`` label."""
        return self.lease_name.removeprefix("leader:")

    @property
    def is_leader(self) -> bool:
        """Whether this replica holds the lease now, by a deadline that cannot be later
        than the database's."""
        return self._lease is not None and self._clock() < self._valid_until

    @property
    def epoch(self) -> int | None:
        """The fencing token of the lease held, or None."""
        return self._lease.epoch if self.is_leader and self._lease is not None else None

    async def run(self, body: Callable[[Lease], Coroutine[Any, Any, T]]) -> T:
        """Contend until leader, run ``body(lease)`` while leader (cancelled, and contended
        for again, on losing the lease); return what it returns (the lease released).
        Cancelling this releases the lease."""
        try:
            while True:
                lease = await self._acquire()
                if lease is None:
                    await self._sleep(self.ttl / 3)
                    continue
                task = asyncio.create_task(body(lease))
                try:
                    if await self._hold(lease, task):
                        return task.result()
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                log.warning("orchestrator.leadership_lost", lease=self.lease_name)
        finally:
            await asyncio.shield(self._release())

    async def _hold(self, lease: Lease, task: asyncio.Task[T]) -> bool:
        """Renew while ``task`` runs: True when it finished, False when the lease was lost."""
        while True:
            left = self._valid_until - self._clock()
            await asyncio.wait({task}, timeout=max(min(self.ttl / 3, left), 0.0))
            if task.done():
                return True
            renewed = await self._acquire()
            if renewed is not None and renewed.epoch == lease.epoch:
                continue
            if renewed is None and self.is_leader:
                continue  # the database did not answer: still ours until the deadline
            self._lease = None
            return False

    async def _acquire(self) -> Lease | None:
        """Take or renew the lease; None when another holds it (or the database is away:
        then a lease held keeps its deadline)."""
        started = self._clock()
        try:
            lease = await self._leases.acquire_lease(self.lease_name, self.holder, self.ttl)
        except OrchestratorError as exc:
            log.warning("orchestrator.leadership_unreachable", error=exc.code)
            return None
        if lease is None:
            self._lease = None
            return None
        self._lease, self._valid_until = lease, started + self.ttl
        return lease

    async def _release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            await self._leases.release_lease(lease.name, lease.holder, lease.epoch)
        except OrchestratorError as exc:  # it runs out by itself
            log.warning("orchestrator.leadership_release_failed", error=exc.code)


async def run_as_leader(
    leases: LeaseStore,
    name: str,
    body: Callable[[Lease], Coroutine[Any, Any, T]],
    *,
    ttl: float = DEFAULT_LEADER_TTL,
    holder: str | None = None,
) -> T:
    """Run ``body`` on one replica of the fleet at a time (see :class:`Leadership`)."""
    return await Leadership(leases, name, ttl=ttl, holder=holder).run(body)
