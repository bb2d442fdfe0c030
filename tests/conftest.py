"""Shared fixtures: real servers on 127.0.0.1 with free ports, real files under tmp_path."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
import uvloop

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def anyio_backend() -> str:
    """Only asyncio: uvloop is what production runs, and pytest-asyncio drives the tests."""
    return "asyncio"


def pytest_asyncio_loop_factories(
    config: pytest.Config,
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop, as in production: servers and clients in tests run on the loop users get."""
    return {"uvloop": uvloop.new_event_loop}
