"""The tools over an orchestrator's HTTP API, through the async SDK: what the stdio server
(``openclaw orchestrator mcp``) serves, with the client's own credential.

The orchestrator enforces that credential: with a session token (``ocs_…``) as
``ORCHESTRATOR_API_KEY`` only that session's tools work there, so only those are listed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..domain.sessions import TOKEN_PREFIX
from ..models import SessionList, SpawnResult
from .backend import SESSION_TOOLS

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
        SessionSendRequest,
        SessionSendRun,
        SpawnRequest,
    )
    from ..sdk.async_client import AsyncClient
    from .arguments import HealthQuery, HistoryQuery, SessionQuery

__all__ = ["SdkBackend"]


class SdkBackend:
    """The endpoints of the HTTP API through ``client``; ``credential`` is the bearer it
    sends (only its form is looked at: a session token's tools are the session's)."""

    def __init__(self, client: AsyncClient, credential: str | None) -> None:
        self._client = client
        self._is_session = credential is not None and credential.startswith(TOKEN_PREFIX)

    def __repr__(self) -> str:
        return f"<SdkBackend {self._client!r}>"

    def grants(self, tool: str) -> bool:
        """Every tool with the API key; a session token's three tools with one."""
        return not self._is_session or tool in SESSION_TOOLS

    async def route(self, request: RouteRequest) -> RouteResult:
        return await self._client.route(
            request.payload,
            instances=request.instances,
            timeout=request.timeout,
            attempt_timeout=request.attempt_timeout,
            retry=request.retry,
            policy=request.policy,
        )

    async def fanout(self, request: FanoutRequest) -> FanoutResult:
        return await self._client.fanout(
            request.payload,
            targets=request.targets,
            aggregate=request.aggregate,
            timeout=request.timeout,
            attempt_timeout=request.attempt_timeout,
            min_success=request.min_success,
            quorum=request.quorum,
            top_k=request.top_k,
            retry=request.retry,
        )

    async def spawn(self, request: SpawnRequest) -> SpawnResult:
        handle = await self._client.sessions.spawn(
            request.session_id,
            instance=request.instance,
            metadata=request.metadata,
            ttl=request.ttl,
            failover=request.failover,
            policy=request.policy,
        )
        assert handle.info is not None  # a spawned handle holds what the spawn answered
        return SpawnResult(**handle.info.model_dump(), token=handle.token or "")

    async def send(self, request: SessionSendRequest) -> SendResult:
        sessions = self._client.sessions
        return await sessions.send(request.session_id, request.data, timeout=request.timeout)

    async def history(self, query: HistoryQuery) -> HistoryPage:
        sessions = self._client.sessions
        return await sessions.history(query.session_id, offset=query.offset, limit=query.limit)

    async def sessions(self, query: SessionQuery) -> SessionList:
        found = await self._client.sessions.list(
            instance=query.instance, state=query.state, active_within=query.active_within
        )
        return SessionList(sessions=found)

    async def close(self, session_id: str) -> SessionInfo:
        return await self._client.sessions.close(session_id)

    async def health(self, query: HealthQuery) -> dict[str, str] | dict[str, HealthDetail]:
        if query.detail:
            return await self._client.health_detail(query.instances)
        return await self._client.health(query.instances)

    async def instances(self) -> list[InstanceInfo]:
        return await self._client.instances()

    async def submit(self, request: RouteRun | FanoutRun | SessionSendRun) -> RunInfo:
        fields = request.model_dump(mode="json", exclude={"kind", "run_async"}, exclude_none=True)
        return await self._client.runs.submit(request.kind, **fields)

    async def run(self, run_id: str) -> RunInfo:
        return await self._client.runs.get(run_id)

    async def wait(self, run_id: str, timeout: float) -> RunInfo:
        return await self._client.runs.wait(run_id, timeout=timeout)

    async def cancel(self, run_id: str) -> RunInfo:
        return await self._client.runs.cancel(run_id)
