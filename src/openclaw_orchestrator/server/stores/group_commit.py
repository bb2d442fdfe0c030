"""Group commit: many callers' writes in one database call, one transaction, one WAL flush.

A commit costs a flush of the write-ahead log to disk, milliseconds on an ordinary disk; one
per send caps a store at a few hundred sends a second whatever the CPU. :class:`Batches`
lets callers submit their arguments and await their own result while the calls go out in
batches: at most ``lanes`` calls are in flight, and whatever arrives while they are becomes
the next batch (up to ``max_batch``). An idle store sends each item at once, alone; a busy
one sends fewer, larger calls. It is the asyncio form of the SQLite store's writer thread.

A batch that fails fails each of its callers with the same error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Batches"]

A = TypeVar("A")
R = TypeVar("R")


@dataclass(slots=True, eq=False)
class Batches(Generic[A, R]):
    """Submit ``A``, get ``R``; ``run`` takes a batch of arguments and returns their results
    in the same order (the same length)."""

    run: Callable[[Sequence[A]], Awaitable[Sequence[R]]]
    lanes: int = 4
    max_batch: int = 256
    _queue: list[tuple[A, asyncio.Future[R]]] = field(default_factory=list, init=False)
    _busy: int = field(default=0, init=False)
    _lanes: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    batches: int = field(default=0, init=False)
    """Calls made so far (for tests and the bench)."""

    def __repr__(self) -> str:
        return f"<Batches [{self._busy}/{self.lanes} busy, {len(self._queue)} queued]>"

    def submit(self, args: A) -> asyncio.Future[R]:
        """Queue ``args``; the future resolves with its result (or the batch's error). The
        item is sent even if nobody awaits the future any more."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((args, future))
        if self._busy < self.lanes:
            self._busy += 1
            lane = asyncio.get_running_loop().create_task(self._drain())
            self._lanes.add(lane)  # the loop keeps only a weak reference to a task
            lane.add_done_callback(self._lanes.discard)
        return future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                self.batches += 1
                try:
                    results = await self.run([args for args, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"{len(results)} results for {len(batch)} items")
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                            future.exception()  # retrieved: a caller who left logs nothing
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._busy -= 1
