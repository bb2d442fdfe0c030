"""The reference instance's tasks in flight, by ``X-Request-ID``, so that they can be
cancelled (instance protocol v1.3: ``POST /api/instance/tasks/{request_id}/cancel``).

Each task and session message runs in its own asyncio task (uvicorn's, per request).
:meth:`RunningTasks.cancel` cancels it and remembers that it did, so the request can tell
this cancellation apart from any other (``uncancel()``, as ``asyncio.timeout`` does) and
answer ``409 cancelled``, which nobody reads when the caller already left.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["RunningTasks"]


class RunningTasks:
    """Tasks in flight by request id (the latest of an id wins) and how many were
    cancelled (``cancelled``, reported by the health check)."""

    __slots__ = ("_cancelling", "_tasks", "cancelled")

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._cancelling: set[asyncio.Task[Any]] = set()
        self.cancelled = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"<RunningTasks [{len(self._tasks)} running, {self.cancelled} cancelled]>"

    def enter(self, request_id: str) -> asyncio.Task[Any]:
        """Record the current task as ``request_id``'s; it must :meth:`leave` when done."""
        task = asyncio.current_task()
        assert task is not None  # always inside a request's task
        self._tasks[request_id] = task
        return task

    def leave(self, request_id: str, task: asyncio.Task[Any]) -> None:
        """Forget ``task``, done with ``request_id``."""
        if self._tasks.get(request_id) is task:
            del self._tasks[request_id]
        self._cancelling.discard(task)

    def cancel(self, request_id: str) -> bool:
        """Cancel ``request_id``'s task; False when none is in flight (or it already is
        being cancelled)."""
        task = self._tasks.get(request_id)
        if task is None or task in self._cancelling or task.done():
            return False
        self._cancelling.add(task)
        task.cancel()
        self.cancelled += 1
        return True

    def is_cancelled(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task``'s cancellation came from :meth:`cancel` and from nobody else
        (then it is taken back: the task answers instead of dying)."""
        return task in self._cancelling and task.uncancel() == 0
