"""Idempotency keys shared by replicas on one PostgreSQL database: one execution per key
across the fleet, with the rules of the in-process :class:`~.idempotency.IdempotencyCache`.

A request with a key first *claims* it (:class:`KeyClaims`, one statement): the claimant runs
the work while renewing its claim every ``lease / 3`` seconds, then keeps the result (its
JSON) for ``ttl`` seconds. A duplicate with the same fingerprint, on any replica, polls the
row with a short backoff (``POLL_MIN`` doubling to ``POLL_MAX``) until the result is there
and returns it as a replay; another fingerprint is a 409 ``conflict``. A failed or cancelled
run deletes its claim (failures are not remembered), so a waiter or a retry runs it again.
A replica that dies stops renewing: its claim runs out after ``lease`` seconds by the
database's clock and the next claim takes the key over. A result over ``max_bytes`` (or
with no JSON form) is not kept: its key runs again, as in-process.

If a claimant is paused past its lease (a stopped process), another replica takes the key
over and both runs happen; the paused one's renewals and its result are refused (the row
names its holder), so the kept result is the successor's. The lease bounds that window.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from pydantic_core import PydanticSerializationError, to_json

from ...errors import ConflictError, InvalidRequestError, OrchestratorError
from ..logs import get_logger
from ..stores.idempotency_sql import Claim
from ..stores.leases import holder_id
from ..stores.tables import IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_SCOPE_MAX
from .clock import Sleep

__all__ = [
    "DEFAULT_CLAIM_LEASE",
    "POLL_MAX",
    "POLL_MIN",
    "SWEEP_BATCH",
    "KeyClaims",
    "SharedIdempotency",
]

T = TypeVar("T")
DEFAULT_CLAIM_LEASE = 5.0
"""Seconds a claim lasts unrenewed: how long a dead replica's keys stay stuck."""
POLL_MIN = 0.005
POLL_MAX = 0.1
SWEEP_BATCH = 1000
DEFAULT_SWEEP_INTERVAL = 60.0

log = get_logger("orchestrator")


class KeyClaims(Protocol):
    """The shared rows (:class:`~..stores.idempotency_sql.IdempotencySql`)."""

    async def claim(
        self, scope: str, key: str, fingerprint: str, holder: str, lease: float
    ) -> Claim | None: ...

    async def peek(self, scope: str, key: str) -> Claim | None: ...

    async def renew(self, scope: str, key: str, holder: str, lease: float) -> bool: ...

    async def finish(
        self, scope: str, key: str, holder: str, result: bytes, ttl: float
    ) -> bool: ...

    async def release(self, scope: str, key: str, holder: str) -> bool: ...

    async def sweep(self, limit: int) -> int: ...


def _split(key: str) -> tuple[str, str]:
    """``scope:key`` (what the API passes) as the row's two columns, checked."""
    scope, _, name = key.partition(":") if ":" in key else ("", "", key)
    if not 0 < len(name) <= IDEMPOTENCY_KEY_MAX or len(scope) > IDEMPOTENCY_SCOPE_MAX:
        raise InvalidRequestError(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters",
            field="Idempotency-Key",
        )
    return scope, name


def _encoded(result: object) -> bytes | None:
    try:
        return to_json(result)
    except PydanticSerializationError:
        return None


