"""The MCP tools over streamable HTTP at ``/mcp`` on a real orchestrator, driven by the
``mcp`` client library: the listing, every tool, errors as tool errors with the API's codes,
what a session token grants, and the credential checked before anything is read."""

from __future__ import annotations

import asyncio
import io
import sys
from typing import Any

import httpx2
import orjson
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from openclaw_orchestrator.models import (
    ErrorReply,
    RouteRequest,
    RouteResult,
    SessionSendRequest,
)
from tests.api.conftest import Cluster
from tests.cli.test_cli_live import base_env

from .conftest import failed, ok, over_http
from .every_tool import SESSION_TOOL_NAMES, TOOL_NAMES, call_every_tool

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])
"""The newest protocol (2026-07-28, per-request) and the 2025 handshake."""
JSON_RPC = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}


def tools_call(name: str, arguments: dict[str, Any]) -> bytes:
    """A ``tools/call`` JSON-RPC request body."""
    params = {"name": name, "arguments": arguments}
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})


@MODES
async def test_lists_every_tool_with_the_api_models_schemas(cluster: Cluster, mode: str) -> None:
    """Thirteen tools; each input schema is the endpoint's model without what a tool cannot
    use (async, stream), and each output schema is the endpoint's reply model or the API's
    error body (a tool error's structured content: clients validate that too)."""
    async with over_http(cluster, cluster.api_key, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert list(tools) == TOOL_NAMES
    route = RouteRequest.model_json_schema(by_alias=True)["properties"]
    assert tools["route"].input_schema["properties"] == {
        k: v for k, v in route.items() if k not in ("async", "stream")
    }
    reply = RouteResult.model_json_schema(mode="serialization", by_alias=True)
    error = ErrorReply.model_json_schema(mode="serialization", by_alias=True)
    assert tools["route"].output_schema == {
        "type": "object",
        "anyOf": [
            {k: v for k, v in reply.items() if k != "$defs"},
            {k: v for k, v in error.items() if k != "$defs"},
        ],
        "$defs": {**error["$defs"], **reply["$defs"]},
    }
    send = SessionSendRequest.model_json_schema(by_alias=True)
    assert tools["sessions_send"].input_schema["required"] == send["required"] == ["sessionId"]
    assert "reply" not in tools["fanout"].input_schema["properties"]
    assert tools["runs_submit"].input_schema["required"] == ["kind"]
    for tool in tools.values():
        assert tool.input_schema["type"] == "object", tool.name
        assert tool.output_schema is not None
        assert tool.output_schema["type"] == "object"
        assert tool.description
    assert tools["health"].annotations is not None
    assert tools["health"].annotations.read_only_hint


@MODES
async def test_calls_every_tool(cluster: Cluster, mode: str) -> None:
    """Each tool answers as its endpoint does, with the API key."""
    async with over_http(cluster, cluster.api_key, mode=mode) as client:
        await call_every_tool(client, cluster, f"mcp-http-{mode}")


@pytest.mark.parametrize(
    ("tool", "arguments", "code", "field"),
    [
        ("route", {"retry": 11}, "invalid_request", "retry"),
        ("route", {"timeout": "soon"}, "invalid_request", "timeout"),
        ("route", {"stream": True}, "invalid_request", "stream"),
        ("route", {"async": True}, "invalid_request", "async"),
        ("route", {"bogus": 1}, "invalid_request", "bogus"),
        ("fanout", {"reply": "value"}, "invalid_request", "reply"),
        ("sessions_send", {"data": {}}, "invalid_request", "sessionId"),
        ("sessions_send", {"sessionId": "nobody"}, "not_found", "session_id"),
        ("sessions_history", {"sessionId": "x", "limit": 1001}, "invalid_request", "limit"),
        ("sessions_list", {"state": "gone"}, "invalid_request", "state"),
        ("runs_get", {"run_id": "run_unknown"}, "not_found", "run_id"),
        ("runs_submit", {"kind": "dance"}, "invalid_request", "kind"),
        ("runs_wait", {"run_id": "r", "timeout": 301}, "invalid_request", "timeout"),
        ("no_such_tool", {}, "not_found", "name"),
    ],
)
async def test_errors_are_tool_errors_with_the_api_code(
    cluster: Cluster, tool: str, arguments: dict[str, Any], code: str, field: str
) -> None:
    """A bad argument or a failed call is a tool error (isError) whose structured content
    is the API's error body, naming the field; never a protocol error or a traceback."""
    async with over_http(cluster, cluster.api_key) as client:
        error = await failed(client, tool, arguments)
    assert (error["code"], error.get("field")) == (code, field), error


async def test_instance_errors_keep_their_code_and_instance(cluster: Cluster) -> None:
    """A session spawned on a taken id is session_exists; a send to a closed session is
    session_closed; a route to a hanging instance past its deadline is timeout, naming it."""
    async with over_http(cluster, cluster.api_key) as client:
        await ok(client, "sessions_spawn", {"sessionId": "mcp-taken"})
        taken = await failed(client, "sessions_spawn", {"sessionId": "mcp-taken"})
        assert taken["code"] == "session_exists"
        await ok(client, "sessions_close", {"sessionId": "mcp-taken"})
        gone = await failed(client, "sessions_send", {"sessionId": "mcp-taken", "data": {}})
        assert gone["code"] == "session_closed"
        await cluster.set_faults("B", latency=5.0)
        try:
            late = await failed(client, "route", {"instances": ["B"], "timeout": 0.3, "retry": 0})
        finally:
            await cluster.set_faults("B", latency=0.0)
    assert (late["code"], late["instance"]) == ("timeout", "B"), late


async def test_cancel_stops_a_running_run(cluster: Cluster) -> None:
    """runs_cancel on a run waiting for a slow instance ends it cancelled."""
    # The test before this one timed a route to B out, which may have set B down for a
    # moment: a run sent to a down instance fails at once instead of waiting to be cancelled.
    await cluster.wait_state("B", "healthy", timeout=10)
    await cluster.set_faults("B", latency=5.0)
    try:
        async with over_http(cluster, cluster.api_key) as client:
            body = {"kind": "route", "instances": ["B"], "payload": {}, "timeout": 30}
            run = await ok(client, "runs_submit", body)
            running = await ok(client, "runs_wait", {"run_id": run["run_id"], "timeout": 0.3})
            assert running["state"] in ("queued", "running")
            await ok(client, "runs_cancel", {"run_id": run["run_id"]})
            ended = await ok(client, "runs_wait", {"run_id": run["run_id"], "timeout": 10})
    finally:
        await cluster.set_faults("B", latency=0.0)
    assert ended["state"] == "cancelled", ended


async def test_session_token_grants_its_own_session_only(cluster: Cluster) -> None:
    """With a session token /mcp lists that session's three tools; they work on its
    session, are forbidden on another, every other tool is forbidden, and once the session
    is closed its token is unauthorized."""
    async with over_http(cluster, cluster.api_key) as admin:
        mine = await ok(admin, "sessions_spawn", {"sessionId": "mcp-mine", "instance": "A"})
        await ok(admin, "sessions_spawn", {"sessionId": "mcp-other", "instance": "B"})
    async with over_http(cluster, mine["token"]) as client:
        assert [t.name for t in (await client.list_tools()).tools] == SESSION_TOOL_NAMES
        sent = await ok(client, "sessions_send", {"sessionId": "mcp-mine", "data": {"k": 1}})
        assert sent["reply"]["payload"] == {"k": 1}
        assert (await ok(client, "sessions_history", {"sessionId": "mcp-mine"}))["total"] == 1
        elsewhere: list[tuple[str, dict[str, Any]]] = [
            ("sessions_send", {"sessionId": "mcp-other", "data": {}}),
            ("sessions_history", {"sessionId": "mcp-other"}),
            ("sessions_close", {"sessionId": "mcp-other"}),
            ("route", {"payload": {}}),
            ("sessions_list", {}),
            ("sessions_spawn", {}),
            ("health", {}),
            ("runs_get", {"run_id": "r"}),
        ]
        for tool, arguments in elsewhere:
            assert (await failed(client, tool, arguments))["code"] == "forbidden", tool
        assert (await ok(client, "sessions_close", {"sessionId": "mcp-mine"}))["state"] == "closed"
        after = await failed(client, "sessions_history", {"sessionId": "mcp-mine"})
    assert after["code"] == "unauthorized"


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-key", "Basic dXNlcjpwdw==", "Bearer "]
)
async def test_no_key_is_401_before_the_body_is_read(
    cluster: Cluster, authorization: str | None
) -> None:
    """Without the API key or a session token /mcp answers 401 with the API's error body,
    whatever the body (here not even JSON)."""
    headers = {**JSON_RPC, **({} if authorization is None else {"Authorization": authorization})}
    async with cluster.http.post(cluster.url + "/mcp", data=b"{not json", headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_a_client_without_a_key_cannot_connect(cluster: Cluster) -> None:
    """The mcp client itself gets a 401 for its first request and fails to connect."""
    statuses: list[int] = []

    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    async with httpx2.AsyncClient(event_hooks={"response": [record]}) as http:
        transport = streamable_http_client(cluster.url + "/mcp", http_client=http)
        with pytest.raises(Exception):  # noqa: B017, PT011  # the SDK's own, wrapped in a group
            async with Client(transport, mode="legacy") as client:
                await client.list_tools()
    assert statuses == [401]


async def test_a_body_over_the_limit_is_413(cluster: Cluster) -> None:
    """/mcp has the API's body limit (max_body_bytes, 1 MiB by default)."""
    big = tools_call("route", {"payload": {"blob": "x" * (1024 * 1024)}})
    async with cluster.http.post(
        cluster.url + "/mcp", data=io.BytesIO(big), headers={**JSON_RPC, **cluster.headers}
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
async def test_only_post_is_served(cluster: Cluster, method: str) -> None:
    """A stateless server pushes nothing: the spec's optional GET stream (which a gateway
    would otherwise hold open) and every other method is a 405 naming POST."""
    headers = {"Accept": "text/event-stream", **cluster.headers}
    async with cluster.http.request(method, cluster.url + "/mcp", headers=headers) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_stateless_call_without_a_handshake(cluster: Cluster) -> None:
    """One POST of tools/call, no initialize and no session id (any replica can serve it):
    a JSON reply whose route ran under the request's X-Request-ID."""
    headers = {**JSON_RPC, **cluster.headers, "X-Request-ID": "mcp-stateless-1"}
    body = tools_call("route", {"instances": "A", "payload": {"q": 1}})
    async with cluster.http.post(cluster.url + "/mcp", data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        assert "mcp-session-id" not in resp.headers
        reply = await resp.json()
    result = reply["result"]
    assert result["isError"] is False
    assert result["structuredContent"]["request_id"] == "mcp-stateless-1"
    assert result["structuredContent"]["result"] == {"instance": "A", "payload": {"q": 1}}


async def test_tool_results_are_the_http_replies(cluster: Cluster) -> None:
    """health and instances over MCP equal the HTTP API's replies, detail included."""
    async with over_http(cluster, cluster.api_key) as client:
        detail = await ok(client, "health", {"detail": True, "instances": ["A"]})
    assert set(detail) == {"A"}
    assert detail["A"]["state"] == "healthy"
    assert set(detail["A"]) == set(
        (await cluster.get("/api/orchestrator/health?detail=true"))[1]["A"]
    )


LAZY_SDK = """
import asyncio, sys, tempfile
from pathlib import Path

import aiohttp, orjson

from openclaw_orchestrator.mcp_server import http as mcp_http
from openclaw_orchestrator.server.api.app import create_app
from openclaw_orchestrator.server.hosting import BackgroundServer
from openclaw_orchestrator.settings import Settings

KEY = "k" * 32
HEADERS = {**orjson.loads(sys.argv[1]), "Authorization": "Bearer " + KEY}
LIST = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})


built = []
build = mcp_http._session_manager
mcp_http._session_manager = lambda *args: built.append(args) or build(*args)


def sdk() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in ("mcp", "mcp_types"))


async def tools(http: aiohttp.ClientSession, url: str) -> list[str]:
    async with http.post(url + "/mcp", data=LIST, headers=HEADERS) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        return [tool["name"] for tool in (await resp.json())["result"]["tools"]]


async def main() -> None:
    report = {}
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(Settings(api_key=KEY, data_dir=Path(data_dir)))
        report["created"] = sdk()
        async with BackgroundServer(app) as url, aiohttp.ClientSession() as http:
            report["started"] = sdk()
            async with http.post(url + "/mcp", data=b"{not json") as resp:
                report["no_key"] = resp.status
            async with http.get(url + "/mcp", headers=HEADERS) as resp:
                report["get"] = resp.status
            report["refused"] = sdk()
            report["first"] = await asyncio.gather(*(tools(http, url) for _ in range(4)))
            report["again"] = await tools(http, url)
            report["served"] = "mcp" in sys.modules and "mcp_types" in sys.modules
    report["built"] = len(built)
    print(orjson.dumps(report).decode())


asyncio.run(main())
"""
"""A fresh process: build and start the app, refuse two /mcp requests, then four
concurrent first tools/list calls and one more; its last line reports what was imported
when and how many session managers were built."""


async def test_the_sdk_is_imported_by_the_first_mcp_request_only() -> None:
    """Importing the app, creating it, starting it and answering /mcp's 401 and 405 import
    neither ``mcp`` nor ``mcp_types`` (they are most of the app's import time); concurrent
    first calls start the session manager once and all get the tools, and the process
    shuts down cleanly (the manager is stopped with the app)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LAZY_SDK,
        orjson.dumps(JSON_RPC).decode(),
        env=base_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, err.decode()
    for trouble in (b"Traceback", b"never retrieved", b"destroyed but it is pending"):
        assert trouble not in out + err, (out + err).decode()
    report = orjson.loads(out.splitlines()[-1])  # after the app's log lines
    assert (report["created"], report["started"], report["refused"]) == ([], [], [])
    assert (report["no_key"], report["get"]) == (401, 405)
    assert report["first"] == [TOOL_NAMES] * 4
    assert report["again"] == TOOL_NAMES
    assert report["served"] is True
    assert report["built"] == 1
