"""Whether the ``server`` extra is installed: the check in front of ``serve``, ``up`` and
``instance serve``.

The base install (``pip install openclaw-orchestrator``) is the SDK and the client commands;
the API server, the store and the reference instance need
``pip install 'openclaw-orchestrator[server]'``. Without them a server command stops with one
line and exit 2 instead of a traceback from deep inside an import.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec

from .exits import ExitCode

__all__ = ["SERVER_INSTALL_HINT", "SERVER_MODULES", "missing_server_modules", "require_server"]

SERVER_MODULES: tuple[str, ...] = (
    "fastapi",
    "fastapi_offline",
    "uvicorn",
    *(("uvloop",) if sys.platform != "win32" else ()),
    "httptools",
    "sqlalchemy",
    "asyncpg",
    "alembic",
    "mcp",
    "sse_starlette",
    "prometheus_client",
    "opentelemetry",
    "opentelemetry.sdk",
    "opentelemetry.exporter.otlp.proto.http",
)
"""The modules of the ``server`` extra's distributions (pyproject.toml), in order: the
top-level one, or for OpenTelemetry's distributions (one namespace package) their own."""

SERVER_INSTALL_HINT = (
    "error: the server is not installed: pip install 'openclaw-orchestrator[server]'"
)


def missing_server_modules() -> list[str]:
    """The :data:`SERVER_MODULES` this interpreter cannot import (found without importing)."""
    return [name for name in SERVER_MODULES if not _importable(name)]


def _importable(name: str) -> bool:
    """Whether ``name`` can be found; a dotted name whose parent is missing cannot."""
    try:
        return find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def require_server() -> None:
    """Exit 2 with :data:`SERVER_INSTALL_HINT` on stderr when any server module is missing."""
    if missing_server_modules():
        sys.stderr.write(SERVER_INSTALL_HINT + "\n")
        raise SystemExit(ExitCode.USAGE)
