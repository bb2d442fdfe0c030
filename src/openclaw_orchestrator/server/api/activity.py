"""The activity feed over HTTP (:mod:`..core.activity`): recent routes, fanouts and health
changes, the instances as they are now, and both live as server-sent events. Behind the API
key, or the dashboard's cookie for these reads (:func:`~.security.ui_cookie_grants`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from ...activity import ActivityPage, InstancesActivity
from ...errors import InvalidRequestError
from ..core.activity import MAX_PAGE, Activity
from ..core.orchestrator import Orchestrator
from .guard import guarded_route
from .openapi import error_responses
from .responses import json_response
from .security import require_api_key

__all__ = ["MAX_CURSOR", "router"]

MAX_CURSOR = 2**53
"""The largest cursor or ``Last-Event-ID`` accepted (JSON's exact integers)."""
PING_EVERY = 15.0
"""Seconds between keep-alive comments on a quiet stream (proxies close idle ones)."""

router = APIRouter(
    prefix="/api/orchestrator/activity",
    tags=["activity"],
    route_class=guarded_route(require_api_key),
    responses=error_responses(401, 403, 413),
)


def _service(request: Request) -> Orchestrator:
    service: Orchestrator = request.app.state.orchestrator
    return service


@router.get("", response_model=ActivityPage, responses=error_responses(400))
async def activity(
    request: Request,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_CURSOR, description="Entries older than this id.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> Response:
    """Recent routes, fanouts and health changes, newest first; ``next_before`` is the
    ``before`` of the next (older) page."""
    return json_response(_service(request).activity.page(before=before, limit=limit))


@router.get("/instances", response_model=InstancesActivity)
async def instances(request: Request) -> Response:
    """Every instance now: health state and reason, probe latency, in-flight calls, when a
    down instance is next probed (its ejection's end) and its health timeline."""
    return json_response(_service(request).instances_activity())


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    include_in_schema=False,  # never ends: a schema fuzzer would wait on it forever
)
async def stream(
    request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_CURSOR)] = None,
    interval: Annotated[float, Query(ge=0.2, le=60)] = 1.0,
) -> EventSourceResponse:
    """``activity`` events (an entry each, ``id`` its cursor: resumable with
    ``Last-Event-ID`` or ``?after=N``) and an ``instances`` snapshot every ``interval``
    seconds."""
    start = after
    if last_event_id is not None:
        if not last_event_id.isdigit() or int(last_event_id) > MAX_CURSOR:
            raise InvalidRequestError(
                "Last-Event-ID: not an event id of this stream", field="Last-Event-ID"
            )
        start = max(start or 0, int(last_event_id))
    service = _service(request)
    return EventSourceResponse(_frames(service, start, interval), ping=PING_EVERY)


async def _frames(
    service: Orchestrator, start: int | None, interval: float
) -> AsyncIterator[ServerSentEvent]:
    """Merge the feed's entries with a snapshot of the instances every ``interval``."""
    queue: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue(1)  # backlog: the feed's
    feed = asyncio.create_task(_pump(service.activity, start, queue))
    loop = asyncio.get_running_loop()
    try:
        yield _snapshot(service)
        due = loop.time() + interval
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), max(0.0, due - loop.time()))
            except TimeoutError:
                frame = _snapshot(service)
                due = loop.time() + interval
            if frame is None:  # fell too far behind: end, the client resumes by its last id
                return
            yield frame
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)


async def _pump(
    activity: Activity, start: int | None, queue: asyncio.Queue[ServerSentEvent | None]
) -> None:
    async for entry in activity.subscribe(start):
        frame = ServerSentEvent(entry.model_dump_json(), event="activity", id=str(entry.id))
        await queue.put(frame)  # a slow client fills the feed's bounded queue: dropped there
    await queue.put(None)


def _snapshot(service: Orchestrator) -> ServerSentEvent:
    return ServerSentEvent(service.instances_activity().model_dump_json(), event="instances")
