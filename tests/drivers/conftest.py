"""Fixtures for driver tests: one real aiohttp session and real reference instances on port 0."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from openclaw_orchestrator.drivers.worker import WorkerDriver
from openclaw_orchestrator.server import running

Serve = Callable[[Any], Awaitable[str]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The process-wide session a driver shares, closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def driver(session: aiohttp.ClientSession) -> WorkerDriver:
    """A WorkerDriver over the shared session."""
    return WorkerDriver(session)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(app)`` runs ``app`` on 127.0.0.1:0 until the test ends; returns its URL."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(app: Any) -> str:
            return await stack.enter_async_context(running(app))

        yield start
