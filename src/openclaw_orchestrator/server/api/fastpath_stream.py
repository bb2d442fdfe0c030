"""Streamed routes and session sends on the fast path (:mod:`.fastpath`).

A streamed request's framework share is per stream, not per chunk, but at 100 streams that
start and end all the time it was a fifth of the relay's CPU (FastAPI's middlewares,
routing, dependencies and validation, issue 12). The fast path already checked what the
FastAPI route checks (the API key, a valid body, no ``Idempotency-Key``, no durable run);
here it makes the same service call through the same :func:`~.event_stream.event_stream`
and is answered by the same :class:`~.event_stream.EventStream` reply as the routes in
:mod:`.routes` and :mod:`.sessions`, so the two sides differ only in who parsed the request.
An error before the stream begins is the fast path's ordinary JSON error reply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from ...models import RouteRequest, SendRequest
from .event_stream import EventStream, event_stream

__all__ = ["is_streamed", "serve_stream", "streamed_route", "streamed_send"]

_EVENT_STREAM = b"text/event-stream"


def is_streamed(asked: bool, headers: dict[bytes, bytes]) -> bool:
    """Whether the caller asked for events: ``"stream": true`` or ``Accept:
    text/event-stream`` (:func:`~.event_stream.wants_stream` on raw headers)."""
    return asked or _EVENT_STREAM in headers.get(b"accept", b"")


def streamed_route(state: State, body: RouteRequest, rid: str) -> Callable[[], Awaitable[Any]]:
    """The fast path's call for a streamed route: the route's own ``event_stream`` call."""
    service = state.orchestrator
    return lambda: event_stream(lambda stream: service.route(body, request_id=rid, stream=stream))


def streamed_send(
    state: State, session_id: str, body: SendRequest, rid: str
) -> Callable[[], Awaitable[Any]]:
    """The fast path's call for a streamed send (API key only: a session token's request
    goes to the app, which checks it)."""
    sessions = state.orchestrator.sessions
    return lambda: event_stream(
        lambda stream: sessions.send(
            session_id,
            body.data,
            timeout=body.timeout,
            idempotency_key=None,
            request_id=rid,
            stream=stream,
        )
    )


async def serve_stream(
    reply: EventStream, rid: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """Send ``reply`` with the request id header the request-context middleware adds."""
    reply.raw_headers.append((b"x-request-id", rid.encode()))
    await reply(scope, receive, send)
