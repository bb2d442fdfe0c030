"""openclaw-orchestrator: delegate tasks to named agent instances, from Python or the shell.

The public surface is the SDK: :class:`AsyncClient` and its synchronous twin :class:`Client`
(with their session namespaces and handles), the wire models they return, and the error tree
they raise. Names are loaded on first use
(PEP 562), so ``import openclaw_orchestrator`` — and with it every run of the ``openclaw``
command, most of which only hand over to the real OpenClaw CLI — costs almost nothing;
type checkers read the imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .__about__ import __version__

if TYPE_CHECKING:
    from .activity import ActivityEntry, ActivityPage, InstanceActivity, InstancesActivity
    from .errors import (
        AddressNotAllowedError,
        AggregationError,
        ConflictError,
        ConnectionFailedError,
        DelegationLoopError,
        ForbiddenError,
        InstanceDownError,
        InstanceError,
        InstanceProtocolError,
        InstanceRejectedError,
        InvalidRequestError,
        NoHealthyInstanceError,
        NotFoundError,
        OrchestratorError,
        OverloadedError,
        PayloadTooLargeError,
        ReplyTooLargeError,
        SessionClosedError,
        SessionExistsError,
        StaleEpochError,
        StaleSeqError,
        StorageFullError,
        StorageUnavailableError,
        TimeoutExceededError,
        UnauthorizedError,
    )
    from .models import (
        Attempt,
        CallbackInfo,
        CallbackSpec,
        FanoutEntry,
        FanoutResult,
        HealthDetail,
        HistoryEntry,
        HistoryPage,
        InstanceInfo,
        InstanceSpec,
        RouteResult,
        RunInfo,
        RunList,
        SendResult,
        SessionInfo,
        Skip,
        SpawnResult,
        TargetExpr,
    )
    from .sdk.async_client import AsyncClient, AsyncRuns, AsyncSession, AsyncSessions
    from .sdk.events import Delta, RunEvent
    from .sdk.sync_client import Client, Runs, Session, Sessions
    from .settings import ConfigError

__all__ = [
    "ActivityEntry",
    "ActivityPage",
    "AddressNotAllowedError",
    "AggregationError",
    "AsyncClient",
    "AsyncRuns",
    "AsyncSession",
    "AsyncSessions",
    "Attempt",
    "CallbackInfo",
    "CallbackSpec",
    "Client",
    "ConfigError",
    "ConflictError",
    "ConnectionFailedError",
    "DelegationLoopError",
    "Delta",
    "FanoutEntry",
    "FanoutResult",
    "ForbiddenError",
    "HealthDetail",
    "HistoryEntry",
    "HistoryPage",
    "InstanceActivity",
    "InstanceDownError",
    "InstanceError",
    "InstanceInfo",
    "InstanceProtocolError",
    "InstanceRejectedError",
    "InstanceSpec",
    "InstancesActivity",
    "InvalidRequestError",
    "NoHealthyInstanceError",
    "NotFoundError",
    "OrchestratorError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ReplyTooLargeError",
    "RouteResult",
    "RunEvent",
    "RunInfo",
    "RunList",
    "Runs",
    "SendResult",
    "Session",
    "SessionClosedError",
    "SessionExistsError",
    "SessionInfo",
    "Sessions",
    "Skip",
    "SpawnResult",
    "StaleEpochError",
    "StaleSeqError",
    "StorageFullError",
    "StorageUnavailableError",
    "TargetExpr",
    "TimeoutExceededError",
    "UnauthorizedError",
    "__version__",
]

_SOURCES = (
    ".errors",
    ".models",
    ".activity",
    ".settings",
    ".sdk.events",
    ".sdk.sync_client",
    ".sdk.async_client",
)
"""Where the lazy names live, cheapest module first (each imports the ones before it)."""


if not TYPE_CHECKING:  # a module __getattr__ would make every attribute Any to type checkers

    def __getattr__(name: str) -> Any:
        """Import a public name on first access and cache it in the module's namespace."""
        if name in __all__:
            for source in _SOURCES:
                module = importlib.import_module(source, __name__)
                if name in getattr(module, "__all__", ()):
                    value = getattr(module, name)
                    globals()[name] = value
                    return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """Public names included before their first use, for completion and ``help()``."""
    return sorted({*globals(), *__all__})
