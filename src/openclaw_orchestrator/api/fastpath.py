"""The three hot endpoints served without FastAPI's per-request machinery.

``POST /api/orchestrator/route``, ``/fanout`` (not streamed) and ``/sessions/{id}/send``
sit on every task's path; FastAPI's dependency solving, body handling and response
plumbing cost about as much as the orchestrator's own work. :class:`FastPaths` is raw ASGI
middleware that serves the *ordinary* request of those endpoints itself: JSON body, the API
key, a valid body, no ``Idempotency-Key``. It makes the very same service call and answers
with the very same response (:func:`~.responses.json_response`, :func:`~.errors.error_response`).

Anything else — another path or method, another content type, a missing or wrong key, a
session token, JSON or a body that does not validate, an idempotency key, streaming — is
handed to the FastAPI app with the body replayed, so every error, status and message stays
exactly what the FastAPI routes (still there, and in the OpenAPI schema) produce.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import OrchestratorError
from ..models import SESSION_ID_PATTERN, FanoutRequest, RouteRequest, SendRequest
from ..service import Orchestrator
from .errors import error_response
from .middleware import request_id_of
from .responses import json_response
from .security import Authenticator

__all__ = ["FastPaths"]

Call = Callable[[], Awaitable[BaseModel]]
Prepare = Callable[[Scope, dict[bytes, bytes], Any, str], Call | None]

ROUTE_PATH = "/api/orchestrator/route"
FANOUT_PATH = "/api/orchestrator/fanout"
_SEND_PATH = re.compile(r"/api/orchestrator/sessions/([^/]+)/send")
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_NDJSON = b"application/x-ndjson"


def _route(scope: Scope, headers: dict[bytes, bytes], raw: Any, _: str) -> Call | None:
    body = RouteRequest.model_validate(raw)
    service: Orchestrator = scope["app"].state.orchestrator
    rid = request_id_of(scope)
    return lambda: service.route(body, request_id=rid)


def _fanout(scope: Scope, headers: dict[bytes, bytes], raw: Any, _: str) -> Call | None:
    body = FanoutRequest.model_validate(raw)
    if body.stream or _NDJSON in headers.get(b"accept", b""):
        return None
    service: Orchestrator = scope["app"].state.orchestrator
    rid = request_id_of(scope)
    return lambda: service.fanout(body, request_id=rid)


def _send(scope: Scope, headers: dict[bytes, bytes], raw: Any, session_id: str) -> Call | None:
    if not _SESSION_ID.fullmatch(session_id):
        return None
    body = SendRequest.model_validate(raw)
    sessions = scope["app"].state.orchestrator.sessions
    rid = request_id_of(scope)
    return lambda: sessions.send(
        session_id, body.data, timeout=body.timeout, idempotency_key=None, request_id=rid
    )


def _match(path: str) -> tuple[Prepare | None, str]:
    if path == ROUTE_PATH:
        return _route, ""
    if path == FANOUT_PATH:
        return _fanout, ""
    if path.endswith("/send") and (match := _SEND_PATH.fullmatch(path)):
        return _send, match.group(1)
    return None, ""


def _is_json(headers: dict[bytes, bytes]) -> bool:
    kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    return kind == b"application/json"


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body; None when the client left (or the size guard answered 413)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands ``body`` out once, then defers to the real one."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


class FastPaths:
    """Serves the ordinary route/fanout/send request directly; everything else goes on to
    ``app`` unchanged (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        prepare, param = _match(scope["path"])
        headers = dict(reversed(scope["headers"])) if prepare else {}  # the first of a name wins
        if prepare is None or not _is_json(headers) or b"idempotency-key" in headers:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return
        replay = _replay(body, receive)
        call = self._prepare(prepare, scope, headers, body, param)
        if call is None:
            await self.app(scope, replay, send)
            return
        try:
            response = json_response(await call())
        except OrchestratorError as exc:
            response = error_response(exc)
        await response(scope, replay, send)

    @staticmethod
    def _prepare(
        prepare: Prepare, scope: Scope, headers: dict[bytes, bytes], body: bytes, param: str
    ) -> Call | None:
        """The service call, or None when FastAPI should answer (any precondition failed)."""
        auth: Authenticator = scope["app"].state.authenticator
        if auth.is_enabled:
            authorization = headers.get(b"authorization")
            if authorization is None:
                return None
            try:
                auth.check(authorization.decode("latin-1"))
            except OrchestratorError:
                return None
        try:
            return prepare(scope, headers, orjson.loads(body) if body else None, param)
        except (orjson.JSONDecodeError, ValidationError, OrchestratorError):
            return None
