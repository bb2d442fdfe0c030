"""``openclaw orchestrator mcp``: the same tools over stdio, launched as a child process by
the ``mcp`` client library and pointed at a real orchestrator with ``ORCHESTRATOR_URL`` and
``ORCHESTRATOR_API_KEY``; the orchestrator enforces the credential."""

from __future__ import annotations

import pytest

from tests.api.conftest import Cluster
from tests.cli.test_cli_live import free_port

from .conftest import failed, ok, over_http, over_stdio
from .every_tool import SESSION_TOOL_NAMES, TOOL_NAMES, call_every_tool

pytestmark = pytest.mark.asyncio(loop_scope="module")

NO_SERVER = """\
import sys
for _name in ("fastapi", "fastapi_offline", "sqlalchemy", "asyncpg", "alembic", "httptools"):
    sys.modules[_name] = None
"""
"""Python's "not installed" marker for the server extra's own packages (``mcp`` brings
starlette, uvicorn and sse-starlette itself)."""


async def test_lists_the_same_tools_as_http(cluster: Cluster) -> None:
    """The stdio server lists the thirteen tools with exactly /mcp's schemas."""
    async with over_stdio(cluster, cluster.api_key) as client:
        listed = (await client.list_tools()).tools
    async with over_http(cluster, cluster.api_key) as client:
        over_http_listed = (await client.list_tools()).tools
    assert [t.name for t in listed] == TOOL_NAMES
    assert [t.model_dump() for t in listed] == [t.model_dump() for t in over_http_listed]


async def test_calls_every_tool_without_the_server_installed(cluster: Cluster) -> None:
    """Every tool works through the HTTP API in a child that cannot import the server's
    own packages (FastAPI, SQLAlchemy, the database drivers); over the 2025 handshake,
    as most agent hosts speak it."""
    async with over_stdio(cluster, cluster.api_key, mode="legacy", prelude=NO_SERVER) as client:
        await call_every_tool(client, cluster, "mcp-stdio")


async def test_errors_are_tool_errors_with_the_api_code(cluster: Cluster) -> None:
    """Arguments are refused before any request, the orchestrator's errors come back with
    their code, and an unknown tool is not_found."""
    async with over_stdio(cluster, cluster.api_key) as client:
        bad = await failed(client, "fanout", {"top_k": 0})
        assert (bad["code"], bad["field"]) == ("invalid_request", "top_k")
        missing = await failed(client, "sessions_history", {"sessionId": "nobody"})
        assert missing["code"] == "not_found"
        unknown = await failed(client, "runs_cancel", {"run_id": "run_nothing"})
        assert unknown["code"] == "not_found"
        assert (await failed(client, "nope", {}))["code"] == "not_found"


async def test_a_wrong_key_or_no_orchestrator_is_a_tool_error(cluster: Cluster) -> None:
    """A wrong key is unauthorized; an orchestrator that is not there is connection_failed:
    the server still starts and lists its tools, so the agent sees why."""
    async with over_stdio(cluster, "wrong-key") as client:
        assert (await failed(client, "health", {}))["code"] == "unauthorized"
    cluster.url, real = f"http://127.0.0.1:{free_port()}", cluster.url
    try:
        async with over_stdio(cluster, cluster.api_key) as client:
            assert len((await client.list_tools()).tools) == len(TOOL_NAMES)
            assert (await failed(client, "health", {}))["code"] == "connection_failed"
    finally:
        cluster.url = real


async def test_a_session_token_as_the_key_grants_its_session(cluster: Cluster) -> None:
    """With a session token as ORCHESTRATOR_API_KEY the server lists that session's tools;
    they work on it, and the orchestrator forbids them on another session."""
    async with over_http(cluster, cluster.api_key) as admin:
        mine = await ok(admin, "sessions_spawn", {"sessionId": "stdio-mine", "instance": "B"})
        await ok(admin, "sessions_spawn", {"sessionId": "stdio-other"})
    async with over_stdio(cluster, mine["token"]) as client:
        assert [t.name for t in (await client.list_tools()).tools] == SESSION_TOOL_NAMES
        sent = await ok(client, "sessions_send", {"sessionId": "stdio-mine", "data": [1]})
        assert (sent["instance"], sent["reply"]["payload"]) == ("B", [1])
        other = await failed(client, "sessions_send", {"sessionId": "stdio-other", "data": {}})
        assert other["code"] == "forbidden"
        assert (await failed(client, "route", {}))["code"] == "forbidden"
