"""The hot endpoints served before any framework layer runs.

``POST /api/orchestrator/route``, ``/fanout`` (not streamed) and ``/sessions/{id}/send``
sit on every task's path, and ``POST /api/orchestrator/runs`` on every durable run's.
Starlette's middleware stack (error, telemetry, body-limit and our request-context layers,
each wrapping ``send``/``receive``), FastAPI's dependency solving and response plumbing
together cost more CPU than the orchestrator's own work, so :class:`FastPaths` sits in front
of the framework's layers (see :class:`~..asgi.FastPathApp`: middleware added to the app
later wraps it, so it sees these requests too) and serves the *ordinary* request of those
endpoints itself: JSON body within the size limit, the API key, a valid body; for route,
fanout and send also no ``Idempotency-Key``, no ask for a durable run (``"async": true``,
``Prefer: respond-async``); a stream (``"stream": true``, ``Accept:
text/event-stream``) of a route or send is served here too (:mod:`.fastpath_stream`).
A run's submit keeps its ``Idempotency-Key`` (one the route's header pattern accepts) and
``Prefer``: it is stored by the very code the route runs (:func:`~.run_submit.store_run`),
and answered 202, or 200 with ``Idempotent-Replayed``, with the route's headers. It gives the
request the same id, and binds the same ``X-Orchestrator-Hops``, as the request-context
middleware would, makes the very same service call, and answers with the very same body,
status and headers (the error envelope with :func:`~.errors.error_headers`, a 409 or a
refused callback address included; a generic 500 for a bug, logged like the app's own
handler does).

Anything else — another path or method, another content type, a missing or wrong key, a
session token, a body orjson refuses (as strict as the app's :mod:`.strict_json`: no NaN or
Infinity) or that does not validate, a body over the limit, an ``X-Orchestrator-Hops`` that
is not a count, a streamed fanout — goes to the full app with the body replayed, so every error,
status and message stays exactly what the FastAPI routes (still there, and in the OpenAPI
schema) produce. ``create_app(settings, fast_paths=False)`` leaves the fast path out; the
API suite runs both ways.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from ...errors import OrchestratorError
from ...models import (
    MAX_IDEMPOTENCY_KEY,
    SESSION_ID_PATTERN,
    FanoutRequest,
    FanoutResult,
    RouteRequest,
    RunSubmit,
    SendRequest,
    SessionSendRun,
)
from ..asgi import read_body, replay
from ..delegation import bind_hops, incoming_hops, reset_hops
from ..logs import bind_request_id, get_logger, reset_request_id
from ..observability.observer import ENDPOINT_KEY
from .errors import error_headers
from .event_stream import EventStream
from .fastpath_stream import is_streamed, serve_stream, streamed_route, streamed_send
from .middleware import declared_length, incoming_request_id, new_request_id
from .responses import value_json
from .run_submit import asks_async, store_run, stored_headers
from .security import Authenticator

__all__ = ["FastPaths"]

log = get_logger("api")


class Reply(NamedTuple):
    """A whole answer other than a plain 200: its status, JSON body and extra headers."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


Call = Callable[[], Awaitable[BaseModel | bytes | Reply | EventStream]]
"""The service call: a model to serialize, the JSON body itself (``reply: "value"``), or
the whole reply (a stored run: 202 or 200 with its headers)."""
Prepare = Callable[[State, Any, str, str, dict[bytes, bytes]], Call | None]

ROUTE_PATH = "/api/orchestrator/route"
FANOUT_PATH = "/api/orchestrator/fanout"
RUNS_PATH = "/api/orchestrator/runs"
_SEND_PATH = re.compile(r"/api/orchestrator/sessions/([^/]+)/send")
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_IDEMPOTENCY_KEY = re.compile(rb"[!-~]{1,%d}" % MAX_IDEMPOTENCY_KEY)  # the route's Header()
_RUN_SUBMIT: TypeAdapter[Any] = TypeAdapter(RunSubmit)
_NDJSON = b"application/x-ndjson"
_JSON_HEADER = (b"content-type", b"application/json")
_NO_HEADERS: list[tuple[bytes, bytes]] = []
_NOT_A_COUNT = -1


