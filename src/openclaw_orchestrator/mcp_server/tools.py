"""The MCP tools: one per endpoint of the HTTP API, over a :class:`~.backend.Backend`.

A tool's result is the endpoint's JSON reply as ``structuredContent`` plus a text block (a
one-line summary, then the same JSON: clients that hand the model text only lose nothing).
Every failure is a tool error (``isError``) whose ``structuredContent`` is the API's error
body, ``{"error": {"code", "message", ...}}``, and whose text starts ``code: message``;
a bug is ``internal_error``, its traceback only in the log. So a tool's ``outputSchema``
is its reply's schema *or* the error body's: MCP clients validate structured content
against it, errors included (the TypeScript SDK does, so an OpenClaw gateway would hand
its agent a schema-mismatch error instead of our code otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import orjson
from pydantic import BaseModel, TypeAdapter

from ..errors import NotFoundError, OrchestratorError
from ..models import (
    ErrorReply,
    FanoutRequest,
    FanoutResult,
    HealthDetail,
    HistoryPage,
    InstanceInfo,
    RouteRequest,
    RouteResult,
    RunInfo,
    SendResult,
    SessionInfo,
    SessionList,
    SessionSendRequest,
    SpawnRequest,
    SpawnResult,
)
from .arguments import (
    Arguments,
    HealthQuery,
    HistoryQuery,
    NoArguments,
    RunArguments,
    RunRef,
    RunWait,
    SessionQuery,
    SessionRef,
)
from .backend import Backend

__all__ = ["TOOLS", "InstanceList", "ToolSpec", "call_tool", "list_tools", "tool_error"]

log = logging.getLogger("openclaw_orchestrator.mcp")

NOT_FOR_TOOLS = frozenset({"async", "stream"})
"""Request fields no tool takes: a tool call answers once (no stream), and durable runs
are ``runs_submit``'s."""


