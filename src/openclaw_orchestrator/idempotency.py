"""Idempotency keys: a repeated request with the same key returns the first result.

Only successes are remembered: a request that failed may be retried with the same key and
runs again (the failure did not do the work, or the caller would not retry). A key reused
with a different request body is a 409 ``conflict``: it is a client bug, not a retry.
Concurrent duplicates wait for the first one instead of running the task twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson

from .errors import ConflictError, InvalidRequestError

__all__ = ["IdempotencyCache", "fingerprint"]

T = TypeVar("T")
MAX_KEY_LENGTH = 255
DEFAULT_MAX_ENTRIES = 100_000


def fingerprint(scope: str, body: object) -> str:
    """A stable digest of what a request asks for (sorted keys, so field order is free)."""
    raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(scope.encode() + b"\0" + raw).hexdigest()


@dataclass(slots=True)
class _Slot(Generic[T]):
    fingerprint: str
    future: asyncio.Future[T]
    expires_at: float


class IdempotencyCache(Generic[T]):
    """In-process store of results by key, bounded in size and time (LRU + TTL)."""

    def __init__(
        self, *, ttl: float, clock: Callable[[], float], max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._slots: OrderedDict[str, _Slot[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def __repr__(self) -> str:
        return f"<IdempotencyCache [{len(self._slots)} keys, ttl={self._ttl:g}s]>"

    async def run(self, key: str, digest: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``work`` once per key; returns ``(result, replayed)``."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidRequestError(
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
                field="Idempotency-Key",
            )
        while True:
            now = self._clock()
            self._evict(now)
            slot = self._slots.get(key)
            if slot is None:
                return await self._first(key, digest, now, work), False
            if slot.fingerprint != digest:
                raise ConflictError(
                    "this Idempotency-Key was used with a different request",
                    field="Idempotency-Key",
                )
            try:
                return await asyncio.shield(slot.future), True
            except asyncio.CancelledError:
                if not slot.future.cancelled():
                    raise  # we were cancelled ourselves
            except Exception:  # noqa: S110  # the first run failed: failures are not remembered
                pass

    async def _first(
        self, key: str, digest: str, now: float, work: Callable[[], Awaitable[T]]
    ) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._slots[key] = _Slot(digest, future, now + self._ttl)
        try:
            result = await work()
        except BaseException as exc:
            self._slots.pop(key, None)
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved here, so an unawaited failure is not logged
            else:
                future.cancel()
            raise
        future.set_result(result)
        return result

    def _evict(self, now: float) -> None:
        while self._slots:
            key, slot = next(iter(self._slots.items()))
            if slot.expires_at > now and len(self._slots) < self._max:
                break
            if not slot.future.done():
                break  # never evict work in flight
            del self._slots[key]
