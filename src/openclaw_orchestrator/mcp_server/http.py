"""``/mcp``: the MCP tools over streamable HTTP, on the orchestrator's own app.

Stateless (every request stands alone: replicas behind a load balancer need no sticky
sessions) with JSON replies (a tool call answers once). Only ``POST`` is served: a stateless
server has nothing to push, so the spec's optional ``GET`` stream is a ``405`` (an OpenClaw
gateway otherwise holds one open after every turn, and a shutdown waits on it). The bearer
credential is checked before the request is read, as on every other route: none or a wrong
one is ``401`` with the API's error body; the API key grants every tool, a session token its
own session's (:class:`~.core_backend.Grant`). Body size and request ids come from the app's
middleware.

The ``mcp`` SDK and the tools cost more than half the app's import time, so every server
process would pay for them at start-up whether or not anyone calls ``/mcp``: this module
imports none of them. The first ``/mcp`` request that passes the credential check imports
them (in a worker thread: the loop keeps serving) and starts the SDK's session manager
(:class:`_Serving`); the app's lifespan stops it.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import OrchestratorError, UnauthorizedError
from ..server.api.errors import error_response
from ..server.api.middleware import request_id_of
from ..server.api.security import Authenticator, bearer_token, is_session_token
from ..server.core.orchestrator import Orchestrator
from ..settings import Settings
from .core_backend import CoreBackend, Grant

if TYPE_CHECKING:
    from mcp.server import ServerRequestContext
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

__all__ = ["MCP_PATH", "McpEndpoint", "grant_for", "install_mcp"]

MCP_PATH = "/mcp"
_GRANT = "mcp_grant"
"""Where :class:`McpEndpoint` leaves the request's :class:`Grant` in the ASGI scope's state."""
_SDK_MODULES = (
    "mcp.server.streamable_http_manager",
    "mcp.server.transport_security",
    f"{__package__}.server",
)
"""What serving ``/mcp`` imports (the SDK, ``mcp_types``, the tools), once, on first use."""


def grant_for(auth: Authenticator, authorization: str | None) -> Grant:
    """What the ``Authorization`` header grants; :class:`UnauthorizedError` when it is
    missing or neither the API key nor a session token (whose session each call checks)."""
    token = bearer_token(authorization)
    if token is None:
        if auth.is_enabled:
            raise UnauthorizedError("missing 'Authorization: Bearer <API key or session token>'")
        return Grant()
    if auth.is_api_key(token):
        return Grant()
    if not is_session_token(token):
        raise UnauthorizedError("invalid API key")
    return Grant(session_token=token)


class McpEndpoint:
    """The ASGI app at ``/mcp``: the credential first, then the SDK's session manager, which
    the first request that gets that far starts (:meth:`serving` must be open)."""

    def __init__(self, build: Callable[[], StreamableHTTPSessionManager], auth: Authenticator):
        self._build = build
        self._auth = auth
        self._serving: _Serving | None = None

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """For the app's lifespan: while open, requests may start the session manager; on
        exit it is stopped (if it was started), before what the lifespan entered earlier."""
        serving = _Serving(self._build, contextvars.copy_context())
        self._serving = serving
        try:
            yield
        finally:
            self._serving = None
            await serving.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await _method_not_allowed(scope, receive, send)
            return
        try:
            grant = grant_for(self._auth, Request(scope).headers.get("authorization"))
        except OrchestratorError as exc:
            await error_response(exc)(scope, receive, send)
            return
        serving = self._serving
        if serving is None:
            raise RuntimeError(f"{MCP_PATH} called outside the app's lifespan")
        manager = await serving.manager()
        scope.setdefault("state", {})[_GRANT] = grant
        await manager.handle_request(scope, receive, send)


class _Serving:
    """One lifespan's session manager, started by the first request that needs it.

    ``manager.run()`` holds an anyio task group that every request's server task joins, and
    a task group must be left by the task that entered it: so it runs in a task of its own
    (:meth:`_run`), in the lifespan's context, until :meth:`close`. Concurrent first requests
    share that one start; a request cancelled while waiting leaves it going for the others
    (``shield``); a start that failed fails its waiting requests and the next one retries.
    """

    def __init__(
        self, build: Callable[[], StreamableHTTPSessionManager], context: contextvars.Context
    ) -> None:
        self._build = build
        self._context = context
        self._manager: StreamableHTTPSessionManager | None = None
        self._ready: asyncio.Future[StreamableHTTPSessionManager] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def manager(self) -> StreamableHTTPSessionManager:
        """The running session manager, started first if no request has started it yet."""
        if self._manager is not None:
            return self._manager
        if self._stop.is_set():
            raise RuntimeError(f"{MCP_PATH} called after the app's lifespan ended")
        if self._ready is None or self._ready.done():  # never started, or the start failed
            self._ready = asyncio.get_running_loop().create_future()
            self._runner = self._context.run(asyncio.create_task, self._run(self._ready))
        return await asyncio.shield(self._ready)

    async def _run(self, ready: asyncio.Future[StreamableHTTPSessionManager]) -> None:
        """Import the SDK, build the manager and hold its ``run()`` open until :meth:`close`."""
        try:
            await asyncio.to_thread(_import_sdk)
            manager = self._build()
            async with manager.run():
                self._manager = manager
                ready.set_result(manager)
                await self._stop.wait()
        except BaseException as exc:
            if ready.done():
                raise
            if isinstance(exc, Exception):
                ready.set_exception(exc)  # the waiting requests fail with it (500)
                return
            ready.set_exception(RuntimeError(f"{MCP_PATH}: stopped before it started"))
            raise
        finally:
            self._manager = None

    async def close(self) -> None:
        """Stop the session manager: a started one leaves ``run()`` (which cancels what its
        requests left behind); a start still importing is cancelled."""
        self._stop.set()
        runner = self._runner
        if runner is None:
            return
        if self._ready is not None and not self._ready.done():
            runner.cancel()
        try:
            await runner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the lifespan itself is being cancelled, not just the start


def _import_sdk() -> None:
    """Import :data:`_SDK_MODULES`; run in a worker thread (Python's import locks make that
    safe), so the loop serves other requests meanwhile."""
    for name in _SDK_MODULES:
        importlib.import_module(name)


async def _method_not_allowed(scope: Scope, receive: Receive, send: Send) -> None:
    """``405`` with ``Allow: POST`` and the API's error body."""
    body = OrchestratorError(f"{MCP_PATH} answers POST only (stateless: no GET stream)").to_dict()
    body["error"]["code"] = "method_not_allowed"
    reply = Response(orjson.dumps(body), 405, {"Allow": "POST"}, "application/json")
    await reply(scope, receive, send)