class SharedIdempotency(Generic[T]):
    """Runs work once per key across replicas (module docstring); implements
    :class:`~.idempotency.IdempotencyKeys`. Open it (``async with``) to sweep expired rows
    every ``sweep_interval`` seconds."""

    def __init__(
        self,
        claims: KeyClaims,
        *,
        ttl: float,
        max_bytes: int,
        lease: float = DEFAULT_CLAIM_LEASE,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
        sleep: Sleep = asyncio.sleep,
        holder: str | None = None,
    ) -> None:
        self._claims = claims
        self.ttl, self.max_bytes, self.lease = ttl, max_bytes, lease
        self._sweep_interval = sweep_interval
        self._sleep = sleep
        self._holder = holder or holder_id()
        self._serial = itertools.count(1)
        self._sweeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<SharedIdempotency holder={self._holder} lease={self.lease:g}s ttl={self.ttl:g}s>"

    async def __aenter__(self) -> SharedIdempotency[T]:
        self._sweeper = asyncio.create_task(self._sweep_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop sweeping."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def run(
        self,
        key: str,
        digest: str,
        work: Callable[[], Awaitable[T]],
        *,
        decode: Callable[[bytes], T],
    ) -> tuple[T, bool]:
        """Run ``work`` once per key across replicas; returns ``(result, replayed)``."""
        scope, name = _split(key)
        holder = f"{self._holder}:{next(self._serial)}"  # one per claim, even in one process
        found = await self._claims.claim(scope, name, digest, holder, self.lease)
        delay = POLL_MIN
        while True:
            if found is not None and found.status == "claimed":
                return await self._first(scope, name, holder, work), False
            if found is not None and found.fingerprint != digest:
                raise ConflictError(
                    "this Idempotency-Key was used with a different request",
                    field="Idempotency-Key",
                )
            if found is not None and found.status == "done" and found.result is not None:
                return decode(found.result), True
            await self._sleep(delay)
            delay = min(delay * 2, POLL_MAX)
            found = await self._claims.peek(scope, name)
            if found is None:  # free again (failed, taken back, expired): try to take it
                found = await self._claims.claim(scope, name, digest, holder, self.lease)

    async def _first(
        self, scope: str, name: str, holder: str, work: Callable[[], Awaitable[T]]
    ) -> T:
        """Run the claimed work, renewing the claim meanwhile; keep or forget the result."""
        renewing = asyncio.create_task(self._renew(scope, name, holder))
        try:
            result = await work()
        except BaseException:
            renewing.cancel()
            await asyncio.shield(self._forget(scope, name, holder))
            raise
        renewing.cancel()
        encoded = _encoded(result)
        if encoded is None or len(encoded) > self.max_bytes:
            await self._forget(scope, name, holder)  # too large to keep: its key runs again
            return result
        try:
            if not await self._claims.finish(scope, name, holder, encoded, self.ttl):
                log.warning("orchestrator.idempotency_claim_lost", scope=scope, key=name)
        except OrchestratorError as exc:  # the work is done: answer it, a retry runs again
            log.warning("orchestrator.idempotency_not_kept", scope=scope, error=exc.code)
        return result

    async def _renew(self, scope: str, name: str, holder: str) -> None:
        """Extend the claim every ``lease / 3`` seconds until cancelled or lost."""
        while True:
            await self._sleep(self.lease / 3)
            try:
                if not await self._claims.renew(scope, name, holder, self.lease):
                    log.warning("orchestrator.idempotency_claim_lost", scope=scope, key=name)
                    return
            except OrchestratorError as exc:  # the database is away: try again next time
                log.warning("orchestrator.idempotency_renew_failed", error=exc.code)

    async def _forget(self, scope: str, name: str, holder: str) -> None:
        """Delete the claim so the key runs again; if that fails the claim runs out."""
        try:
            await self._claims.release(scope, name, holder)
        except OrchestratorError as exc:
            log.warning("orchestrator.idempotency_release_failed", error=exc.code)

    async def sweep(self) -> int:
        """Delete expired rows in batches of ``SWEEP_BATCH``; how many went."""
        total = 0
        while True:
            removed = await self._claims.sweep(SWEEP_BATCH)
            total += removed
            if removed < SWEEP_BATCH:
                return total

    async def _sweep_forever(self) -> None:
        while True:
            await self._sleep(self._sweep_interval)
            try:
                await self.sweep()
            except OrchestratorError as exc:
                log.warning("orchestrator.idempotency_sweep_failed", error=exc.code)