def _route(state: State, raw: Any, _: str, rid: str, headers: dict[bytes, bytes]) -> Call | None:
    body = RouteRequest.model_validate(raw)
    if body.run_async:
        return None
    if is_streamed(body.stream, headers):
        return streamed_route(state, body, rid)
    service = state.orchestrator
    return lambda: service.route(body, request_id=rid)


def _fanout(state: State, raw: Any, _: str, rid: str, headers: dict[bytes, bytes]) -> Call | None:
    body = FanoutRequest.model_validate(raw)
    wants_value = body.reply == "value"
    if (
        body.run_async
        or body.stream
        or (not wants_value and _NDJSON in headers.get(b"accept", b""))
    ):
        return None
    service = state.orchestrator
    if wants_value:
        return lambda: _value_only(service.fanout(body, request_id=rid))
    return lambda: service.fanout(body, request_id=rid)


async def _value_only(fanout: Awaitable[FanoutResult]) -> bytes:
    return value_json(await fanout)


def _send(
    state: State, raw: Any, session_id: str, rid: str, headers: dict[bytes, bytes]
) -> Call | None:
    if not _SESSION_ID.fullmatch(session_id):
        return None
    body = SendRequest.model_validate(raw)
    if body.run_async:
        return None
    if is_streamed(body.stream, headers):
        return streamed_send(state, session_id, body, rid)
    sessions = state.orchestrator.sessions
    return lambda: sessions.send(
        session_id, body.data, timeout=body.timeout, idempotency_key=None, request_id=rid
    )


