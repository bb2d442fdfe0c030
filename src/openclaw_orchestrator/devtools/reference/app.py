"""The reference instance: a lean Starlette app speaking instance protocol v1 (v1.3).

See ``docs/instance-protocol.md`` for the contract. It sits on the benchmark's direct path,
so the request path is plain Starlette with orjson, a pure-ASGI middleware for the request
id and one exception lookup mapping :class:`HandlerError` (and routing errors) to the
``{"error": {"code", "message"}}`` envelope; no pydantic per request.

Routes::

    GET    /api/health/check        {"status", "instance", "uptime_s", "inflight",
                                     "cancelled"}; 503 unhealthy
    POST   /api/instance/task       {"payload": ...} -> {"result": ..., "instance": name}
    POST   /api/instance/tasks/{request_id}/cancel   -> {"cancelled": true|false}
    POST   /api/instance/sessions/{id}/messages
                                    {"payload": ...} -> {"result", "instance", "seen"}
    PUT    /api/instance/sessions/{id}   {"history": [...]} -> {"session_id", "seen"}
                                    a page: {"history", "offset", "final": false}
                                    -> {"session_id", "staged"}; 409 when out of order
    GET    /api/instance/sessions/{id}   {"session_id", "seen", "history"}; 404 when unknown
    DELETE /api/instance/sessions/{id}   {"closed": id}, known or not
    GET    /api/instance/faults     the live FaultConfig (only with fault_api=True)
    PUT    /api/instance/faults     change it at run time (only with fault_api=True)

A session message is a task that sees, and extends, its session (:mod:`.sessions`): messages
of one session run one at a time, in arrival order, under the session's lock.

Fencing (v1.2): ``X-Session-Epoch`` on a message, restore or close and ``X-Session-Seq`` on a
message or restore are checked by the session (:class:`.sessions.StaleError`, answered
``409 stale_epoch``/``stale_seq``) on arrival and again when the request's turn comes, so a
request that was queued when a newer epoch arrived does not run either. A message whose seq
is the last one run is answered from the remembered reply, with ``X-Session-Replayed: true``.

Streaming and cancel (v1.3): a task or message with ``Accept: text/event-stream`` is
answered by a :class:`.streaming.StreamedReply` (an event stream once the handler emits a
delta, plain JSON otherwise), and every task and message is kept in :class:`.running.RunningTasks`
by its ``X-Request-ID`` while it runs, so the cancel route can stop it (``409 cancelled``).

The ``reply_bytes``/``health_reply_bytes`` faults pad replies as they are sent
(:class:`_PaddedSend`), so an instance can answer gigabytes without holding them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple, TypedDict

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...server.asgi import FastPathApp, read_body, replay
from ...server.logs import get_logger
from .faults import FaultConfig, Faults
from .handlers import Emit, Handler, HandlerContext, HandlerError, Invoker
from .running import RunningTasks
from .sessions import (
    DEFAULT_MAX_HISTORY,
    DEFAULT_MAX_SESSIONS,
    RestoreOrderError,
    Session,
    SessionStore,
    StaleError,
    is_valid_session_id,
    parse_restore,
)
from .streaming import StreamedReply, wants_stream

__all__ = [
    "DEADLINE_GRACE",
    "DEFAULT_MAX_BODY_BYTES",
    "EPOCH_HEADER",
    "HEALTH_PATH",
    "MESSAGES_PATH",
    "REPLAYED_HEADER",
    "SEQ_HEADER",
    "SESSION_PATH",
    "TASK_CANCEL_PATH",
    "TASK_PATH",
    "InstanceOptions",
    "ReferenceInstance",
    "create_instance_app",
]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEADLINE_GRACE = 0.1
"""Seconds past ``X-Deadline-Ms`` before a handler is abandoned: the caller gives up first,
so it always sees its own timeout rather than racing our 504."""

HEALTH_PATH = "/api/health/check"
TASK_PATH = "/api/instance/task"
TASK_CANCEL_PATH = "/api/instance/tasks/{request_id}/cancel"
FAULTS_PATH = "/api/instance/faults"
SESSION_PATH = "/api/instance/sessions/{session_id:path}"
"""``:path`` so that even an id holding an encoded ``/`` gets the 400 naming ``session_id``."""
MESSAGES_PATH = SESSION_PATH + "/messages"
REQUEST_ID_SCOPE_KEY = "openclaw.request_id"
EPOCH_HEADER = "X-Session-Epoch"
SEQ_HEADER = "X-Session-Seq"
REPLAYED_HEADER = "X-Session-Replayed"
_MAX_FENCE = 2**63 - 1
"""The largest epoch or seq: what a signed 64-bit database column holds."""

_REQUEST_ID = b"x-request-id"
_EVENT_STREAM = b"text/event-stream"
_log = get_logger("reference.app")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}

AppLifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The protocol's error envelope."""
    return _json(status, {"error": {"code": code, "message": message}}, headers)


