"""Route handlers: validate, make one service call, return the model as JSON.

Each router's route class (:func:`~.guard.guarded_route`) authenticates before the body is
read and decodes it as strict JSON; each route documents the errors it can answer
(:func:`~.openapi.error_responses`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse

from ... import __about__
from ...errors import InvalidRequestError, OrchestratorError
from ...models import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_IDEMPOTENCY_KEY,
    FanoutEntry,
    FanoutRequest,
    FanoutResult,
    HealthDetail,
    InstanceInfo,
    RegisterBody,
    RouteRequest,
    RouteResult,
    SkillList,
    SkillManifest,
    SkillRegistration,
)
from ..core.idempotency import IdempotencyKeys, fingerprint
from ..core.orchestrator import Orchestrator
from .event_stream import STREAM_REPLY, event_stream, wants_stream
from .guard import guarded_route
from .middleware import request_id_of
from .openapi import error_responses
from .responses import json_response, value_json
from .run_submit import ASYNC_REPLY, prefers_async, submit_run
from .security import require_api_key
from .skills import mcp_url, skill_list, skill_manifest

__all__ = ["IdempotencyKey", "cluster", "orchestrator", "public"]

NDJSON = "application/x-ndjson"
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        max_length=MAX_IDEMPOTENCY_KEY,
        description=f"1–{MAX_IDEMPOTENCY_KEY} visible ASCII characters: a repeat with the "
        "same key returns the first result instead of running again.",
    ),
]
Render = Callable[[Any, dict[str, str] | None], Response]


def _service(request: Request) -> Orchestrator:
    service: Orchestrator = request.app.state.orchestrator
    return service


def _render_model(result: BaseModel, headers: dict[str, str] | None) -> Response:
    return json_response(result, headers=headers)


async def _idempotent(
    request: Request,
    key: str | None,
    scope: str,
    body: BaseModel,
    work: Callable[[], Awaitable[BaseModel]],
    decode: Callable[[bytes], BaseModel],
    render: Render = _render_model,
) -> Response:
    """Run ``work`` once per Idempotency-Key (``decode`` reads a result a replica kept as
    JSON); a replay says so in a header."""
    if key is None:
        return render(await work(), None)
    cache: IdempotencyKeys[BaseModel] = request.app.state.idempotency
    digest = fingerprint(scope, body.model_dump(mode="json"))
    result, replayed = await cache.run(f"{scope}:{key}", digest, work, decode=decode)
    return render(result, {"Idempotent-Replayed": "true"} if replayed else None)


def _render_value(result: FanoutResult, headers: dict[str, str] | None) -> Response:
    return Response(value_json(result), media_type="application/json", headers=headers)


public = APIRouter(
    tags=["liveness"], route_class=guarded_route(None), responses=error_responses(413)
)
orchestrator = APIRouter(
    prefix="/api/orchestrator",
    tags=["orchestrator"],
    route_class=guarded_route(require_api_key),
    responses=error_responses(401, 403, 413),
)
cluster = APIRouter(
    prefix="/api/cluster",
    tags=["cluster"],
    route_class=guarded_route(require_api_key),
    responses=error_responses(401, 403, 413),
)


@public.get("/api/health/check")
async def liveness(request: Request) -> dict[str, Any]:
    """The orchestrator's own liveness; no authentication, no secrets."""
    return {**_service(request).liveness(), "version": __about__.__version__}


@orchestrator.post(
    "/route",
    response_model=RouteResult,
    responses={
        **STREAM_REPLY,
        **ASYNC_REPLY,
        **error_responses(400, 409, 502, 503, 504, 508),
    },
)
async def route(request: Request, body: RouteRequest, key: IdempotencyKey = None) -> Response:
    """Deliver the payload to one instance, failing over to healthy candidates; with
    ``"stream": true`` (or ``Accept: text/event-stream``) relay its output as server-sent
    events; with ``"async": true`` (or ``Prefer: respond-async``) answer 202 with a durable
    run."""
    if body.run_async or prefers_async(request):
        return await submit_run(request, "route", body, key, replayed_status=202)
    service = _service(request)
    rid = request_id_of(request.scope)
    if wants_stream(request, body.stream):
        if key is not None:  # nothing to replay a stream from: refused, not ignored
            raise InvalidRequestError(
                "Idempotency-Key: a streamed route is not replayed; send it without "
                "stream (or submit it as a run) to make it idempotent",
                field="Idempotency-Key",
            )
        return await event_stream(lambda stream: service.route(body, request_id=rid, stream=stream))
    return await _idempotent(
        request,
        key,
        "route",
        body,
        lambda: service.route(body, request_id=rid),
        RouteResult.model_validate_json,
    )


