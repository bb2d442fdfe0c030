"""The domain layer stays pure: stdlib plus the package's own ``errors`` and ``domain`` only.

Like httpx's ``test_exported_members``, this reads the source instead of trusting review: it
walks the AST of every ``domain/*.py`` (imports nested in functions or ``TYPE_CHECKING``
blocks included) and fails on anything that could do I/O, await, read the clock or pull in a
third-party library.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "openclaw_orchestrator"
DOMAIN_PACKAGE = f"{PACKAGE}.domain"
DOMAIN_DIR = Path(__file__).resolve().parents[1] / "src" / PACKAGE / "domain"
DOMAIN_FILES = sorted(DOMAIN_DIR.glob("*.py"))

# Stdlib, but not for the domain: it decides and never awaits, connects, spawns or reads the
# clock (``now`` and ``random.Random`` are passed in). The rest are third-party and would be
# refused as non-stdlib anyway; naming them keeps the intent readable.
FORBIDDEN = frozenset(
    {
        "asyncio",
        "concurrent",
        "http",
        "selectors",
        "socket",
        "ssl",
        "subprocess",
        "threading",
        "time",
        "urllib",
        "aiohttp",
        "fastapi",
        "httpx",
        "orjson",
        "pydantic",
        "pydantic_settings",
        "rich",
        "sqlalchemy",
        "starlette",
        "structlog",
        "typer",
        "uvicorn",
        "yaml",
    }
)
DYNAMIC_IMPORTS = frozenset({"__import__", "import_module"})


def imported_modules(source: str) -> Iterator[str]:
    """Absolute names of everything a domain module imports, relative imports resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield from _resolve(node)
        elif isinstance(node, ast.Call) and _called_name(node) in DYNAMIC_IMPORTS:
            yield f"{_called_name(node)}()"


def _resolve(node: ast.ImportFrom) -> list[str]:
    """``from ..errors import X`` in a domain module -> ``openclaw_orchestrator.errors``.

    From the package root the imported names are modules (``from .. import service``).
    """
    parts = DOMAIN_PACKAGE.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
    module = ".".join(part for part in (base, node.module) if part)
    if module == PACKAGE:
        return [f"{module}.{alias.name}" for alias in node.names]
    return [module]


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    return call.func.attr if isinstance(call.func, ast.Attribute) else None


def is_allowed(module: str) -> bool:
    """Stdlib outside FORBIDDEN, ``errors``, and the domain package itself."""
    top = module.split(".")[0]
    if top == PACKAGE:
        return module == f"{PACKAGE}.errors" or f"{module}.".startswith(f"{DOMAIN_PACKAGE}.")
    return top in sys.stdlib_module_names and top not in FORBIDDEN


def forbidden_imports(source: str) -> list[str]:
    return [module for module in imported_modules(source) if not is_allowed(module)]


def test_the_domain_modules_are_found() -> None:
    """The glob really sees the domain package, so the check below cannot pass vacuously."""
    names = {path.name for path in DOMAIN_FILES}
    assert {"aggregation.py", "backoff.py", "balancing.py", "health.py", "targets.py"} <= names


@pytest.mark.parametrize("path", DOMAIN_FILES, ids=[path.name for path in DOMAIN_FILES])
def test_domain_imports_only_stdlib_and_errors(path: Path) -> None:
    """No domain module imports I/O, awaiting, the clock or a third-party library."""
    assert forbidden_imports(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("source", "offending"),
    [
        ("import json, re, math", []),
        ("from __future__ import annotations", []),
        ("from collections.abc import Sequence", []),
        ("from ..errors import InvalidRequestError", []),
        ("from .. import errors", []),
        ("from .health import HealthState", []),
        ("from . import health", []),
        ("from openclaw_orchestrator.errors import AggregationError", []),
        ("from openclaw_orchestrator.domain.health import HealthState", []),
        ("import aiohttp", ["aiohttp"]),
        ("import orjson as json", ["orjson"]),
        ("from fastapi import FastAPI", ["fastapi"]),
        ("from pydantic.dataclasses import dataclass", ["pydantic.dataclasses"]),
        ("import asyncio", ["asyncio"]),
        ("import time", ["time"]),
        ("from time import monotonic", ["time"]),
        ("import numpy", ["numpy"]),
        ("from ..models import Task", [f"{PACKAGE}.models"]),
        ("from .. import service", [f"{PACKAGE}.service"]),
        ("from ..drivers.base import InstanceDriver", [f"{PACKAGE}.drivers.base"]),
        ("from openclaw_orchestrator.server.api import app", [f"{PACKAGE}.server.api"]),
        ("from openclaw_orchestrator import domainx", [f"{PACKAGE}.domainx"]),
        ("def f():\n    import sqlalchemy", ["sqlalchemy"]),
        ("if TYPE_CHECKING:\n    from structlog import BoundLogger", ["structlog"]),
        ("__import__('aiohttp')", ["__import__()"]),
        ("import importlib\nimportlib.import_module('uvicorn')", ["import_module()"]),
    ],
)
def test_the_checker_catches_what_it_should(source: str, offending: list[str]) -> None:
    """The checker itself: relative imports resolve, nested and dynamic imports are seen."""
    assert forbidden_imports(source) == offending


