"""Whether the store can write now, and the way back when it cannot.

A store operation that fails because the database is unreachable or its disk is full leaves
the store *unavailable* or *full*; only a successful probe write brings it back::

    ok ──(unreachable: refused, reset, shut down)──> unavailable ──┐
    ok ──(disk full)───────────────────────────────> full ─────────┤
    ok <──────────────(a probe write succeeds)─────────────────────┘

The first failure starts ONE recovery task that probes at once, then on a capped exponential
backoff (:func:`probe_delay`), until a probe succeeds. Meanwhile :meth:`StoreHealth.check`
raises the state's error with ``retry_after`` = the seconds to the next probe: the session
send calls it *before* delivering to the instance, so a message is not delivered while it
could not be recorded. The check reads a flag; nothing on the hot path touches the database.

:class:`DiskSpace` adds what a flag cannot know: the disk of a SQLite file filled up since
the last write. It reads the filesystem's free space (``statvfs``, cached briefly) so the
first send after the disk fills is refused before delivery too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from enum import StrEnum
from typing import Any

from ...errors import StorageFullError, StorageUnavailableError
from ..logs import get_logger
from ..tasks import cancel_and_wait

__all__ = [
    "DEFAULT_MIN_FREE_BYTES",
    "DEFAULT_PROBE_BASE",
    "DEFAULT_PROBE_CAP",
    "FULL_ERRNOS",
    "DiskSpace",
    "StoreHealth",
    "StoreState",
    "StoreStatus",
    "probe_delay",
]

DEFAULT_PROBE_BASE = 0.2
DEFAULT_PROBE_CAP = 2.0
DEFAULT_MIN_FREE_BYTES = 8 * 1024 * 1024
DEFAULT_SPACE_TTL = 1.0
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""An ``OSError`` with one of these means a full disk (or quota), in either store."""

log = get_logger("store")


class StoreState(StrEnum):
    """What the store can do now."""

    OK = "ok"
    UNAVAILABLE = "unavailable"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The store's state for ``/api/health/check``; ``reason`` says why it is not ok."""

    state: StoreState
    reason: str | None = None

    @property
    def is_ok(self) -> bool:
        return self.state is StoreState.OK

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "reason": self.reason}


def probe_delay(probe: int, *, base: float, cap: float) -> float:
    """Seconds to wait before probe number ``probe`` (1 for the first)::

    delay = 0                                   for the first probe (a blip is over fast)
    delay = min(cap, base * 2 ** (probe - 2))   after that
    """
    if probe < 1:
        raise ValueError(f"probes count from 1, got {probe}")
    if probe == 1:
        return 0.0
    return min(cap, base * 2.0 ** min(probe - 2, 64))


def _state_of(exc: StorageUnavailableError) -> StoreState:
    return StoreState.FULL if isinstance(exc, StorageFullError) else StoreState.UNAVAILABLE


Translate = Callable[[BaseException], StorageUnavailableError | None]
"""A store's one translation of its driver's failures (None: not a storage failure)."""


@dataclass(slots=True, eq=False, repr=False)
class StoreHealth:
    """The state machine of the module docstring, for one store; lives on one event loop.

    ``probe`` is the store's probe write and ``translate`` its one translation of driver
    failures; ``base`` and ``cap`` shape the probes' backoff (:func:`probe_delay`)."""

    probe: Callable[[], Awaitable[None]]
    translate: Translate
    _: KW_ONLY
    base: float = DEFAULT_PROBE_BASE
    cap: float = DEFAULT_PROBE_CAP
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    state: StoreState = field(default=StoreState.OK, init=False)
    reason: str | None = field(default=None, init=False)
    _next_probe_at: float = field(default=0.0, init=False)
    _recovery: asyncio.Task[None] | None = field(default=None, init=False)

    def __repr__(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"<StoreHealth {self.state.value}{why}>"

    @property
    def is_ok(self) -> bool:
        return self.state is StoreState.OK

    def status(self) -> StoreStatus:
        return StoreStatus(self.state, self.reason)

    def retry_after(self) -> float:
        """Seconds until the next probe (at least 1: what ``Retry-After`` can say)."""
        return max(1.0, self._next_probe_at - self.clock())

    def check(self) -> None:
        """Raise the current state's error unless the store is ok (a flag read)."""
        if self.state is StoreState.OK:
            return
        cls = StorageFullError if self.state is StoreState.FULL else StorageUnavailableError
        raise cls(
            f"the store cannot write ({self.reason}); nothing was delivered",
            retry_after=self.retry_after(),
        )

    def record_failure(self, exc: StorageUnavailableError) -> StorageUnavailableError:
        """Enter the state ``exc`` means, start recovering, and return ``exc`` with its
        ``retry_after`` set, for the caller to raise."""
        state = _state_of(exc)
        if state is not self.state:
            log.warning(
                "store.state_changed", old=self.state.value, new=state.value, reason=exc.message
            )
        self.state, self.reason = state, exc.message
        if self._recovery is None or self._recovery.done():
            self._next_probe_at = self.clock()
            self._recovery = asyncio.get_running_loop().create_task(
                self._recover(), name="store-recovery"
            )
        exc.retry_after = self.retry_after()
        return exc

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Raise a storage failure in the block as the error the store's translation makes
        of it, after recording it here; anything else passes unchanged."""
        try:
            yield
        except Exception as exc:
            error = self.translate(exc)
            if error is None:
                raise
            if error is exc:
                raise self.record_failure(error)  # noqa: B904  # it is the error itself
            raise self.record_failure(error) from exc

    async def _recover(self) -> None:
        """Probe until a probe write succeeds, then be ok again."""
        probe = 0
        while True:
            probe += 1
            delay = probe_delay(probe, base=self.base, cap=self.cap)
            self._next_probe_at = self.clock() + delay
            await self.sleep(delay)
            try:
                await self.probe()
            except StorageUnavailableError as exc:
                self.state, self.reason = _state_of(exc), exc.message
                continue
            except Exception as exc:  # an unexpected probe failure: keep trying, say why
                self.reason = f"probe failed: {exc!r:.200}"
                continue
            log.warning("store.recovered", old=self.state.value, probes=probe)
            self.state, self.reason = StoreState.OK, None
            return

    async def aclose(self) -> None:
        """Stop recovering (the store is closing)."""
        if self._recovery is not None:
            await cancel_and_wait(self._recovery)
            self._recovery = None


@dataclass(slots=True, eq=False, repr=False)
class DiskSpace:
    """Free space of the filesystem holding ``path``, read at most every ``ttl`` seconds."""

    path: str
    _: KW_ONLY
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    ttl: float = DEFAULT_SPACE_TTL
    clock: Callable[[], float] = time.monotonic
    _free: int | None = field(default=None, init=False)
    _read_at: float = field(default=0.0, init=False)

    def __repr__(self) -> str:
        return f"<DiskSpace {self.path} [{self._free} bytes free, min {self.min_free_bytes}]>"

    def free_bytes(self, *, fresh: bool = False) -> int | None:
        """Bytes an unprivileged writer may still use; None when it cannot be read."""
        now = self.clock()
        if fresh or self._free is None or now - self._read_at >= self.ttl:
            try:
                st = os.statvfs(self.path)
            except OSError:
                return None  # the folder went away: the write itself will say what is wrong
            self._free, self._read_at = st.f_bavail * st.f_frsize, now
        return self._free

    def check(self, *, fresh: bool = False) -> None:
        """StorageFullError when less than ``min_free_bytes`` are free."""
        free = self.free_bytes(fresh=fresh)
        if free is not None and free < self.min_free_bytes:
            raise StorageFullError(
                f"disk full: {free} bytes free where the database lives ({self.path}), "
                f"under the {self.min_free_bytes} bytes kept in reserve"
            )
