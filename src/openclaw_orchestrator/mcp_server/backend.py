"""The seam under the MCP tools: one protocol, two adapters.

- :class:`~.core_backend.CoreBackend`: the orchestrator's own core, in process (``/mcp``).
- :class:`~.sdk_backend.SdkBackend`: an orchestrator's HTTP API through the SDK (stdio, for
  agents that launch their tools as processes, without the server installed).

Each method is one endpoint of the HTTP API, taking the endpoint's validated request and
returning its reply model; errors are :class:`~openclaw_orchestrator.errors.OrchestratorError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..models import (
        FanoutRequest,
        FanoutResult,
        FanoutRun,
        HealthDetail,
        HistoryPage,
        InstanceInfo,
        RouteRequest,
        RouteResult,
        RouteRun,
        RunInfo,
        SendResult,
        SessionInfo,
        SessionList,
        SessionSendRequest,
        SessionSendRun,
        SpawnRequest,
        SpawnResult,
    )
    from .arguments import HealthQuery, HistoryQuery, SessionQuery

__all__ = ["SESSION_TOOLS", "Backend"]

SESSION_TOOLS = frozenset({"sessions_send", "sessions_history", "sessions_close"})
"""The tools a session token grants (for its own session only)."""


class Backend(Protocol):
    """What the MCP tools call: the orchestrator's endpoints, one method each."""

    def grants(self, tool: str) -> bool:
        """Whether this backend's credential may use ``tool`` at all (listing shows only
        those); a session token's tools still check the session on each call."""

    async def route(self, request: RouteRequest) -> RouteResult: ...

    async def fanout(self, request: FanoutRequest) -> FanoutResult: ...

    async def spawn(self, request: SpawnRequest) -> SpawnResult: ...

    async def send(self, request: SessionSendRequest) -> SendResult: ...

    async def history(self, query: HistoryQuery) -> HistoryPage: ...

    async def sessions(self, query: SessionQuery) -> SessionList: ...

    async def close(self, session_id: str) -> SessionInfo: ...

    async def health(self, query: HealthQuery) -> dict[str, str] | dict[str, HealthDetail]: ...

    async def instances(self) -> list[InstanceInfo]: ...

    async def submit(self, request: RouteRun | FanoutRun | SessionSendRun) -> RunInfo: ...

    async def run(self, run_id: str) -> RunInfo: ...

    async def wait(self, run_id: str, timeout: float) -> RunInfo: ...

    async def cancel(self, run_id: str) -> RunInfo: ...