def _core_backend(app: FastAPI, ctx: ServerRequestContext[Any, Any]) -> CoreBackend:
    """The core for one MCP request, with the grant :class:`McpEndpoint` left in its scope."""
    request: Request | None = ctx.request
    if request is None:
        raise RuntimeError("an /mcp request without its HTTP request")
    orchestrator: Orchestrator = app.state.orchestrator
    grant: Grant = request.scope["state"][_GRANT]
    return CoreBackend(orchestrator, grant, request_id_of(request.scope))


def _session_manager(app: FastAPI, settings: Settings) -> StreamableHTTPSessionManager:
    """The SDK's session manager over the tools; call after :func:`_import_sdk`."""
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings

    from .server import build_server

    if app.state.authenticator.is_enabled:  # the key is what keeps strangers out
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    else:  # loopback only: a browser page must not reach the tools by DNS rebinding
        security = TransportSecuritySettings(
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    return StreamableHTTPSessionManager(
        app=build_server(lambda ctx: _core_backend(app, ctx)),
        json_response=True,
        stateless=True,
        security_settings=security,
        max_request_body_size=settings.max_body_bytes,
    )


def install_mcp(app: FastAPI, settings: Settings) -> None:
    """Serve the MCP tools at :data:`MCP_PATH`; the SDK's session manager, started by the
    first request, runs inside the app's lifespan, after the orchestrator is up, and is
    stopped before it closes."""
    auth: Authenticator = app.state.authenticator
    endpoint = McpEndpoint(lambda: _session_manager(app, settings), auth)
    app.router.routes.append(Route(MCP_PATH, endpoint=endpoint, include_in_schema=False))
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(served: Any) -> AsyncIterator[Any]:
        async with outer(served) as state, endpoint.serving():
            yield state

    app.router.lifespan_context = lifespan