class RequestIdMiddleware:
    """Echo ``X-Request-ID`` on every response, generating a uuid4 hex one when absent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pure ASGI (no BaseHTTPMiddleware): one header scan and one send wrapper."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next((v for k, v in scope["headers"] if k == _REQUEST_ID), None)
        request_id = request_id or uuid.uuid4().hex.encode()
        scope[REQUEST_ID_SCOPE_KEY] = request_id.decode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (_REQUEST_ID, request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _encode_result(body: dict[str, Any]) -> bytes:
    """The JSON of a 200 carrying a handler's result; one orjson cannot encode is the
    handler's 500."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise HandlerError(500, "handler_error", f"result is not JSON: {exc}") from exc


def _too_large(limit: int) -> HandlerError:
    return HandlerError(413, "payload_too_large", f"request body is over {limit} bytes")


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HandlerError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None


def _parse_deadline(value: str | None) -> float | None:
    """``X-Deadline-Ms`` (milliseconds left) to a ``time.monotonic()`` instant."""
    if value is None:
        return None
    try:
        return time.monotonic() + int(value) / 1000
    except ValueError:
        message = "X-Deadline-Ms: expected an integer number of milliseconds"
        raise HandlerError(400, "invalid_request", message) from None


def _session_id(request: Request) -> str:
    """The path's session id; a 400 naming ``session_id`` unless it has the documented form."""
    session_id: str = request.path_params["session_id"]
    if not is_valid_session_id(session_id):
        message = (
            "session_id: expected 1-128 characters of A-Za-z0-9._:-,"
            " starting with a letter or digit"
        )
        raise HandlerError(400, "invalid_request", message)
    return session_id


def _fence_value(request: Request, header: str, least: int) -> int | None:
    """The integer value of fencing ``header`` (None when absent); a 400 naming it unless it
    is a decimal integer from ``least`` to :data:`_MAX_FENCE`."""
    value = request.headers.get(header)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or not (
        least <= int(value) <= _MAX_FENCE
    ):
        message = f"{header}: expected an integer from {least} to {_MAX_FENCE}, got {value!r}"
        raise HandlerError(400, "invalid_request", message)
    return int(value)


def _epoch(request: Request) -> int | None:
    """``X-Session-Epoch``: the sender's lease epoch of the session (0 or more)."""
    return _fence_value(request, EPOCH_HEADER, 0)


def _seq(request: Request) -> int | None:
    """``X-Session-Seq``: a message's position in the session's history (1 or more)."""
    return _fence_value(request, SEQ_HEADER, 1)


@contextlib.asynccontextmanager
async def _turn(session: Session, deadline: float | None) -> AsyncIterator[None]:
    """Hold ``session``'s lock, queued in arrival order; a 504 if the caller's deadline (plus
    :data:`DEADLINE_GRACE`) passes first, so a message nobody waits for never runs."""
    budget = None if deadline is None else max(0.0, deadline - time.monotonic()) + DEADLINE_GRACE
    acquired = False
    with anyio.move_on_after(budget):
        acquired = await session.lock.acquire()
    if not acquired:
        raise HandlerError(504, "deadline_exceeded", "the session was busy past X-Deadline-Ms")
    try:
        yield
    finally:
        session.lock.release()


async def _wait_for_disconnect(receive: Receive) -> None:
    """Block until the client goes away (the body has already been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class ReferenceInstance:
    """The state and endpoints of one instance; ``app.state.instance`` in the running app."""

    def __init__(
        self,
        name: str,
        handler: Handler,
        *,
        token: str | None,
        faults: Faults,
        max_body: int,
        sessions: SessionStore,
    ) -> None:
        self.name = name
        self.invoker = Invoker(handler)
        self.faults = faults
        self.sessions = sessions
        self.max_body_bytes = max_body
        self.inflight = 0
        self.running = RunningTasks()
        self.started = time.monotonic()
        self.expected_auth = f"Bearer {token}".encode() if token else None
        """The whole ``Authorization`` header a request must carry; None: no token."""

    def authorize(self, request: Request) -> None:
        """Constant-time check of the bearer token, when one is configured."""
        if self.expected_auth is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self.expected_auth):
            raise HandlerError(401, "unauthorized", "missing or wrong bearer token")

    async def health(self, request: Request) -> Response:
        """``GET /api/health/check``: 503 under ``health_fail``, "degraded" if told to."""
        config = self.faults.config
        status = "healthy"
        if config.health_fail:
            status = "unhealthy"
        elif config.health_degraded:
            status = "degraded"
        body = {
            "status": status,
            "instance": self.name,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "inflight": self.inflight,
            "cancelled": self.running.cancelled,
        }
        return _json(503 if config.health_fail else 200, body)

    async def _read_task(self, request: Request) -> tuple[Any, float | None]:
        """``(payload, deadline)`` of a task or session message, after the auth check."""
        self.authorize(request)
        deadline = _parse_deadline(request.headers.get("x-deadline-ms"))
        body = _parse_json(await _read_body(request, self.max_body_bytes))
        if not isinstance(body, dict) or "payload" not in body:
            message = 'body: expected a JSON object {"payload": ...}'
            raise HandlerError(400, "invalid_request", message)
        return body["payload"], deadline

    async def task(self, request: Request) -> Response:
        """``POST /api/instance/task``: auth, body, faults, then the handler."""
        payload, deadline = await self._read_task(request)
        request_id = request.scope[REQUEST_ID_SCOPE_KEY]
        receive = request.receive
        if wants_stream(request.headers.get("accept")):

            async def run(emit: Emit) -> Response:
                body = await self.run_task(payload, deadline, request_id, receive, emit)
                return Response(body, 200, media_type="application/json")

            return StreamedReply(run)
        body = await self.run_task(payload, deadline, request_id, receive)
        return Response(body, 200, media_type="application/json")

    async def run_task(
        self,
        payload: Any,
        deadline: float | None,
        request_id: str,
        receive: Receive,
        emit: Emit | None = None,
    ) -> bytes:
        """A task past auth and parsing: faults, the handler, the encoded 200 body; the
        handler streams through ``emit`` when given. Raises :class:`HandlerError` for every
        protocol error, ``409 cancelled`` when the cancel route stopped it."""
        context = HandlerContext(self.name, request_id, deadline, None, emit)
        task = self.running.enter(request_id)
        self.inflight += 1
        try:
            await self._inject_faults(receive)
            result = await self._run(payload, context)
            return _encode_result({"result": result, "instance": self.name})
        except asyncio.CancelledError:
            if self.running.is_cancelled(task):
                raise _cancelled(request_id) from None
            raise
        finally:
            self.inflight -= 1
            self.running.leave(request_id, task)

    async def cancel(self, request: Request) -> Response:
        """``POST /api/instance/tasks/{request_id}/cancel``: stop the task or session message
        in flight with that ``X-Request-ID``; ``{"cancelled": false}`` when there is none."""
        self.authorize(request)
        request_id: str = request.path_params["request_id"]
        cancelled = self.running.cancel(request_id)
        if cancelled:
            _log.info("instance.task_cancelled", instance=self.name, request_id=request_id)
        return _json(200, {"cancelled": cancelled})

    async def message(self, request: Request) -> Response:
        """``POST .../sessions/{id}/messages``: a task run in its session's turn, then kept.

        A message that fails (fault, handler error, deadline) leaves the session unchanged.
        A fenced one (v1.2) is checked on arrival and again in its turn; one whose seq was
        the last run is answered again from its remembered reply, without running.
        """
        payload, deadline = await self._read_task(request)
        session_id, epoch, seq = _session_id(request), _epoch(request), _seq(request)
        session = self.sessions.admit(session_id, epoch)
        message = _Message(session, payload, deadline, epoch, seq)
        request_id = request.scope[REQUEST_ID_SCOPE_KEY]
        receive = request.receive
        if wants_stream(request.headers.get("accept")):

            async def run(emit: Emit) -> Response:
                return await self.run_message(message, request_id, receive, emit)

            return StreamedReply(run)
        return await self.run_message(message, request_id, receive)

    async def run_message(
        self, message: _Message, request_id: str, receive: Receive, emit: Emit | None = None
    ) -> Response:
        """A session message past parsing, in its session's turn: the reply (see
        :meth:`message`), the handler streaming through ``emit`` when given."""
        session, payload, deadline = message.session, message.payload, message.deadline
        task = self.running.enter(request_id)
        self.inflight += 1
        try:
            async with _turn(session, deadline):
                session.admit(message.epoch)
                if (replayed := session.replayed(message.seq)) is not None:
                    return _replayed_response(replayed)
                await self._inject_faults(receive)
                context = HandlerContext(self.name, request_id, deadline, session.context(), emit)
                result = await self._run(payload, context)
                seen = session.seen + 1
                body = _encode_result({"result": result, "instance": self.name, "seen": seen})
                session.record(payload, result)
                session.remember(message.seq, body)
            return Response(body, 200, media_type="application/json")
        except asyncio.CancelledError:
            if self.running.is_cancelled(task):
                raise _cancelled(request_id) from None
            raise
        finally:
            self.inflight -= 1
            self.running.leave(request_id, task)

    async def restore(self, request: Request) -> Response:
        """``PUT .../sessions/{id}``: become the replayed history, whole or a page at a time
        (staged until the final page); no handler runs. Every page of a fenced restore is
        checked like a message; the final one sets the session's seq when it carries one."""
        self.authorize(request)
        deadline = _parse_deadline(request.headers.get("x-deadline-ms"))
        body = _parse_json(await _read_body(request, self.max_body_bytes))
        session_id, epoch, seq = _session_id(request), _epoch(request), _seq(request)
        try:
            restore = parse_restore(body)
        except ValueError as exc:
            raise HandlerError(400, "invalid_request", str(exc)) from None
        session = self.sessions.admit(session_id, epoch)
        async with _turn(session, deadline):
            session.admit(epoch)
            try:
                staged = session.stage(restore.exchanges, restore.offset)
            except RestoreOrderError as exc:
                raise HandlerError(409, "restore_out_of_order", str(exc)) from None
            if not restore.final:
                return _json(200, {"session_id": session_id, "staged": staged})
            session.commit(seq)
        return _json(200, {"session_id": session_id, "seen": session.seen})

    async def get_session(self, request: Request) -> Response:
        """``GET .../sessions/{id}``: what this instance remembers; 404 when nothing."""
        self.authorize(request)
        session_id = _session_id(request)
        session = self.sessions.get(session_id)
        if session is None:
            raise HandlerError(404, "not_found", f"session {session_id}: not on this instance")
        return _json(200, session.to_dict())

    async def close(self, request: Request) -> Response:
        """``DELETE .../sessions/{id}``: forget the session; idempotent. With an epoch, one
        below the session's is refused and a tombstone keeps later stale messages out."""
        self.authorize(request)
        session_id = _session_id(request)
        self.sessions.close(session_id, _epoch(request))
        return _json(200, {"closed": session_id})

    async def _inject_faults(self, receive: Receive) -> None:
        config = self.faults.config
        if config.hang:
            await _wait_for_disconnect(receive)
            raise HandlerError(504, "injected_hang", "the client gave up; nobody reads this")
        if delay := self.faults.delay():
            await asyncio.sleep(delay)
        if self.faults.should_fail():
            message = f"instance {self.name}: injected failure"
            raise HandlerError(
                config.fail_status, "injected_fault", message, retry_after=config.retry_after
            )

    async def _run(self, payload: Any, context: HandlerContext) -> Any:
        """The handler, abandoned :data:`DEADLINE_GRACE` after the caller's deadline.

        One timer that cancels this task, told apart from any other cancellation with
        ``uncancel()`` as ``asyncio.timeout`` does it, at a fraction of its cost (anyio's
        cancel scope cost more still): every orchestrated task carries a deadline."""
        budget = context.time_left()
        if budget is None:
            return await self.invoker(payload, context)
        task = asyncio.current_task()
        assert task is not None  # always inside a request's task
        expiry = _Expiry(task)
        timer = asyncio.get_running_loop().call_later(budget + DEADLINE_GRACE, expiry)
        try:
            return await self.invoker(payload, context)
        except asyncio.CancelledError:
            if expiry.fired and task.uncancel() == 0:  # ours, and nobody else's too
                raise HandlerError(
                    504, "deadline_exceeded", "the handler ran past X-Deadline-Ms"
                ) from None
            raise
        finally:
            timer.cancel()

    async def get_faults(self, request: Request) -> Response:
        """``GET /api/instance/faults``: the live configuration."""
        self.authorize(request)
        return _json(200, self.faults.config.to_dict())

    async def put_faults(self, request: Request) -> Response:
        """``PUT /api/instance/faults``: change any fields; 400 naming a bad one."""
        self.authorize(request)
        changes = _parse_json(await _read_body(request, self.max_body_bytes))
        if not isinstance(changes, dict):
            raise HandlerError(400, "invalid_request", "body: expected an object of fault fields")
        try:
            config = self.faults.update(changes)
        except (TypeError, ValueError) as exc:
            raise HandlerError(400, "invalid_request", str(exc)) from None
        return _json(200, config.to_dict())

    def routes(self, *, fault_api: bool) -> list[Route]:
        """The protocol routes, plus the fault API when enabled."""
        routes = [
            Route(HEALTH_PATH, self.health, methods=["GET"]),
            Route(TASK_PATH, self.task, methods=["POST"]),
            Route(TASK_CANCEL_PATH, self.cancel, methods=["POST"]),
            Route(MESSAGES_PATH, self.message, methods=["POST"]),
            Route(SESSION_PATH, self.get_session, methods=["GET"]),
            Route(SESSION_PATH, self.restore, methods=["PUT"]),
            Route(SESSION_PATH, self.close, methods=["DELETE"]),
        ]
        if fault_api:
            routes.append(Route(FAULTS_PATH, self.get_faults, methods=["GET"]))
            routes.append(Route(FAULTS_PATH, self.put_faults, methods=["PUT"]))
        return routes

    def __repr__(self) -> str:
        return (
            f"<ReferenceInstance {self.name} inflight={self.inflight}"
            f" cancelled={self.running.cancelled}"
            f" sessions={len(self.sessions)} {self.faults!r}>"
        )


class _Message(NamedTuple):
    """A session message, parsed and admitted, waiting for its turn."""

    session: Session
    payload: Any
    deadline: float | None
    epoch: int | None
    seq: int | None


def _cancelled(request_id: str) -> HandlerError:
    """What a task stopped by the cancel route answers (its caller has usually left)."""
    message = f"task {request_id} was cancelled (POST /api/instance/tasks/.../cancel)"
    return HandlerError(409, "cancelled", message)


def _error_headers(exc: HandlerError) -> dict[str, str]:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = f"{exc.retry_after:g}"
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def _handler_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HandlerError)  # registered for HandlerError only
    return error_response(exc.status, exc.code, exc.message, _error_headers(exc))


def _stale(request: Request, exc: Exception) -> Response:
    """A fenced request from behind the session's fence: 409 with its code; nothing ran."""
    assert isinstance(exc, StaleError)  # registered for StaleError only
    return error_response(409, exc.code, str(exc))


def _replayed_response(body: bytes) -> Response:
    """The remembered reply of a message delivered again (the same ``X-Session-Seq``)."""
    return Response(body, 200, {REPLAYED_HEADER: "true"}, media_type="application/json")


class _Expiry:
    """The deadline timer's callback: cancels the task and remembers that it did."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


class InstanceApp(FastPathApp):
    """Starlette that may serve the protocol's hot request with :class:`TaskFastPath`
    (:class:`~..asgi.FastPathApp`: middleware added later sees it too), and pads replies
    as the ``reply_bytes`` faults ask, whichever path answers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            config = self.state.instance.faults.config
            if config.reply_bytes or config.health_reply_bytes:
                send = _padded(send, config, scope["method"], scope["path"])
        await super().__call__(scope, receive, send)


