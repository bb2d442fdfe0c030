"""The MCP tools over stdio, as a client of an orchestrator's HTTP API: for agents that
launch their tools as processes (``openclaw orchestrator mcp``). Needs the SDK and ``mcp``,
not the server."""

from __future__ import annotations

from mcp.server.stdio import stdio_server

from ..sdk.async_client import AsyncClient
from .sdk_backend import SdkBackend
from .server import build_server

__all__ = ["serve_stdio"]


async def serve_stdio(url: str, credential: str | None) -> None:
    """Serve the tools on stdin/stdout until stdin closes, each call sent to the
    orchestrator at ``url`` with ``credential`` (the API key or a session token)."""
    async with AsyncClient(url, credential) as client, stdio_server() as (reader, writer):
        backend = SdkBackend(client, credential)
        server = build_server(lambda _: backend)
        await server.run(reader, writer, server.create_initialization_options())