def _submit(state: State, raw: Any, _: str, __: str, headers: dict[bytes, bytes]) -> Call | None:
    key = headers.get(b"idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        return None  # the route's 400 names the header
    body = _RUN_SUBMIT.validate_python(raw)
    extra = {"sessionId": body.session_id} if isinstance(body, SessionSendRun) else None
    preferred = asks_async(headers.get(b"prefer", b"").decode("latin-1"))
    orchestrator = state.orchestrator
    replied_key = None if key is None else key.decode()

    async def stored() -> Reply:
        info, created = await store_run(orchestrator, body.kind, body, replied_key, extra)
        shown = stored_headers(info.run_id, created=created, preferred=preferred)
        listed = [(k.lower().encode(), v.encode()) for k, v in shown.items()]
        return Reply(202 if created else 200, _to_json(info), listed)

    return stored


def _match(path: str) -> tuple[Prepare | None, str]:
    if path == RUNS_PATH:
        return _submit, ""
    if path == ROUTE_PATH:
        return _route, ""
    if path == FANOUT_PATH:
        return _fanout, ""
    if path.endswith("/send") and (match := _SEND_PATH.fullmatch(path)):
        return _send, match.group(1)
    return None, ""


_TEMPLATES: dict[Prepare, str] = {
    _submit: RUNS_PATH,
    _route: ROUTE_PATH,
    _fanout: FANOUT_PATH,
    _send: "/api/orchestrator/sessions/{session_id}/send",
}
"""Each fast path's route template, as FastAPI names the route (metrics and spans)."""


def _asks_more(headers: dict[bytes, bytes]) -> bool:
    """Whether a route, fanout or send asks for what only the app does: an Idempotency-Key
    or a durable run (``Prefer: respond-async``)."""
    return b"idempotency-key" in headers or b"respond-async" in headers.get(b"prefer", b"").lower()


def _hops_of(headers: dict[bytes, bytes]) -> int | None:
    """The call's ``X-Orchestrator-Hops``, or what its ``X-Orchestrator-Caller`` is owed
    (the loop guard, :mod:`..delegation`), bound around the service call as the
    request-context middleware binds it: None when neither is given, :data:`_NOT_A_COUNT`
    when the middleware would refuse one."""
    try:
        return incoming_hops(
            headers.get(b"x-orchestrator-hops"), headers.get(b"x-orchestrator-caller")
        )
    except OrchestratorError:
        return _NOT_A_COUNT


def _is_json(headers: dict[bytes, bytes]) -> bool:
    kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    return kind == b"application/json"


class FastPaths:
    """Serves the ordinary route/fanout/send request directly; everything else goes on to
    ``app`` (the full application) unchanged. See the module docstring."""

    def __init__(self, app: ASGIApp, *, state: State, max_body_bytes: int) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        prepare, param = _match(scope["path"])
        headers = dict(reversed(scope["headers"])) if prepare else {}  # the first of a name wins
        hops = _hops_of(headers)
        if (
            prepare is None
            or not _is_json(headers)
            or (prepare is not _submit and _asks_more(headers))
            or hops == _NOT_A_COUNT  # 400 from the request-context middleware
        ):
            await self.app(scope, receive, send)
            return
        declared = declared_length(headers.get(b"content-length"))
        if declared is not None and declared > self.max_body_bytes:
            await self.app(scope, receive, send)  # 413 from the request-context middleware
            return
        read = await read_body(receive, self.max_body_bytes)
        if read is None:
            return
        body, more = read
        rid = incoming_request_id(headers.get(b"x-request-id")) or new_request_id()
        within = not more and len(body) <= self.max_body_bytes
        call = self._prepare(prepare, headers, body, param, rid) if within else None
        if call is None:  # not ordinary: the full app answers (413 if too long)
            await self.app(scope, replay(body, receive, more=more), send)
            return
        scope[ENDPOINT_KEY] = _TEMPLATES[prepare]  # counted as the FastAPI route would be
        bound = bind_request_id(rid)
        hops_bound = None if hops is None else bind_hops(hops)
        try:
            result = await call()
            if isinstance(result, EventStream):  # begun: the stream answers (fastpath_stream)
                await serve_stream(result, rid, scope, receive, send)
                return
            if isinstance(result, Reply):
                status, raw, extra = result
            else:
                raw = result if isinstance(result, bytes) else _to_json(result)
                status, extra = 200, _NO_HEADERS
        except OrchestratorError as exc:
            status, raw, extra = _error_parts(exc)
        except Exception as exc:  # a bug: the app's generic 500, details only in the log
            log.error("api.unexpected_error", path=scope["path"], exc_info=exc)
            status, raw, extra = _error_parts(
                OrchestratorError("internal error; see the orchestrator log")
            )
        finally:
            reset_request_id(bound)
            if hops_bound is not None:
                reset_hops(hops_bound)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [  # in the order Starlette's Response and our middleware give
                    *extra,
                    (b"content-length", str(len(raw)).encode()),
                    _JSON_HEADER,
                    (b"x-request-id", rid.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    def _prepare(
        self, prepare: Prepare, headers: dict[bytes, bytes], body: bytes, param: str, rid: str
    ) -> Call | None:
        """The service call, or None when the full app should answer (a precondition
        failed: it will say which, in its own words)."""
        auth: Authenticator = self.state.authenticator
        if auth.is_enabled:
            authorization = headers.get(b"authorization")
            if authorization is None:
                return None
            try:
                auth.check(authorization.decode("latin-1"))
            except OrchestratorError:
                return None
        try:
            return prepare(self.state, orjson.loads(body) if body else None, param, rid, headers)
        except (orjson.JSONDecodeError, ValidationError, OrchestratorError):
            return None


def _to_json(model: BaseModel) -> bytes:
    """``model_dump_json()`` as bytes, without decoding and re-encoding the text."""
    return model.__pydantic_serializer__.to_json(model)


def _error_parts(exc: OrchestratorError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and extra headers of :func:`~.errors.error_response` for ``exc``."""
    extra = [(k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()]
    return exc.status, orjson.dumps(exc.to_dict()), extra