class TaskFastPath:
    """The ordinary ``POST /api/instance/task``, served before Starlette's layers.

    It is what every routed request and every fanout target costs an instance: Starlette's
    middleware, routing and Request objects took more CPU than the task (benchmark,
    docs/performance.md). The ordinary task — the right token, a sane deadline, a JSON body
    within the limit, no hang injected — is served here, through the very same
    :meth:`ReferenceInstance.run_task`, with the same headers and errors. Anything else goes
    on to ``app`` with the body replayed, which answers it as it always has.
    """

    def __init__(self, app: ASGIApp, instance: ReferenceInstance) -> None:
        self.app = app
        self.instance = instance

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == TASK_PATH
            and not scope.get("root_path")
        ):
            await self._task(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _task(self, scope: Scope, receive: Receive, send: Send) -> None:
        instance = self.instance
        headers = dict(reversed(scope["headers"]))  # the first of a name wins
        try:
            task = await _ordinary_task(instance, headers, receive)
        except _ClientGone:
            return  # nobody to answer
        if isinstance(task, _PassOn):  # not ordinary: the full app answers, as always
            if task.body is not None:
                receive = replay(task.body, receive, more=not task.complete)
            await self.app(scope, receive, send)
            return
        request_id = headers.get(_REQUEST_ID) or uuid.uuid4().hex.encode()
        extra: dict[str, str] = {}
        try:
            rid = request_id.decode("latin-1")
            status, body = 200, await instance.run_task(task.payload, task.deadline, rid, receive)
        except HandlerError as exc:
            status, extra = exc.status, _error_headers(exc)
            body = orjson.dumps({"error": {"code": exc.code, "message": exc.message}})
        except Exception:
            _log.exception("instance.unexpected_error", path=TASK_PATH)
            status = 500
            body = orjson.dumps({"error": {"code": "internal_error", "message": "internal error"}})
        response_headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
            *((k.lower().encode(), v.encode()) for k, v in extra.items()),
            (_REQUEST_ID, request_id),
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})


