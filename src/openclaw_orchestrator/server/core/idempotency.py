"""Idempotency keys: a repeated request with the same key returns the first result.

Only successes are remembered: a request that failed may be retried with the same key and
runs again (the failure did not do the work, or the caller would not retry). A key reused
with a different request body is a 409 ``conflict``: it is a client bug, not a retry.
Concurrent duplicates wait for the first one instead of running the task twice.

The cache is bounded in time (``ttl``), in keys (``max_entries``) and in the bytes of the
results it keeps (``max_bytes``, each result weighed as its JSON); past a bound the oldest
finished keys go first. A single result larger than ``max_bytes`` is not remembered at all:
the request still succeeds, and a retry with its key runs again.

:class:`IdempotencyKeys` is the seam: this in-process cache serves one process (SQLite), and
:class:`~.shared_idempotency.SharedIdempotency` serves replicas sharing a PostgreSQL database
with the same rules. ``decode`` turns a result kept as JSON back into its value; only a
shared store needs it (a replay on another replica has nothing but the JSON).
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import orjson
from pydantic_core import PydanticSerializationError, to_json

from ...errors import ConflictError, InvalidRequestError

__all__ = ["IdempotencyCache", "IdempotencyKeys", "fingerprint", "json_size"]

T = TypeVar("T")
MAX_KEY_LENGTH = 255
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def fingerprint(scope: str, body: object) -> str:
    """A stable digest of what a request asks for (sorted keys, so field order is free)."""
    raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(scope.encode() + b"\0" + raw).hexdigest()


def json_size(result: object) -> int:
    """What ``result`` weighs in the cache: the length of its JSON (pydantic models too).
    Something that has no JSON form weighs too much to keep."""
    try:
        return len(to_json(result))
    except PydanticSerializationError:
        return sys.maxsize


class IdempotencyKeys(Protocol[T]):
    """Runs work once per key (module docstring): both the in-process cache and the store
    shared by replicas implement it."""

    async def run(
        self,
        key: str,
        digest: str,
        work: Callable[[], Awaitable[T]],
        *,
        decode: Callable[[bytes], T],
    ) -> tuple[T, bool]:
        """``(result, replayed)``: ``work``'s result, or the first run's for a repeat of
        ``key`` with the same ``digest``; ConflictError (409) for another digest."""
        ...


@dataclass(slots=True)
class _Slot(Generic[T]):
    fingerprint: str
    future: asyncio.Future[T]
    expires_at: float
    size: int = 0


@dataclass(slots=True, kw_only=True, eq=False, repr=False)
class IdempotencyCache(Generic[T]):
    """In-process store of results by key, bounded in keys, bytes and time (module docstring).

    The bounds are set once; the keys and the bytes they weigh are the state."""

    ttl: float
    clock: Callable[[], float]
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_bytes: int = DEFAULT_MAX_BYTES
    size_of: Callable[[T], int] = json_size
    _bytes: int = field(default=0, init=False)
    _slots: OrderedDict[str, _Slot[T]] = field(default_factory=OrderedDict, init=False)

    def __len__(self) -> int:
        return len(self._slots)

    def __repr__(self) -> str:
        return (
            f"<IdempotencyCache [{len(self._slots)} keys, {self._bytes} bytes, ttl={self.ttl:g}s]>"
        )

    async def run(
        self,
        key: str,
        digest: str,
        work: Callable[[], Awaitable[T]],
        *,
        decode: Callable[[bytes], T] | None = None,
    ) -> tuple[T, bool]:
        """Run ``work`` once per key; returns ``(result, replayed)``. ``decode`` is unused:
        results stay values in this process."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidRequestError(
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
                field="Idempotency-Key",
            )
        while True:
            now = self.clock()
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
        self._slots[key] = _Slot(digest, future, now + self.ttl)
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
        self._keep(key, future, result)
        return result

    def _keep(self, key: str, future: asyncio.Future[T], result: T) -> None:
        """Weigh the finished result: count it, or forget a result over the whole budget."""
        slot = self._slots.get(key)
        if slot is None or slot.future is not future:
            return
        size = self.size_of(result)
        if size > self.max_bytes:
            del self._slots[key]  # too large to keep: its key simply runs again
            return
        slot.size = size
        self._bytes += size
        self._evict(self.clock())

    def _evict(self, now: float) -> None:
        """Drop expired keys, then the oldest finished ones while over a bound; work in
        flight is never dropped (its waiters hold it) and weighs nothing yet."""
        count, weight = len(self._slots), self._bytes
        victims: list[str] = []
        for key, slot in self._slots.items():
            over = count >= self.max_entries or weight > self.max_bytes
            if not over and slot.expires_at > now:
                break
            if slot.future.done():
                victims.append(key)
                count, weight = count - 1, weight - slot.size
        for key in victims:
            self._bytes -= self._slots.pop(key).size
