"""Stopping background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has stopped, so nothing of it runs on after; what it
    raised other than its cancellation is raised here."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