def _padded(send: Send, config: FaultConfig, method: str, path: str) -> Send:
    """``send``, padding the reply as the ``reply_bytes`` faults say (else as it is)."""
    if method == "POST" and (path == TASK_PATH or path.endswith("/messages")):
        total = config.reply_bytes
    elif method == "GET" and path == HEALTH_PATH:
        total = config.health_reply_bytes
    else:
        total = 0
    return _PaddedSend(send, total, chunked=config.reply_chunked) if total else send


class _PaddedSend:
    """An ASGI ``send`` that grows a JSON object reply to ``total`` bytes with a
    ``"padding"`` string streamed in :data:`_PAD_CHUNK` pieces (with ``Content-Length``
    unless ``chunked``): inside an object ``result`` (so the padding is part of what the
    caller would keep), else beside it. Replies that are not a 200 JSON object go out
    unchanged."""

    def __init__(self, send: Send, total: int, *, chunked: bool) -> None:
        self._send = send
        self._total = total
        self._chunked = chunked
        self._start: Message | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 200:
            self._start = message  # held until the body says how long it is
            return
        start, self._start = self._start, None
        body = message.get("body", b"")
        if start is None or message.get("more_body") or not body.endswith(b"}"):
            if start is not None:
                await self._send(start)
            await self._send(message)
            return
        if body.startswith(_OBJECT_RESULT):
            head = b'{"result":{"padding":"'
            tail = b'",' + body[len(_OBJECT_RESULT) - 1 :]
        else:
            head, tail = body[:-1] + b',"padding":"', b'"}'
        pad = max(0, self._total - len(head) - len(tail))
        headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
        if not self._chunked:
            headers.append((b"content-length", str(len(head) + pad + len(tail)).encode()))
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": head, "more_body": True})
        while pad > 0:
            piece = _PAD_CHUNK if pad >= len(_PAD_CHUNK) else _PAD_CHUNK[:pad]
            pad -= len(piece)
            await self._send({"type": "http.response.body", "body": piece, "more_body": True})
        await self._send({"type": "http.response.body", "body": tail, "more_body": False})


