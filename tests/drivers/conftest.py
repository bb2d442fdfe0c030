"""Fixtures for driver tests: a WorkerDriver over the shared session (``session`` and
``serve`` come from tests/conftest.py), once per instance transport: every test that takes
``driver`` or ``transport`` runs against the lean httptools client and against aiohttp."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from openclaw_orchestrator.server.drivers.instance_transport import TRANSPORTS, TransportKind
from openclaw_orchestrator.server.drivers.worker import WorkerDriver


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> TransportKind:
    """The instance transport this test runs on (``instances.transport``)."""
    kind: TransportKind = request.param
    return kind


@pytest.fixture
async def driver(
    session: aiohttp.ClientSession, transport: TransportKind
) -> AsyncIterator[WorkerDriver]:
    """A WorkerDriver over the shared session and ``transport``."""
    async with WorkerDriver(session, transport=transport) as worker:
        yield worker
