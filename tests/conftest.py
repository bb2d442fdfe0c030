"""Shared fixtures: real servers on 127.0.0.1 with free ports, real files under tmp_path."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def anyio_backend() -> str:
    """Only asyncio: uvloop is what production runs, and pytest-asyncio drives the tests."""
    return "asyncio"
