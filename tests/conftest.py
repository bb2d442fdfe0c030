"""Shared fixtures: real servers on 127.0.0.1 with free ports, real files under tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import uvloop

from openclaw_orchestrator.server.hosting import running

from .durations import longest_first, read_record

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest test files first (:mod:`tests.durations`): xdist hands files to workers in
    this order (``--no-loadscope-reorder``), so the slow few start first instead of last."""
    items[:] = longest_first(items, read_record())


@pytest.fixture
def anyio_backend() -> str:
    """Only asyncio: uvloop is what production runs, and pytest-asyncio drives the tests."""
    return "asyncio"


def pytest_asyncio_loop_factories(
    config: pytest.Config,
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop, as in production: servers and clients in tests run on the loop users get."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A real aiohttp client session (what drivers share), closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Any], Awaitable[str]]]:
    """``await serve(app)`` runs ``app`` on 127.0.0.1:0 until the test ends; returns its URL."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(app: Any) -> str:
            return await stack.enter_async_context(running(app))

        yield start
