"""Durable runs over HTTP: submit (202 once stored), look, wait (``?wait=30s``), list, cancel.
All behind the API key."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Header, Path, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from ...domain.duration import parse_duration
from ...domain.runs import MAX_RUN_ID, RunEvent
from ...errors import InvalidRequestError
from ...models import RunInfo, RunList, RunSubmit, SessionSendRun
from ..core.orchestrator import Orchestrator
from ..core.runs import RunService
from ..stores.runs import MAX_RUNS_PAGE, RunQuery
from .guard import guarded_route
from .openapi import error_responses
from .responses import json_response
from .routes import IdempotencyKey
from .run_submit import run_info, submit_run
from .security import require_api_key

__all__ = ["router"]

RunId = Annotated[str, Path(pattern=rf"^[A-Za-z0-9_-]{{1,{MAX_RUN_ID}}}$")]

router = APIRouter(
    prefix="/api/orchestrator/runs",
    tags=["runs"],
    route_class=guarded_route(require_api_key),
    responses=error_responses(401, 403, 413),
)


def _runs(request: Request) -> RunService:
    orchestrator: Orchestrator = request.app.state.orchestrator
    return orchestrator.runs


@router.post(
    "",
    status_code=202,
    response_model=RunInfo,
    responses={
        200: {"description": "An Idempotency-Key's earlier run."},
        **error_responses(400, 409, 508),
    },
)
async def submit(
    request: Request, body: Annotated[RunSubmit, Body()], key: IdempotencyKey = None
) -> Response:
    """Store a route, fanout or session send to run in the background; answered once stored."""
    extra = {"sessionId": body.session_id} if isinstance(body, SessionSendRun) else None
    return await submit_run(request, body.kind, body, key, extra)


@router.get("/{run_id}", response_model=RunInfo, responses=error_responses(400, 404))
async def get_run(
    request: Request,
    run_id: RunId,
    wait: Annotated[
        str | None,
        Query(description="Wait until the run ends, at most this long ('30s', '500ms')."),
    ] = None,
) -> Response:
    """The run, with its callback's delivery; with ``wait``, once it has ended or the wait
    ran out (a long poll)."""
    orchestrator: Orchestrator = request.app.state.orchestrator
    if wait is None:
        run = await orchestrator.runs.get(run_id)
    else:
        longest = orchestrator.settings.runs.max_wait
        seconds = parse_duration(wait, field="wait", maximum=longest)
        run = await orchestrator.runs.wait(run_id, seconds)
    return json_response(run_info(run, await orchestrator.callbacks.view(run_id)))


@router.get("", response_model=RunList, responses=error_responses(400))
async def list_runs(
    request: Request,
    state: Annotated[
        Literal["queued", "running", "succeeded", "failed", "timed_out", "cancelled"] | None,
        Query(),
    ] = None,
    kind: Annotated[Literal["route", "fanout", "session_send"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_RUNS_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Runs, newest first; ``next`` is the ``cursor`` of the next page."""
    query = RunQuery(state=state, kind=kind, before=_decode(cursor), limit=limit)
    page = await _runs(request).page(query)
    last = page.runs[-1] if page.runs and page.more else None
    following = None if last is None else _encode(last.created_at, last.id)
    return json_response(RunList(runs=[run_info(r) for r in page.runs], next=following))


@router.post("/{run_id}/cancel", response_model=RunInfo, responses=error_responses(400, 404))
async def cancel(request: Request, run_id: RunId) -> Response:
    """Stop the run: at once if it is queued or this replica works on it, within about a
    second on another replica. A finished run is returned as it is."""
    return json_response(run_info(await _runs(request).cancel(run_id)))


MAX_EVENT_ID = 2**31 - 1
PING_EVERY = 15.0
"""Seconds between keep-alive comments on a quiet event stream (proxies close idle ones)."""


@router.get(
    "/{run_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Server-sent events: `id` is the event's number, `event` its "
            "type (state, attempt, entry, delta, result), `data` its JSON; the stream ends "
            "after the `result` event.",
            "content": {"text/event-stream": {}},
        },
        **error_responses(400, 404),
    },
)
async def events(
    request: Request,
    run_id: RunId,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=20, description="Resume after this event."),
    ] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID)] = None,
) -> EventSourceResponse:
    """The run's events as they are recorded, resumable with ``Last-Event-ID`` (or
    ``?after=N``), ending with its final result."""
    start = after or 0
    if last_event_id is not None:
        if not last_event_id.isdigit() or int(last_event_id) > MAX_EVENT_ID:
            raise InvalidRequestError(
                "Last-Event-ID: not an event number of this stream", field="Last-Event-ID"
            )
        start = max(start, int(last_event_id))
    stream = _runs(request).follow(run_id, start)
    first = await anext(stream, None)  # an unknown run is a 404 here, not an empty stream

    async def frames() -> AsyncIterator[ServerSentEvent]:
        if first is None:
            return
        yield _frame(first)
        async for event in stream:
            yield _frame(event)

    return EventSourceResponse(frames(), ping=PING_EVERY)


def _frame(event: RunEvent) -> ServerSentEvent:
    return ServerSentEvent(orjson.dumps(event.data).decode(), event=event.type, id=str(event.seq))


def _encode(created_at: float, run_id: str) -> str:
    raw = orjson.dumps([created_at, run_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value: Any = orjson.loads(raw)
        created_at, run_id = value
        if isinstance(created_at, int | float) and isinstance(run_id, str):
            return float(created_at), run_id
    except (ValueError, TypeError, orjson.JSONDecodeError):
        pass
    raise InvalidRequestError("cursor: not a cursor this API gave", field="cursor")
