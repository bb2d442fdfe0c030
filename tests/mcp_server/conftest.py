"""One real cluster per test module (echo instances A and B behind an orchestrator on
127.0.0.1), and MCP clients of it from the ``mcp`` library: over streamable HTTP at ``/mcp``
with a bearer credential, or over stdio through ``openclaw orchestrator mcp`` launched as a
child process pointed at the same orchestrator."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import orjson
import pytest_asyncio
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from tests.api.conftest import Cluster, start_cluster
from tests.cli.test_cli_live import base_env

STDIO_COMMAND = [sys.executable, "-m", "openclaw_orchestrator.cli.mcp_command"]
"""``openclaw orchestrator mcp``, as the module that implements it."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    """Echo instances A and B behind an orchestrator, both healthy, for the whole module."""
    async with start_cluster("AB", fast_paths=True) as started:
        yield started


@asynccontextmanager
async def over_http(
    cluster: Cluster, credential: str | None, *, mode: str = "auto"
) -> AsyncIterator[Client]:
    """An MCP client of ``cluster``'s ``/mcp`` sending ``Authorization: Bearer <credential>``;
    ``mode="legacy"`` speaks the 2025 handshake, ``"auto"`` the newest protocol."""
    headers = {} if credential is None else {"Authorization": f"Bearer {credential}"}
    async with httpx2.AsyncClient(headers=headers) as http:
        transport = streamable_http_client(cluster.url + "/mcp", http_client=http)
        async with Client(transport, mode=mode) as client:
            yield client


def stdio_server(url: str, credential: str | None, *, prelude: str = "") -> StdioServerParameters:
    """``openclaw orchestrator mcp`` against ``url`` with ``credential`` as
    ``ORCHESTRATOR_API_KEY``; ``prelude`` is Python run first in the child."""
    env = base_env(ORCHESTRATOR_URL=url)
    if credential is not None:
        env["ORCHESTRATOR_API_KEY"] = credential
    if prelude:
        runner = (
            f"{prelude}\nimport runpy\nrunpy.run_module({STDIO_COMMAND[2]!r}, run_name='__main__')"
        )
        return StdioServerParameters(command=sys.executable, args=["-c", runner], env=env)
    return StdioServerParameters(command=STDIO_COMMAND[0], args=STDIO_COMMAND[1:], env=env)


@asynccontextmanager
async def over_stdio(
    cluster: Cluster, credential: str | None, *, mode: str = "auto", prelude: str = ""
) -> AsyncIterator[Client]:
    """An MCP client of a ``openclaw orchestrator mcp`` child pointed at ``cluster``."""
    async with Client(stdio_server(cluster.url, credential, prelude=prelude), mode=mode) as client:
        yield client


def text_of(result: CallToolResult) -> str:
    """The one text block of a tool result."""
    (block,) = result.content
    assert isinstance(block, TextContent), block
    return block.text


async def ok(client: Client, tool: str, arguments: dict[str, Any]) -> Any:
    """Call ``tool``; it must succeed, with its JSON both structured and after the text's
    summary line. Returns the structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result
    summary, _, body = text_of(result).partition("\n")
    assert summary
    assert orjson.loads(body) == result.structured_content
    return result.structured_content


async def failed(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call ``tool``; it must be a tool error carrying the API's error body, whose text
    starts ``code: message``. Returns the error (``{"code", "message", ...}``)."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    body = result.structured_content
    assert isinstance(body, dict)
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert text_of(result).startswith(f"{error['code']}: {error['message']}\n")
    return error