class InstanceList(BaseModel):
    """``instances``' result, as ``GET /api/cluster/instances`` answers."""

    instances: list[InstanceInfo]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool: its arguments, the backend call, what its result looks like and a summary."""

    name: str
    description: str
    arguments: Arguments | RunArguments
    call: Callable[[Backend, Any], Awaitable[Any]]
    output: TypeAdapter[Any]
    summary: Callable[[Any], str]
    read_only: bool = False

    def tool(self) -> types.Tool:
        """The tool as ``tools/list`` shows it."""
        return types.Tool(
            name=self.name,
            description=self.description,
            input_schema=self.arguments.schema(),
            output_schema=self.output_schema(),
            annotations=types.ToolAnnotations(read_only_hint=self.read_only),
        )

    def output_schema(self) -> dict[str, Any]:
        """The reply's JSON Schema, or the API's error body (module docstring)."""
        reply = self.output.json_schema(mode="serialization", by_alias=True)
        error = ErrorReply.model_json_schema(mode="serialization", by_alias=True)
        defs = {**error.pop("$defs", {}), **reply.pop("$defs", {})}
        schema: dict[str, Any] = {"type": "object", "anyOf": [reply, error]}
        if defs:
            schema["$defs"] = defs
        return schema


def _adapter(shape: Any) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fanout_summary(r: FanoutResult) -> str:
    return (
        f"{r.succeeded} of {_count(len(r.results), 'target')} answered "
        f"({r.failed} failed, {r.timed_out} timed out)"
    )


def _health_summary(states: Mapping[str, Any]) -> str:
    words = (s if isinstance(s, str) else s.state for s in states.values())
    return ", ".join(f"{n}: {w}" for n, w in zip(states, words, strict=True)) or "no instances"


async def _instances(backend: Backend, _: NoArguments) -> InstanceList:
    return InstanceList(instances=await backend.instances())


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "route",
        "Send one task (payload) to ONE agent instance among candidates, failing over to a "
        "healthy one if an instance is down. Returns the serving instance and its result.",
        Arguments(RouteRequest, NOT_FOR_TOOLS),
        lambda b, a: b.route(a),
        _adapter(RouteResult),
        lambda r: f"{r.instance} answered in {r.total_ms:.0f} ms",
    ),
    ToolSpec(
        "fanout",
        "Send one task (payload) to EVERY target instance at once and aggregate the replies "
        "(array, merge, concat, first, quorum, topk). Returns one entry per target and value.",
        Arguments(FanoutRequest, NOT_FOR_TOOLS | {"reply"}),
        lambda b, a: b.fanout(a),
        _adapter(FanoutResult),
        _fanout_summary,
    ),
    ToolSpec(
        "sessions_spawn",
        "Start a conversation (session) pinned to one instance; later sessions_send calls "
        "go to it in order. Returns the session and its token (shown once).",
        Arguments(SpawnRequest),
        lambda b, a: b.spawn(a),
        _adapter(SpawnResult),
        lambda r: f"session {r.session_id} is open on {r.instance}",
    ),
    ToolSpec(
        "sessions_send",
        "Send a message (data) to a session's instance and wait for its reply; the message "
        "and reply are recorded in the session's history.",
        Arguments(SessionSendRequest, NOT_FOR_TOOLS),
        lambda b, a: b.send(a),
        _adapter(SendResult),
        lambda r: f"{r.instance} answered message {r.seq} of session {r.session_id}",
    ),
    ToolSpec(
        "sessions_history",
        "Read a session's messages and replies, oldest first, a page at a time.",
        Arguments(HistoryQuery),
        lambda b, a: b.history(a),
        _adapter(HistoryPage),
        lambda r: f"{_count(len(r.messages), 'entry')} of {r.total} in session {r.session_id}",
        read_only=True,
    ),
    ToolSpec(
        "sessions_list",
        "List sessions, filtered by instance, state (open, closed, expired) and activity "
        "within the last N minutes; most recently active first.",
        Arguments(SessionQuery),
        lambda b, a: b.sessions(a),
        _adapter(SessionList),
        lambda r: _count(len(r.sessions), "session"),
        read_only=True,
    ),
    ToolSpec(
        "sessions_close",
        "Close a session: its token stops working, its history is kept.",
        Arguments(SessionRef),
        lambda b, a: b.close(a.session_id),
        _adapter(SessionInfo),
        lambda r: f"session {r.session_id} is {r.state}",
    ),
    ToolSpec(
        "health",
        "Each instance's health (healthy, degraded, down); detail adds latency, last check "
        "and last error.",
        Arguments(HealthQuery),
        lambda b, a: b.health(a),
        _adapter(dict[str, str | HealthDetail]),
        _health_summary,
        read_only=True,
    ),
    ToolSpec(
        "instances",
        "List every agent instance the orchestrator knows: name, URL, driver, tags, state.",
        Arguments(NoArguments),
        _instances,
        _adapter(InstanceList),
        lambda r: _count(len(r.instances), "instance"),
        read_only=True,
    ),
    ToolSpec(
        "runs_submit",
        "Store a route, fanout or session send as a durable run worked on in the background "
        "and return it at once (queued); follow it with runs_get or runs_wait.",
        RunArguments(frozenset({"async"})),
        lambda b, a: b.submit(a),
        _adapter(RunInfo),
        lambda r: f"run {r.run_id} is {r.state}",
    ),
    ToolSpec(
        "runs_get",
        "A durable run as it stands: state, and once finished its result or error.",
        Arguments(RunRef),
        lambda b, a: b.run(a.run_id),
        _adapter(RunInfo),
        lambda r: f"run {r.run_id} is {r.state}",
        read_only=True,
    ),
    ToolSpec(
        "runs_wait",
        "Wait until a durable run has ended (at most timeout) and return it; check state: "
        "still queued or running means wait again.",
        Arguments(RunWait),
        lambda b, a: b.wait(a.run_id, a.timeout),
        _adapter(RunInfo),
        lambda r: f"run {r.run_id} is {r.state}",
        read_only=True,
    ),
    ToolSpec(
        "runs_cancel",
        "Cancel a durable run (a finished run is returned as it is).",
        Arguments(RunRef),
        lambda b, a: b.cancel(a.run_id),
        _adapter(RunInfo),
        lambda r: (
            f"run {r.run_id} is {r.state}"
            + (" (cancel requested)" if r.cancel_requested and r.state == "running" else "")
        ),
    ),
)
_BY_NAME = {spec.name: spec for spec in TOOLS}


def list_tools(backend: Backend) -> list[types.Tool]:
    """The tools ``backend``'s credential grants."""
    return [spec.tool() for spec in TOOLS if backend.grants(spec.name)]


async def call_tool(
    backend: Backend, name: str, arguments: Mapping[str, Any] | None
) -> types.CallToolResult:
    """Run tool ``name``: its result, or a tool error carrying the API's error body."""
    spec = _BY_NAME.get(name)
    try:
        if spec is None:
            raise _unknown_tool(name)
        result = await spec.call(backend, spec.arguments.parse(arguments))
    except OrchestratorError as exc:
        return tool_error(exc)
    except Exception as exc:
        log.error("mcp.unexpected_error tool=%s", name, exc_info=exc)
        return tool_error(OrchestratorError("internal error; see the orchestrator log"))
    body = spec.output.dump_python(result, mode="json", by_alias=True)
    return _result(body, spec.summary(result))


def _unknown_tool(name: str) -> OrchestratorError:
    known = ", ".join(_BY_NAME)
    return NotFoundError(f"no tool {name[:100]!r}; the tools are {known}", field="name")


def _result(body: Any, summary: str) -> types.CallToolResult:
    text = f"{summary}\n{orjson.dumps(body).decode()}"
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=body, is_error=False
    )


def tool_error(exc: OrchestratorError) -> types.CallToolResult:
    """``exc`` as a tool error: the API's error body, and ``code: message`` as text."""
    body = exc.to_dict()
    text = f"{exc.code}: {exc.message}\n{orjson.dumps(body).decode()}"
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=body, is_error=True
    )