# -- the layers: sdk, server (core at its centre), cli, devtools ---------------------------

SRC_DIR = DOMAIN_DIR.parent
CORE_FILES = sorted((SRC_DIR / "server" / "core").glob("*.py"))
SERVER_FILES = sorted((SRC_DIR / "server").rglob("*.py"))
# What a client-only install runs: the SDK and the wire contract at the package root.
CONTRACT = (
    "__init__.py",
    "__about__.py",
    "errors.py",
    "models.py",
    "settings.py",
    "instance_url.py",
)
SDK_FILES = [*sorted((SRC_DIR / "sdk").glob("*.py")), *(SRC_DIR / name for name in CONTRACT)]
SERVER_ONLY_LIBRARIES = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy")


def module_name(path: Path) -> str:
    """``.../openclaw_orchestrator/server/core/routing.py`` ->
    ``openclaw_orchestrator.server.core.routing``."""
    parts = path.relative_to(SRC_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names a module imports (nested and TYPE_CHECKING imports included); from a
    package, ``from . import x`` counts as importing ``package.x``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: str) -> set[str]:
    """:func:`imports_of` for source text written in ``package``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def into(found: set[str], *layers: str) -> list[str]:
    """Which of ``found`` belong to the given layers (``"cli"`` = ``openclaw_orchestrator.cli``)."""
    outer = tuple(f"{PACKAGE}.{layer}" for layer in layers)
    return sorted(m for m in found if f"{m}.".startswith(tuple(f"{o}." for o in outer)))


def core_graph() -> dict[str, set[str]]:
    """Which core module imports which other core module."""
    names = {module_name(path): path for path in CORE_FILES}
    return {name: imports_of(path) & set(names) - {name} for name, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a path that ends where it starts, or []."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt, [*path, node]):
                return cycle
        done.add(node)
        return []

    for start in sorted(graph):
        if cycle := visit(start, []):
            return cycle
    return []


def test_the_layers_are_found() -> None:
    """Every layer's files are seen, so the checks below cannot pass vacuously."""
    names = set(core_graph())
    core = f"{PACKAGE}.server.core"
    parts = ("dispatcher", "routing", "fanout", "health_monitor", "sessions", "orchestrator")
    assert {f"{core}.{part}" for part in parts} <= names
    sdk = {module_name(path) for path in SDK_FILES}
    assert {f"{PACKAGE}.sdk.async_client", f"{PACKAGE}.sdk.sync_client", PACKAGE} <= sdk
    assert all(path.exists() for path in SDK_FILES)
    assert f"{PACKAGE}.server.api.app" in {module_name(path) for path in SERVER_FILES}


def test_no_import_cycle_between_core_modules() -> None:
    """Sessions, routing, fanout and the rest never import what builds them."""
    assert find_cycle(core_graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    """The finder itself: a two-module cycle (service <-> sessions, as it once was)."""
    graph = {"service": {"sessions", "registry"}, "sessions": {"service"}, "registry": set()}
    assert find_cycle(graph) == ["service", "sessions", "service"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("path", CORE_FILES, ids=[module_name(p) for p in CORE_FILES])
def test_the_core_imports_nothing_of_the_api_or_the_cli(path: Path) -> None:
    """The core is usable without the web app, the command line or the dev tools."""
    assert into(imports_of(path), "server.api", "cli", "devtools") == []


@pytest.mark.parametrize("path", SDK_FILES, ids=[module_name(p) for p in SDK_FILES])
def test_the_sdk_imports_nothing_of_the_server(path: Path) -> None:
    """The base install is the SDK: no module of it reaches the server, the CLI or the dev
    tools, nor a library only the ``server`` extra installs."""
    assert into(imports_of(path), "server", "cli", "devtools") == []
    assert [m for m in imports_of(path) if m.split(".")[0] in SERVER_ONLY_LIBRARIES] == []


@pytest.mark.parametrize("path", SERVER_FILES, ids=[module_name(p) for p in SERVER_FILES])
def test_the_server_imports_nothing_of_the_cli_or_the_dev_tools(path: Path) -> None:
    """The service runs without the command line or the local tooling around it."""
    assert into(imports_of(path), "cli", "devtools") == []


@pytest.mark.parametrize(
    ("source", "package", "found"),
    [
        ("from ..server.core import routing", f"{PACKAGE}.sdk", [f"{PACKAGE}.server.core"]),
        ("def f():\n    from ...cli import main", f"{PACKAGE}.server.core", [f"{PACKAGE}.cli"]),
        ("from openclaw_orchestrator import server", f"{PACKAGE}.sdk", [f"{PACKAGE}.server"]),
        ("from .calls import build", f"{PACKAGE}.sdk", []),
        ("from ..errors import OrchestratorError", f"{PACKAGE}.sdk", []),
        ("import openclaw_orchestrator.serverless", f"{PACKAGE}.sdk", []),
    ],
)
def test_the_layer_checker_resolves_what_it_should(
    source: str, package: str, found: list[str]
) -> None:
    """The checker itself: relative, nested and package imports are seen; prefixes are not
    mistaken for layers."""
    assert into(imports_in(source, package), "server", "cli")[:1] == found