_PAD_CHUNK = b"x" * (64 * 1024)
_OBJECT_RESULT = b'{"result":{"'


class _ClientGone(Exception):
    """The client disconnected before its body was read."""


class _Ordinary(NamedTuple):
    """A task the fast path serves."""

    payload: Any
    deadline: float | None


class _PassOn(NamedTuple):
    """A request for the full app: what was read of its body (None: nothing) and whether
    that is all of it."""

    body: bytes | None = None
    complete: bool = True


async def _ordinary_task(
    instance: ReferenceInstance, headers: dict[bytes, bytes], receive: Receive
) -> _Ordinary | _PassOn:
    """The task, when it is an ordinary one: the right token, no hang injected, a sane
    ``Content-Length`` and ``X-Deadline-Ms``, a JSON object with a payload within the limit."""
    expected = instance.expected_auth
    if expected is not None and not hmac.compare_digest(
        headers.get(b"authorization", b""), expected
    ):
        return _PassOn()
    if instance.faults.config.hang:
        return _PassOn()
    accept = headers.get(b"accept")
    if accept is not None and _EVENT_STREAM in accept:  # a stream: the full app's (v1.3)
        return _PassOn()
    declared = headers.get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > instance.max_body_bytes):
        return _PassOn()
    deadline_ms = headers.get(b"x-deadline-ms")
    if deadline_ms is not None and not deadline_ms.isdigit():
        return _PassOn()
    read = await read_body(receive, instance.max_body_bytes)
    if read is None:
        raise _ClientGone
    raw, more = read
    if more or len(raw) > instance.max_body_bytes:  # the full app answers 413
        return _PassOn(raw, complete=not more)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _PassOn(raw)
    if not isinstance(body, dict) or "payload" not in body:
        return _PassOn(raw)
    deadline = None if deadline_ms is None else time.monotonic() + int(deadline_ms) / 1000
    return _Ordinary(body["payload"], deadline)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal_error", "internal error")


class InstanceOptions(TypedDict, total=False):
    """What an instance is, apart from its name and handler: the keywords of
    :func:`create_instance_app` that :func:`~.runner.run_instance` passes through as they are."""

    token: str | None
    faults: FaultConfig | None
    fault_api: bool
    max_body_bytes: int
    max_sessions: int
    max_history: int


def create_instance_app(
    name: str,
    handler: Handler,
    *,
    token: str | None = None,
    faults: FaultConfig | None = None,
    fault_api: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    max_history: int = DEFAULT_MAX_HISTORY,
    lifespan: AppLifespan | None = None,
    fast_path: bool = True,
) -> InstanceApp:
    """An ASGI app for instance ``name`` running ``handler`` (see :mod:`.handlers`).

    ``token`` requires ``Authorization: Bearer <token>`` on tasks, sessions and the fault
    API; ``fault_api`` exposes ``/api/instance/faults``; ``max_sessions`` (least recently
    used forgotten first) and ``max_history`` (exchanges kept per session) bound session
    memory; ``lifespan`` runs around serving (self-registration uses it); ``fast_path``
    serves the ordinary task with :class:`TaskFastPath` (off: Starlette serves every
    request; the reference tests run both ways).
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")
    sessions = SessionStore(max_sessions=max_sessions, max_history=max_history)
    instance = ReferenceInstance(
        name,
        handler,
        token=token,
        faults=Faults(faults),
        max_body=max_body_bytes,
        sessions=sessions,
    )
    app = InstanceApp(
        routes=instance.routes(fault_api=fault_api),
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers={
            HandlerError: _handler_error,
            StaleError: _stale,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.state.instance = instance
    if fast_path:
        app.use_fast_path(lambda rest: TaskFastPath(rest, instance))
    return app