@orchestrator.post(
    "/fanout",
    response_model=FanoutResult | Any,
    responses={
        200: {
            "description": 'The FanoutResult; with `reply: "value"` only its aggregated '
            "value; with `stream: true`, NDJSON lines: entries, then the result.",
            "content": {NDJSON: {}},
        },
        **ASYNC_REPLY,
        **error_responses(400, 409, 502, 503, 504, 508),
    },
)
async def fanout(request: Request, body: FanoutRequest, key: IdempotencyKey = None) -> Response:
    """Send to every target concurrently and aggregate (or stream with ``stream: true``);
    with ``"async": true`` (or ``Prefer: respond-async``) answer 202 with a durable run."""
    if body.run_async or prefers_async(request):
        return await submit_run(request, "fanout", body, key, replayed_status=202)
    service = _service(request)
    rid = request_id_of(request.scope)
    wants_value = body.reply == "value"
    if body.stream or (not wants_value and NDJSON in request.headers.get("accept", "")):
        events = service.fanout_events(body, request_id=rid)
        first = await anext(events)  # validation errors surface here, as a normal 4xx
        return StreamingResponse(_ndjson(first, events), media_type=NDJSON)
    return await _idempotent(
        request,
        key,
        "fanout",
        body,
        lambda: service.fanout(body, request_id=rid),
        FanoutResult.model_validate_json,
        _render_value if wants_value else _render_model,
    )


async def _ndjson(
    first: FanoutEntry | FanoutResult, events: AsyncIterator[FanoutEntry | FanoutResult]
) -> AsyncIterator[bytes]:
    """One JSON line per entry, then the result line (or an error line)."""
    yield _line(first)
    try:
        async for event in events:
            yield _line(event)
    except OrchestratorError as exc:
        yield orjson.dumps({"type": "error", **exc.to_dict()}) + b"\n"


def _line(event: FanoutEntry | FanoutResult) -> bytes:
    if isinstance(event, FanoutEntry):
        return b'{"type":"entry","entry":' + event.model_dump_json().encode() + b"}\n"
    return b'{"type":"result","result":' + event.model_dump_json().encode() + b"}\n"


@orchestrator.get(
    "/health",
    response_model=dict[str, str] | dict[str, HealthDetail],
    responses=error_responses(400),
)
async def health(
    request: Request,
    instances: Annotated[str | None, Query(min_length=1, description="Targets, e.g. A-H")] = None,
    detail: bool = False,
) -> Any:
    """Each instance's state; ``detail=true`` adds latency, last check and last error."""
    service = _service(request)
    if detail:
        return service.health_detail(instances)
    return service.health(instances)


class InstanceList(BaseModel):
    """``GET /api/cluster/instances``."""

    instances: list[InstanceInfo]


@cluster.post(
    "/register",
    response_model=InstanceInfo | SkillManifest,
    status_code=201,
    responses={
        201: {"description": "The instance added, or the skill's manifest"},
        200: {"model": InstanceInfo, "description": "A heartbeat"},
        **error_responses(400),
        404: {**error_responses(404)[404], "description": "not_found: no skill with that skillId"},
    },
)
async def register(request: Request, body: RegisterBody) -> Response:
    """Add an instance at run time (re-posting the same registration is its heartbeat);
    ``{"skillId": "orchestrator"}`` registers a skill instead and answers its manifest
    (idempotent; an unknown id is 404 ``not_found``, field ``skillId``)."""
    if isinstance(body.root, SkillRegistration):
        return json_response(skill_manifest(body.root.skill_id, mcp_url(request)), 201)
    info, created = await _service(request).register(body.root)
    return json_response(info, 201 if created else 200)


@cluster.get("/skills", response_model=SkillList)
async def list_skills(request: Request) -> Response:
    """Every skill this orchestrator serves, each with its manifest."""
    return json_response(skill_list(mcp_url(request)))


@cluster.get("/instances", response_model=InstanceList)
async def list_instances(request: Request) -> Response:
    """Every instance with its driver, weight, tags and state; never its credentials."""
    return json_response(InstanceList(instances=_service(request).instances()))


@cluster.delete("/instances/{name}", responses=error_responses(404))
async def unregister(request: Request, name: str) -> dict[str, str]:
    """Remove an instance until the next restart (config) or re-registration."""
    await _service(request).unregister(name)
    return {"removed": name}
