"""The tools over the orchestrator's own core, in process: what ``/mcp`` serves.

A :class:`Grant` is what the request's bearer credential allows, decided before the MCP
request is read (:mod:`.http`): the API key every tool, a session token only its own
session's send, history and close, checked on every call as the HTTP API does.

The loop guard needs nothing here: the ``/mcp`` request's ``X-Orchestrator-Hops`` (or, for
a gateway that names itself in ``X-Orchestrator-Caller``, the deepest delivery in flight to
it) is bound by the request-context middleware (:mod:`..server.delegation`) and the SDK's
handling of the request runs in tasks that inherit it, so a tool's route, fanout, send or
submit is refused at ``delegation.max_hops`` and its deliveries send one more, as over HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ForbiddenError
from ..models import SessionList, SessionSendRun
from ..server.api.run_submit import NOT_STORED, run_info
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
        SpawnRequest,
        SpawnResult,
    )
    from ..server.core.orchestrator import Orchestrator
    from .arguments import HealthQuery, HistoryQuery, SessionQuery

__all__ = ["CoreBackend", "Grant"]


@dataclass(frozen=True, slots=True)
class Grant:
    """What a request may do: everything (``session_token`` None: the API key, or an
    orchestrator running open), or the tools of the one session ``session_token`` opens."""

    session_token: str | None = None

    def __repr__(self) -> str:  # the token is a secret
        return f"<Grant {'all' if self.session_token is None else 'session'}>"


class CoreBackend:
    """The endpoints of the HTTP API as calls on the core, for one request's ``grant``;
    ``request_id`` is the MCP request's own (its ``X-Request-ID``)."""

    def __init__(self, orchestrator: Orchestrator, grant: Grant, request_id: str) -> None:
        self._core = orchestrator
        self._grant = grant
        self._request_id = request_id

    def __repr__(self) -> str:
        return f"<CoreBackend {self._grant!r}>"

    def grants(self, tool: str) -> bool:
        """Every tool with the API key; a session token's three tools with one."""
        return self._grant.session_token is None or tool in SESSION_TOOLS

    def _require_key(self) -> None:
        if self._grant.session_token is not None:
            raise ForbiddenError("a session token grants its own session only, not this")

    async def _require_session(self, session_id: str) -> None:
        token = self._grant.session_token
        if token is not None:
            await self._core.sessions.authorize(session_id, token)

    async def route(self, request: RouteRequest) -> RouteResult:
        self._require_key()
        return await self._core.route(request, request_id=self._request_id)

    async def fanout(self, request: FanoutRequest) -> FanoutResult:
        self._require_key()
        return await self._core.fanout(request, request_id=self._request_id)

    async def spawn(self, request: SpawnRequest) -> SpawnResult:
        self._require_key()
        return await self._core.sessions.spawn(request)

    async def send(self, request: SessionSendRequest) -> SendResult:
        await self._require_session(request.session_id)
        return await self._core.sessions.send(
            request.session_id,
            request.data,
            timeout=request.timeout,
            idempotency_key=None,
            request_id=self._request_id,
        )

    async def history(self, query: HistoryQuery) -> HistoryPage:
        await self._require_session(query.session_id)
        sessions = self._core.sessions
        return await sessions.history(query.session_id, offset=query.offset, limit=query.limit)

    async def sessions(self, query: SessionQuery) -> SessionList:
        self._require_key()
        return await self._core.sessions.list(
            instance=query.instance, state=query.state, active_within=query.active_within
        )

    async def close(self, session_id: str) -> SessionInfo:
        await self._require_session(session_id)
        return await self._core.sessions.close(session_id)

    async def health(self, query: HealthQuery) -> dict[str, str] | dict[str, HealthDetail]:
        self._require_key()
        if query.detail:
            return self._core.health_detail(query.instances)
        return self._core.health(query.instances)

    async def instances(self) -> list[InstanceInfo]:
        self._require_key()
        return self._core.instances()

    async def submit(self, request: RouteRun | FanoutRun | SessionSendRun) -> RunInfo:
        """Stored as ``POST /api/orchestrator/runs`` stores it (:mod:`..server.api.run_submit`)."""
        self._require_key()
        timeout = self._core.settings.timeout if request.timeout is None else request.timeout
        self._core.deadline(timeout)  # a 400 naming timeout when over max_timeout
        extra = {"sessionId": request.session_id} if isinstance(request, SessionSendRun) else {}
        stored = {
            **extra,
            **request.model_dump(mode="json", by_alias=True, exclude=set(NOT_STORED)),
        }
        run, _ = await self._core.runs.submit(request.kind, stored, timeout=timeout)
        return run_info(run)

    async def run(self, run_id: str) -> RunInfo:
        self._require_key()
        return run_info(await self._core.runs.get(run_id))

    async def wait(self, run_id: str, timeout: float) -> RunInfo:
        """Long polls of at most ``runs.max_wait`` each until the run ends or ``timeout``."""
        self._require_key()
        runs, longest = self._core.runs, self._core.settings.runs.max_wait
        end = self._core.clock() + timeout
        record = await runs.get(run_id)
        while not record.finished and (left := end - self._core.clock()) > 0:
            record = await runs.wait(run_id, min(left, longest))
        return run_info(record)

    async def cancel(self, run_id: str) -> RunInfo:
        self._require_key()
        return run_info(await self._core.runs.cancel(run_id))
