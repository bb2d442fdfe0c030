"""Session routes. The API key grants all of them; a session token grants its own session's
send, history, info and close, and nothing else."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from starlette.responses import Response

from ..errors import UnauthorizedError
from ..models import (
    SESSION_ID_PATTERN,
    HistoryPage,
    SendRequest,
    SendResult,
    SessionInfo,
    SessionList,
    SessionSendRequest,
    SpawnRequest,
    SpawnResult,
)
from ..session_service import SessionService
from .middleware import request_id_of
from .responses import json_response
from .security import Authenticator, bearer_token

__all__ = ["admin", "scoped"]

SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def _sessions(request: Request) -> SessionService:
    service: SessionService = request.app.state.orchestrator.sessions
    return service


def _api_key_only(request: Request) -> None:
    auth: Authenticator = request.app.state.authenticator
    auth.check(request.headers.get("authorization"))


async def _may_use(request: Request, session_id: str) -> None:
    """The API key, or the token of ``session_id`` itself."""
    auth: Authenticator = request.app.state.authenticator
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        if auth.is_enabled:
            raise UnauthorizedError("missing 'Authorization: Bearer <API key or session token>'")
        return
    if not auth.is_api_key(token):
        await _sessions(request).authorize(session_id, token)


async def _path_session(request: Request, session_id: SessionId) -> None:
    """Authorize before the body is validated: a stranger learns nothing from a 400."""
    await _may_use(request, session_id)


async def _body_session(request: Request) -> None:
    """The seed form names its session in the body; read it early for the same reason."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    session_id = body.get("sessionId", body.get("session_id")) if isinstance(body, dict) else None
    await _may_use(request, session_id if isinstance(session_id, str) else "")


admin = APIRouter(
    prefix="/api/orchestrator/sessions", tags=["sessions"], dependencies=[Depends(_api_key_only)]
)
scoped = APIRouter(prefix="/api/orchestrator/sessions", tags=["sessions"])


@admin.post("/spawn", response_model=SpawnResult, status_code=201)
async def spawn(request: Request, body: SpawnRequest) -> Response:
    """Create a session pinned to one instance; the reply holds its token, shown once."""
    return json_response(await _sessions(request).spawn(body), 201)


@admin.get("", response_model=SessionList)
async def list_sessions(
    request: Request,
    instance: str | None = None,
    state: str | None = None,
    active_within: Annotated[float | None, Query(gt=0, description="Minutes.")] = None,
) -> Response:
    """Sessions filtered by instance, state and activity in the last N minutes."""
    sessions = _sessions(request)
    return json_response(
        await sessions.list(instance=instance, state=state, active_within=active_within)
    )


@scoped.post("/send", response_model=SendResult, dependencies=[Depends(_body_session)])
async def send_seed_form(
    request: Request, body: SessionSendRequest, key: IdempotencyKey = None
) -> Response:
    """The seed's form: ``{"sessionId": ..., "data": ...}``."""
    return await _send(request, body.session_id, body, key)


@scoped.post("/{session_id}/send", response_model=SendResult, dependencies=[Depends(_path_session)])
async def send(
    request: Request, session_id: SessionId, body: SendRequest, key: IdempotencyKey = None
) -> Response:
    """Deliver a message to the session's instance, in order, and return its reply."""
    return await _send(request, session_id, body, key)


async def _send(request: Request, session_id: str, body: SendRequest, key: str | None) -> Response:
    result = await _sessions(request).send(
        session_id,
        body.data,
        timeout=body.timeout,
        idempotency_key=key,
        request_id=request_id_of(request.scope),
    )
    return json_response(result)


@scoped.get("/{session_id}", response_model=SessionInfo, dependencies=[Depends(_path_session)])
async def info(request: Request, session_id: SessionId) -> Response:
    """One session's state."""
    return json_response(await _sessions(request).info(session_id))


@scoped.get(
    "/{session_id}/history", response_model=HistoryPage, dependencies=[Depends(_path_session)]
)
async def history(
    request: Request,
    session_id: SessionId,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Every message and reply with time, instance and latency; oldest first, paginated."""
    return json_response(await _sessions(request).history(session_id, offset=offset, limit=limit))


@scoped.post(
    "/{session_id}/close", response_model=SessionInfo, dependencies=[Depends(_path_session)]
)
@scoped.delete("/{session_id}", response_model=SessionInfo, dependencies=[Depends(_path_session)])
async def close(request: Request, session_id: SessionId) -> Response:
    """Close the session; its token stops working, its history stays for the retention."""
    return json_response(await _sessions(request).close(session_id))
