"""Raw ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path).

``RequestContextMiddleware`` gives every request an id (the caller's ``X-Request-ID`` when
it is sane, else a fresh one), binds it to the log context, returns it as a header, and
enforces the body size limit while the body streams in, so an oversized body is refused
without ever being held in memory. It also binds the call's ``X-Orchestrator-Hops`` (the
loop guard, :mod:`..delegation`) for the request, or, without it, the count its
``X-Orchestrator-Caller`` is owed; a value that is not a count (or not an instance name) is
a 400 naming the header.
"""

from __future__ import annotations

import os
import random
import re
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...errors import OrchestratorError, PayloadTooLargeError
from ..delegation import bind_hops, incoming_hops, reset_hops
from ..logs import bind_request_id, reset_request_id

__all__ = [
    "RequestContextMiddleware",
    "declared_length",
    "incoming_request_id",
    "new_request_id",
    "request_id_of",
]

_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    """The request id the middleware assigned to this request."""
    return str(scope.get("state", {}).get("request_id", ""))


class RequestContextMiddleware:
    """Request id, log context and body size limit for every HTTP request."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given_id, length, hops, caller = _read_headers(scope)
        request_id = incoming_request_id(given_id) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        declared = declared_length(length)
        if declared is not None and declared > self.max_body_bytes:
            await _reject_too_large(send_with_id, self.max_body_bytes)
            return
        hops_bound = None
        if hops is not None or caller is not None:
            try:
                count = incoming_hops(hops, caller)
            except OrchestratorError as exc:
                await _reject(send_with_id, exc)
                return
            hops_bound = None if count is None else bind_hops(count)
        bound = bind_request_id(request_id)
        guard = _BodyGuard(receive, send_with_id, self.max_body_bytes)
        try:
            await self.app(scope, guard.receive, guard.send)
        finally:
            reset_request_id(bound)
            if hops_bound is not None:
                reset_hops(hops_bound)


class _BodyGuard:
    """Counts body bytes as they arrive; past the limit it answers 413 itself, tells the
    app the client went away, and swallows whatever the app still tries to send."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._seen = 0
        self._started = False
        self._rejected = False

    async def receive(self) -> Message:
        if self._rejected:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit and not self._started:
                self._rejected = True
                await _reject_too_large(self._send, self._limit)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self._rejected:
            return
        if message["type"] == "http.response.start":
            self._started = True
        await self._send(message)


def _read_headers(
    scope: Scope,
) -> tuple[bytes | None, bytes | None, bytes | None, bytes | None]:
    """The first ``X-Request-ID``, ``Content-Length``, ``X-Orchestrator-Hops`` and
    ``X-Orchestrator-Caller`` (None when absent), in one pass over the headers."""
    given_id = length = hops = caller = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if given_id is None:
                given_id = bytes(value)
        elif name == b"content-length":
            if length is None:
                length = bytes(value)
        elif name == b"x-orchestrator-hops" and hops is None:
            hops = bytes(value)
        elif name == b"x-orchestrator-caller" and caller is None:
            caller = bytes(value)
    return given_id, length, hops, caller


_ids = random.Random(os.urandom(32))  # noqa: S311  # correlation ids, not secrets
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))  # forked workers differ


def new_request_id() -> str:
    """128 random bits in hex, like ``uuid4().hex``. A request id only correlates log lines
    (it is no credential), so it comes from a seeded generator: no system call per request."""
    return f"{_ids.getrandbits(128):032x}"


def incoming_request_id(value: bytes | None) -> str | None:
    """The caller's ``X-Request-ID`` when it is sane (safe characters, ≤ 128), else None."""
    return value.decode() if value is not None and _SAFE_ID.match(value) else None


def declared_length(value: bytes | None) -> int | None:
    """A ``Content-Length`` value as an int; None when absent or not a number."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


async def _reject_too_large(send: Send, limit: int) -> None:
    await _reject(send, PayloadTooLargeError(f"request body is over the {limit}-byte limit"))


async def _reject(send: Send, exc: OrchestratorError) -> None:
    """Answer ``exc``'s error envelope before the app saw the request (the body unread, so
    the connection is closed)."""
    body: dict[str, Any] = exc.to_dict()
    raw = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})
