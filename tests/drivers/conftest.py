"""Fixtures for driver tests: a WorkerDriver over the shared session (``session`` and
``serve`` come from tests/conftest.py)."""

from __future__ import annotations

import aiohttp
import pytest

from openclaw_orchestrator.drivers.worker import WorkerDriver


@pytest.fixture
def driver(session: aiohttp.ClientSession) -> WorkerDriver:
    """A WorkerDriver over the shared session."""
    return WorkerDriver(session)
