"""The MCP server: the low-level ``mcp`` :class:`~mcp.server.Server` with the tools of
:mod:`.tools`, over whichever :class:`~.backend.Backend` a request gets.

The low-level server, not ``MCPServer`` (the former FastMCP): the tools' input schemas are
the HTTP API's models, and their errors the API's error body, neither of which a
function-signature tool can express.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp.server import Server, ServerRequestContext

from .. import __about__
from ..errors import OrchestratorError
from .backend import Backend
from .tools import call_tool, list_tools, tool_error

__all__ = ["INSTRUCTIONS", "BackendFor", "build_server"]

BackendFor = Callable[[ServerRequestContext[Any, Any]], Backend]
"""The backend serving one request (``/mcp``: the core, with the request's credential)."""

INSTRUCTIONS = (
    "openclaw-orchestrator delegates work to other agent instances. route: one task to one "
    "instance; fanout: one task to many, aggregated; sessions_spawn then sessions_send: a "
    "conversation with one instance; health and instances: who is there; runs_*: durable "
    "background work. Errors carry {error: {code, message}}."
)


def build_server(backend_for: BackendFor) -> Server[Any]:
    """The server answering ``tools/list`` and ``tools/call`` with ``backend_for``'s backend."""

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], _: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list_tools(backend_for(ctx)))

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            backend = backend_for(ctx)
        except OrchestratorError as exc:
            return tool_error(exc)
        return await call_tool(backend, params.name, params.arguments)

    return Server(
        "openclaw-orchestrator",
        version=__about__.__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )
