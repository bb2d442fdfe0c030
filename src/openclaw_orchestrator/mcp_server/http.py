"""``/mcp``: the MCP tools over streamable HTTP, on the orchestrator's own app.

Stateless (every request stands alone: replicas behind a load balancer need no sticky
sessions) with JSON replies (a tool call answers once). Only ``POST`` is served: a stateless
server has nothing to push, so the spec's optional ``GET`` stream is a ``405`` (an OpenClaw
gateway otherwise holds one open after every turn, and a shutdown waits on it). The bearer
credential is checked before the request is read, as on every other route: none or a wrong
one is ``401`` with the API's error body; the API key grants every tool, a session token its
own session's (:class:`~.core_backend.Grant`). Body size and request ids come from the app's
middleware.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI
from mcp.server import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
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
from .server import build_server

__all__ = ["MCP_PATH", "McpEndpoint", "grant_for", "install_mcp"]

MCP_PATH = "/mcp"
_GRANT = "mcp_grant"
"""Where :class:`McpEndpoint` leaves the request's :class:`Grant` in the ASGI scope's state."""
_LOOPBACK = TransportSecuritySettings(
    allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
    allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
)
"""An orchestrator without a key runs on loopback only: then a browser page must not reach
the tools by DNS rebinding (with a key, the key is what keeps strangers out)."""
_ANY_HOST = TransportSecuritySettings(enable_dns_rebinding_protection=False)


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
    """The ASGI app at ``/mcp``: the credential first, then the SDK's session manager."""

    def __init__(self, manager: StreamableHTTPSessionManager, auth: Authenticator) -> None:
        self._manager = manager
        self._auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await _method_not_allowed(scope, receive, send)
            return
        try:
            grant = grant_for(self._auth, Request(scope).headers.get("authorization"))
        except OrchestratorError as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})[_GRANT] = grant
        await self._manager.handle_request(scope, receive, send)


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


def install_mcp(app: FastAPI, settings: Settings) -> None:
    """Serve the MCP tools at :data:`MCP_PATH`; the SDK's session manager runs inside the
    app's lifespan, after the orchestrator is up and stopped before it closes."""
    auth: Authenticator = app.state.authenticator
    manager = StreamableHTTPSessionManager(
        app=build_server(lambda ctx: _core_backend(app, ctx)),
        json_response=True,
        stateless=True,
        security_settings=_ANY_HOST if auth.is_enabled else _LOOPBACK,
        max_request_body_size=settings.max_body_bytes,
    )
    app.router.routes.append(
        Route(MCP_PATH, endpoint=McpEndpoint(manager, auth), include_in_schema=False)
    )
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(served: Any) -> AsyncIterator[Any]:
        async with outer(served) as state, manager.run():
            yield state

    app.router.lifespan_context = lifespan
