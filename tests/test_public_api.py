"""The public surface of ``openclaw_orchestrator``: complete, sorted, light to import."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import openclaw_orchestrator
from openclaw_orchestrator import errors, models
from openclaw_orchestrator.__about__ import __version__

INIT = Path(openclaw_orchestrator.__file__)
WIRE_MODELS = [
    "Attempt",
    "FanoutEntry",
    "FanoutResult",
    "HealthDetail",
    "HistoryEntry",
    "HistoryPage",
    "InstanceInfo",
    "InstanceSpec",
    "RouteResult",
    "SendResult",
    "SessionInfo",
    "Skip",
    "SpawnResult",
]
SDK_CLASSES = ["AsyncClient", "AsyncSession", "AsyncSessions", "Client", "Session", "Sessions"]


def _type_checking_imports() -> set[str]:
    """Names imported under ``if TYPE_CHECKING:`` in ``__init__.py`` (what type checkers see)."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    names.update(alias.asname or alias.name for alias in stmt.names)
    return names


def test_all_is_sorted_and_unique() -> None:
    """``__all__`` is sorted (as ruff's RUF022 keeps it) with no name twice."""
    exported = openclaw_orchestrator.__all__
    assert exported == sorted(exported)
    assert len(set(exported)) == len(exported)


def test_all_matches_what_type_checkers_see() -> None:
    """Every lazily exported name is also a static import, and the other way round."""
    assert set(openclaw_orchestrator.__all__) == _type_checking_imports() | {"__version__"}


@pytest.mark.parametrize("name", openclaw_orchestrator.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    """Each name in ``__all__`` loads on access and is the object of its home module."""
    value = getattr(openclaw_orchestrator, name)
    assert value is not None
    assert name in dir(openclaw_orchestrator)


def test_every_error_class_is_exported() -> None:
    """All classes of the error tree are part of the surface (one ``except`` per code)."""
    classes = [
        name
        for name in errors.__all__
        if inspect.isclass(getattr(errors, name)) and issubclass(getattr(errors, name), Exception)
    ]
    assert classes
    assert set(classes) <= set(openclaw_orchestrator.__all__)
    for name in classes:
        assert getattr(openclaw_orchestrator, name) is getattr(errors, name)


def test_wire_models_and_clients_are_exported() -> None:
    """The SDK, its wire models and the version are importable from the package root."""
    for name in WIRE_MODELS:
        assert getattr(openclaw_orchestrator, name) is getattr(models, name)
    from openclaw_orchestrator.sdk import async_client as client

    for name in SDK_CLASSES:
        assert getattr(openclaw_orchestrator, name) is getattr(client, name)
    assert openclaw_orchestrator.__version__ == __version__


def test_session_errors_are_exported() -> None:
    """``except SessionExistsError`` / ``SessionClosedError`` work from the package root."""
    assert openclaw_orchestrator.SessionExistsError is errors.SessionExistsError
    assert openclaw_orchestrator.SessionClosedError is errors.SessionClosedError
    assert issubclass(openclaw_orchestrator.SessionExistsError, errors.ConflictError)


def test_fencing_errors_are_exported() -> None:
    """``except StaleEpochError`` / ``StaleSeqError`` work from the package root; both are
    an instance's errors (they name it), surfaced as 409."""
    for cls in (openclaw_orchestrator.StaleEpochError, openclaw_orchestrator.StaleSeqError):
        assert cls is getattr(errors, cls.__name__)
        assert issubclass(cls, errors.InstanceError)
        assert cls.status == 409
        assert errors.ERRORS_BY_CODE[cls.code] is cls


def test_unknown_attribute_raises_attribute_error() -> None:
    """The lazy loader does not invent names."""
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = openclaw_orchestrator.NoSuchThing  # type: ignore[attr-defined]


def _modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return {line.split(".")[0] for line in done.stdout.splitlines()}


def test_package_import_is_light() -> None:
    """``import openclaw_orchestrator`` loads no server, CLI or HTTP machinery at all."""
    loaded = _modules_after("import openclaw_orchestrator")
    assert not loaded & {"fastapi", "uvicorn", "typer", "rich", "aiohttp", "pydantic"}


def test_sdk_import_skips_server_and_cli() -> None:
    """Using the SDK never imports fastapi, uvicorn, typer or rich."""
    loaded = _modules_after(
        "from openclaw_orchestrator import AsyncClient, AsyncSession, Client, Session, SessionInfo"
    )
    assert "aiohttp" in loaded
    assert not loaded & {"fastapi", "uvicorn", "typer", "rich"}


def test_cli_entry_import_is_light() -> None:
    """The ``openclaw`` shim decides about the hand-off before importing Typer or the SDK."""
    loaded = _modules_after("import openclaw_orchestrator.cli.entry")
    assert not loaded & {"typer", "rich", "aiohttp", "pydantic", "fastapi", "uvicorn"}


def test_cli_client_commands_skip_server_modules() -> None:
    """Loading the commands (as every client command does) never imports fastapi or uvicorn."""
    loaded = _modules_after("import openclaw_orchestrator.cli.main")
    assert not loaded & {"fastapi", "uvicorn", "aiohttp", "rich"}
