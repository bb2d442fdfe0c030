"""Session routes. The API key grants all of them; a session token grants its own session's
send, history, info and close, and nothing else.

Both routers authenticate in their route class (:func:`~.guard.guarded_route`), before the
body is read: a stranger learns nothing from a 400.
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from ...domain.duration import MAX_DURATION
from ...errors import ForbiddenError, UnauthorizedError
from ...models import (
    MAX_HISTORY_OFFSET,
    NAME_PATTERN,
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
from ..core.sessions import MAX_HISTORY_PAGE, SessionService
from .event_stream import STREAM_REPLY, event_stream, wants_stream
from .guard import guarded_route
from .middleware import request_id_of
from .openapi import error_responses
from .responses import json_response
from .routes import IdempotencyKey
from .run_submit import ASYNC_REPLY, prefers_async, submit_run
from .security import (
    Authenticator,
    bearer_token,
    is_session_token,
    require_api_key,
    ui_cookie_grants,
)

__all__ = ["admin", "scoped"]

SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]
MAX_ACTIVE_WITHIN = MAX_DURATION / 60
"""The largest ``active_within`` (minutes): ten years, like any duration."""


def _sessions(request: Request) -> SessionService:
    service: SessionService = request.app.state.orchestrator.sessions
    return service


async def _may_use(request: Request, session_id: str) -> None:
    """The API key, or the token of ``session_id`` itself; anything else that is not a
    session token is a wrong key (401), a session token elsewhere is 403."""
    auth: Authenticator = request.app.state.authenticator
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        if auth.is_enabled and not ui_cookie_grants(request):
            raise UnauthorizedError("missing 'Authorization: Bearer <API key or session token>'")
        return
    if auth.is_api_key(token):
        return
    if not is_session_token(token):
        raise UnauthorizedError("invalid API key")
    await _sessions(request).authorize(session_id, token)


async def _session_scope(request: Request) -> None:
    """Authorize for the session the request is about: the path's, else (the seed's send
    form) the ``sessionId`` in the body, read leniently here since nothing is parsed yet."""
    session_id = request.path_params.get("session_id")
    if not isinstance(session_id, str):
        session_id = _body_session_id(await request.body())
    await _may_use(request, session_id)


def _body_session_id(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    session_id = body.get("sessionId", body.get("session_id")) if isinstance(body, dict) else None
    return session_id if isinstance(session_id, str) else ""


_GUARDED = error_responses(401, 403, 413)
admin = APIRouter(
    prefix="/api/orchestrator/sessions",
    tags=["sessions"],
    route_class=guarded_route(require_api_key),
    responses=_GUARDED,
)
scoped = APIRouter(
    prefix="/api/orchestrator/sessions",
    tags=["sessions"],
    route_class=guarded_route(_session_scope),
    responses=_GUARDED,
)
_SEND_ERRORS = {
    **STREAM_REPLY,
    **ASYNC_REPLY,
    **error_responses(400, 404, 409, 410, 502, 503, 504, 507, 508),
}
_READ_ERRORS = error_responses(400, 404, 503)


@admin.post(
    "/spawn",
    response_model=SpawnResult,
    status_code=201,
    responses=error_responses(400, 409, 503, 507),
)
async def spawn(request: Request, body: SpawnRequest) -> Response:
    """Create a session pinned to one instance; the reply holds its token, shown once."""
    return json_response(await _sessions(request).spawn(body), 201)


@admin.get("", response_model=SessionList, responses=error_responses(400, 503))
async def list_sessions(
    request: Request,
    instance: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    state: Literal["open", "closed", "expired"] | None = None,
    active_within: Annotated[
        float | None,
        Query(gt=0, le=MAX_ACTIVE_WITHIN, allow_inf_nan=False, description="Minutes."),
    ] = None,
) -> Response:
    """Sessions filtered by instance, state and activity in the last N minutes."""
    sessions = _sessions(request)
    return json_response(
        await sessions.list(instance=instance, state=state, active_within=active_within)
    )


@scoped.post("/send", response_model=SendResult, responses=_SEND_ERRORS)
async def send_seed_form(
    request: Request, body: SessionSendRequest, key: IdempotencyKey = None
) -> Response:
    """The seed's form: ``{"sessionId": ..., "data": ...}``."""
    return await _send(request, body.session_id, body, key)


@scoped.post("/{session_id}/send", response_model=SendResult, responses=_SEND_ERRORS)
async def send(
    request: Request, session_id: SessionId, body: SendRequest, key: IdempotencyKey = None
) -> Response:
    """Deliver a message to the session's instance, in order, and return its reply; with
    ``"stream": true`` (or ``Accept: text/event-stream``) relay its output as server-sent
    events."""
    return await _send(request, session_id, body, key)


async def _send(request: Request, session_id: str, body: SendRequest, key: str | None) -> Response:
    if body.run_async or prefers_async(request):
        auth: Authenticator = request.app.state.authenticator
        token = bearer_token(request.headers.get("authorization"))
        if auth.is_enabled and (token is None or not auth.is_api_key(token)):
            raise ForbiddenError(
                "an async send is a durable run, read with the API key: a session token "
                "may only send and wait"
            )
        return await submit_run(
            request, "session_send", body, key, {"sessionId": session_id}, replayed_status=202
        )
    sessions, rid = _sessions(request), request_id_of(request.scope)
    if wants_stream(request, body.stream):
        return await event_stream(
            lambda stream: sessions.send(
                session_id,
                body.data,
                timeout=body.timeout,
                idempotency_key=key,
                request_id=rid,
                stream=stream,
            )
        )
    result = await sessions.send(
        session_id, body.data, timeout=body.timeout, idempotency_key=key, request_id=rid
    )
    return json_response(result)


@scoped.get("/{session_id}", response_model=SessionInfo, responses=_READ_ERRORS)
async def info(request: Request, session_id: SessionId) -> Response:
    """One session's state."""
    return json_response(await _sessions(request).info(session_id))


@scoped.get("/{session_id}/history", response_model=HistoryPage, responses=_READ_ERRORS)
async def history(
    request: Request,
    session_id: SessionId,
    offset: Annotated[int, Query(ge=0, le=MAX_HISTORY_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_PAGE)] = 100,
) -> Response:
    """Every message and reply with time, instance and latency; oldest first, paginated."""
    return json_response(await _sessions(request).history(session_id, offset=offset, limit=limit))


_CLOSE_ERRORS = error_responses(400, 404, 503, 507)


@scoped.post("/{session_id}/close", response_model=SessionInfo, responses=_CLOSE_ERRORS)
@scoped.delete("/{session_id}", response_model=SessionInfo, responses=_CLOSE_ERRORS)
async def close(request: Request, session_id: SessionId) -> Response:
    """Close the session; its token stops working, its history stays for the retention."""
    return json_response(await _sessions(request).close(session_id))
