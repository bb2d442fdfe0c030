"""OpenClawDriver's mapping against a tiny fake gateway: payload -> request, reply -> result,
status -> error, readiness -> health, and the memory of a rejected token. No Node needed."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openclaw_orchestrator.domain.backoff import is_retryable
from openclaw_orchestrator.errors import (
    InstanceDownError,
    InstanceError,
    InstanceProtocolError,
    InstanceRejectedError,
)
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.drivers.openclaw import (
    MISCONFIGURED,
    OpenClawDriver,
    ToolCall,
    Turn,
    history_messages,
    parse_payload,
    readiness,
    session_key,
)
from openclaw_orchestrator.server.hosting import running

TOKEN = "gateway-token-1"
COMPLETION = {
    "id": "chatcmpl_1",
    "object": "chat.completion",
    "model": "openclaw",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
READY = {"ready": True, "failing": [], "eventLoop": {"degraded": False, "reasons": []}}


@dataclass
class Reply:
    """What the fake gateway answers on one path."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeGateway:
    """Canned replies per path, and every request it saw."""

    replies: dict[str, Reply] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)

    def paths(self) -> list[str]:
        """The paths requested, in order."""
        return [path for path, _, _ in self.seen]

    def app(self) -> Starlette:
        """The gateway as an ASGI app."""

        async def handle(request: Request) -> Response:
            raw = await request.body()
            body = orjson.loads(raw) if raw else None
            self.seen.append((request.url.path, dict(request.headers), body))
            reply = self.replies.get(request.url.path, Reply(404, {"error": {"type": "nf"}}))
            if request.url.path == "/tools/invoke" and callable(reply.body):
                return _json(200, reply.body(body))
            return _json(reply.status, reply.body, reply.headers)

        paths = ("/v1/chat/completions", "/tools/invoke", "/v1/models", "/readyz", "/healthz")
        return Starlette(routes=[Route(p, handle, methods=["GET", "POST"]) for p in paths])


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


@pytest.fixture
def gateway() -> FakeGateway:
    """A fake gateway: ready, token accepted, one completion, sessions_list empty."""
    return FakeGateway(
        {
            "/v1/chat/completions": Reply(body=COMPLETION),
            "/tools/invoke": Reply(body={"ok": True, "result": {"details": {"sessions": []}}}),
            "/v1/models": Reply(body={"object": "list", "data": []}),
            "/readyz": Reply(body=READY),
            "/healthz": Reply(body={"ok": True, "status": "live"}),
        }
    )


@dataclass
class Clock:
    """A hand-wound monotonic clock."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def served(
    gateway: FakeGateway,
) -> AsyncIterator[tuple[OpenClawDriver, InstanceSpec, Clock]]:
    """The driver (with a hand-wound clock) and the fake gateway's instance spec."""
    clock = Clock()
    async with running(gateway.app()) as url, aiohttp.ClientSession() as http:
        spec = InstanceSpec(name="G", url=url, driver="openclaw", credentials=SecretStr(TOKEN))
        yield OpenClawDriver(http, rejection_backoff=60.0, clock=clock), spec, clock


# -- payload -> request ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("hello", Turn([{"role": "user", "content": "hello"}])),
        (
            {"message": "hi", "agent": "ops", "temperature": 0.2, "ignored": 1},
            Turn([{"role": "user", "content": "hi"}], "openclaw/ops", None, {"temperature": 0.2}),
        ),
        (
            {"messages": [{"role": "user", "content": "a"}], "session_key": "mine"},
            Turn([{"role": "user", "content": "a"}], "openclaw", "mine"),
        ),
        (
            {"tool": "sessions_list", "args": {"limit": 1}, "action": "json", "agent": "main"},
            ToolCall("sessions_list", {"limit": 1}, "json", "main"),
        ),
        ({"tool": "sessions_list"}, ToolCall("sessions_list", {})),
        ({"text": "hi", "n": 1}, Turn([{"role": "user", "content": '{"n":1,"text":"hi"}'}])),
        (42, Turn([{"role": "user", "content": "42"}])),
    ],
)
def test_parse_payload(payload: Any, expected: Turn | ToolCall) -> None:
    """Strings and messages become turns (agent -> model), tool payloads tool calls, and
    any other JSON a turn whose message is its JSON text."""
    assert parse_payload(payload, instance="G") == expected


@pytest.mark.parametrize(
    ("payload", "field_name"),
    [
        ({"message": ""}, "payload.message"),
        ({"message": 3}, "payload.message"),
        ({"messages": []}, "payload.messages"),
        ({"messages": [{"content": "no role"}]}, "payload.messages"),
        ({"message": "hi", "agent": "bad agent"}, "payload.agent"),
        ({"message": "hi", "session_key": "cron:x"}, "payload.session_key"),
        ({"tool": "sessions_list", "args": []}, "payload.args"),
        ({"tool": ""}, "payload.tool"),
        ({"tool": None}, "payload.tool"),
    ],
)
def test_parse_payload_rejects(payload: Any, field_name: str) -> None:
    """A payload the gateway cannot take is rejected up front, naming the field."""
    with pytest.raises(InstanceRejectedError) as caught:
        parse_payload(payload, instance="G")
    assert (caught.value.field, caught.value.instance, caught.value.code) == (
        field_name,
        "G",
        "invalid_request",
    )


def test_a_session_sets_the_key_and_a_payload_may_not() -> None:
    """In a session the orchestrator owns the gateway session key."""
    key = session_key("s1")
    assert parse_payload({"message": "hi"}, instance="G", session=key) == Turn(
        [{"role": "user", "content": "hi"}], session_key="orch-s1"
    )
    tool = parse_payload({"tool": "session_status"}, instance="G", session=key)
    assert isinstance(tool, ToolCall)
    assert tool.body() == {"tool": "session_status", "args": {}, "sessionKey": "orch-s1"}
    with pytest.raises(InstanceRejectedError):
        parse_payload({"message": "hi", "session_key": "x"}, instance="G", session=key)


def test_history_messages_replay_turns_and_skip_tools() -> None:
    """Turns replay as user/assistant text; other JSON as JSON; tool calls are left out."""
    history = [
        ({"message": "q1"}, {"text": "a1"}),
        ({"messages": [{"role": "user", "content": "q2"}]}, {"text": "a2"}),
        ({"tool": "sessions_list"}, {"tool": "sessions_list", "result": {}}),
        ({"b": 1, "a": 2}, {"ok": True}),
        ("plain", "reply"),
    ]
    assert history_messages(history) == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": '{"a":2,"b":1}'},
        {"role": "assistant", "content": '{"ok":true}'},
        {"role": "user", "content": "plain"},
        {"role": "assistant", "content": "reply"},
    ]


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, READY, (False, None)),
        (
            503,
            {"ready": False, "failing": ["startup-sidecars"]},
            (True, "live but not ready: failing startup-sidecars"),
        ),
        (
            200,
            {"ready": True, "eventLoop": {"degraded": True, "reasons": ["cpu"]}},
            (True, "event loop degraded: cpu"),
        ),
        (200, {"ok": True, "status": "live"}, (False, None)),
        (404, {"error": "nf"}, None),
        (200, None, None),
    ],
)
def test_readiness(status: int, body: Any, verdict: tuple[bool, str | None] | None) -> None:
    """Ready is healthy; not ready or a degraded event loop is degraded with a reason."""
    assert readiness(status, body) == verdict


# -- requests and results over HTTP ------------------------------------------------------


async def test_a_turn_request_and_result(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """A turn posts a non-streamed completion with the token and returns the turn shape."""
    driver, spec, _ = served
    result = await driver.session_send(
        spec, "s1", {"message": "hello", "agent": "main"}, timeout=5, request_id="req-1"
    )
    assert result == {
        "text": "hi there",
        "usage": COMPLETION["usage"],
        "session_key": "orch-s1",
        "model": "openclaw",
        "raw": COMPLETION,
    }
    path, headers, body = gateway.seen[-1]
    assert path == "/v1/chat/completions"
    assert body == {
        "model": "openclaw/main",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": False,
    }
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert (headers["x-openclaw-session-key"], headers["x-request-id"]) == ("orch-s1", "req-1")


async def test_a_tool_request_and_result(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """A tool call posts to /tools/invoke; the result is the tool's details."""
    driver, spec, _ = served
    result = await driver.invoke(
        spec, {"tool": "sessions_list", "args": {"limit": 2}}, timeout=5, request_id="r"
    )
    assert result == {
        "tool": "sessions_list",
        "result": {"sessions": []},
        "raw": {"ok": True, "result": {"details": {"sessions": []}}},
    }
    assert gateway.seen[-1][2] == {"tool": "sessions_list", "args": {"limit": 2}}


@pytest.mark.parametrize(
    ("path", "payload", "status", "headers", "cls", "retry_after", "retryable"),
    [
        ("/v1/chat/completions", "hi", 401, {}, InstanceError, None, False),
        ("/v1/chat/completions", "hi", 429, {"Retry-After": "2"}, InstanceError, 2.0, True),
        ("/v1/chat/completions", "hi", 404, {}, InstanceError, None, False),
        ("/v1/chat/completions", "hi", 400, {}, InstanceRejectedError, None, False),
        ("/v1/chat/completions", "hi", 503, {"Retry-After": "1"}, InstanceError, 1.0, True),
        ("/v1/chat/completions", "hi", 500, {}, InstanceError, None, False),
        ("/tools/invoke", {"tool": "exec"}, 404, {}, InstanceRejectedError, None, False),
        ("/tools/invoke", {"tool": "x"}, 403, {}, InstanceRejectedError, None, False),
        ("/tools/invoke", {"tool": "x"}, 502, {}, InstanceError, None, True),
        ("/tools/invoke", {"tool": "x"}, 302, {}, InstanceProtocolError, None, False),
    ],
)
async def test_gateway_errors_map_to_the_error_tree(
    served: tuple[OpenClawDriver, InstanceSpec, Clock],
    gateway: FakeGateway,
    path: str,
    payload: Any,
    status: int,
    headers: dict[str, str],
    cls: type[InstanceError],
    retry_after: float | None,
    retryable: bool,
) -> None:
    """Each gateway status becomes the documented error, retryable or not."""
    driver, spec, _ = served
    error_body = {"ok": False, "error": {"type": "some_type", "message": "went wrong"}}
    gateway.replies[path] = Reply(status, error_body, headers)
    with pytest.raises(InstanceError) as caught:
        await driver.invoke(spec, payload, timeout=5, request_id="r")
    exc = caught.value
    assert type(exc) is cls
    assert (exc.upstream_status, exc.retry_after, exc.instance) == (status, retry_after, "G")
    assert is_retryable(exc) is retryable
    assert TOKEN not in exc.message
    if status == 401:
        assert "gateway rejected the token" in exc.message
    elif status == 404 and path == "/v1/chat/completions":
        assert "chatCompletions" in exc.message


async def test_a_reply_without_a_message_is_a_protocol_error(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """A 200 that is not a chat completion (or not an ok tool reply) is a protocol error."""
    driver, spec, _ = served
    gateway.replies["/v1/chat/completions"] = Reply(body={"choices": []})
    gateway.replies["/tools/invoke"] = Reply(body={"ok": False})
    for payload in ("hi", {"tool": "sessions_list"}):
        with pytest.raises(InstanceProtocolError):
            await driver.invoke(spec, payload, timeout=5, request_id="r")


async def test_an_unreachable_gateway_is_down() -> None:
    """Connection refused is InstanceDownError for calls and probes alike."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = InstanceSpec(name="G", url=f"http://127.0.0.1:{port}", driver="openclaw")
    async with aiohttp.ClientSession() as http:
        driver = OpenClawDriver(http)
        with pytest.raises(InstanceDownError):
            await driver.invoke(spec, "hi", timeout=5, request_id="r")
        with pytest.raises(InstanceDownError):
            await driver.probe(spec, timeout=5)


# -- health and the rejected token -------------------------------------------------------


async def test_probe_ready_and_degraded(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """Ready is healthy; not ready is degraded with the failing checks in the detail."""
    driver, spec, _ = served
    result = await driver.probe(spec, timeout=5)
    assert (result.degraded, result.detail) == (False, None)
    assert set(gateway.paths()) == {"/readyz", "/v1/models"}
    assert all(h["authorization"] == f"Bearer {TOKEN}" for _, h, _ in gateway.seen)
    gateway.replies["/readyz"] = Reply(503, {"ready": False, "failing": ["plugin-reload"]})
    result = await driver.probe(spec, timeout=5)
    assert (result.degraded, result.detail) == (True, "live but not ready: failing plugin-reload")


async def test_probe_falls_back_to_healthz_and_honours_health_path(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """No /readyz: /healthz decides (live, degraded); a health_path override is probed."""
    driver, spec, _ = served
    gateway.replies["/readyz"] = Reply(404, {"error": "not found"})
    result = await driver.probe(spec, timeout=5)
    assert (result.degraded, result.detail) == (True, "live, but /readyz answered HTTP 404")
    gateway.replies["/healthz"] = Reply(500, {"ok": False})
    with pytest.raises(InstanceError):
        await driver.probe(spec, timeout=5)
    gateway.replies["/healthz"] = Reply(body={"ok": True, "status": "live"})
    gateway.seen.clear()
    result = await driver.probe(spec.model_copy(update={"health_path": "/healthz"}), timeout=5)
    assert (result.degraded, "/readyz" in gateway.paths()) == (False, False)


async def test_probe_says_when_chat_completions_are_off(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """A gateway without /v1/* serves tools only: degraded, and the detail says why."""
    driver, spec, _ = served
    del gateway.replies["/v1/models"]
    result = await driver.probe(spec, timeout=5)
    assert result.degraded
    assert "chatCompletions disabled" in (result.detail or "")


@pytest.mark.parametrize(("status", "headers"), [(401, {}), (429, {"Retry-After": "120"})])
async def test_a_rejected_token_is_misconfigured_and_not_resent(
    served: tuple[OpenClawDriver, InstanceSpec, Clock],
    gateway: FakeGateway,
    status: int,
    headers: dict[str, str],
) -> None:
    """401 (or 429 after failed auth) is misconfigured: degraded, and until the credentials
    change or the backoff passes, probes check /healthz without the token and calls fail
    without reaching the gateway."""
    driver, spec, clock = served
    gateway.replies["/v1/models"] = Reply(status, {"error": {"type": "unauthorized"}}, headers)
    first = await driver.probe(spec, timeout=5)
    assert first.degraded
    assert (first.detail or "").startswith(MISCONFIGURED)
    assert driver.is_rejected(spec)
    assert "rejected_tokens=1" in repr(driver)
    gateway.seen.clear()
    again = await driver.probe(spec, timeout=5)
    assert (again.degraded, again.detail) == (True, first.detail)
    with pytest.raises(InstanceError) as caught:
        await driver.invoke(spec, "hi", timeout=5, request_id="r")
    assert caught.value.upstream_status == 401
    assert "not resent" in caught.value.message
    assert gateway.paths() == ["/healthz"]
    assert "authorization" not in gateway.seen[0][1]
    backoff = 120.0 if status == 429 else 60.0
    clock.now = backoff - 1
    assert driver.is_rejected(spec)
    clock.now = backoff
    assert not driver.is_rejected(spec)
    await driver.probe(spec, timeout=5)
    fixed = spec.model_copy(update={"credentials": SecretStr("new-token")})
    assert driver.is_rejected(spec)
    assert not driver.is_rejected(fixed)
    gateway.replies["/v1/models"] = Reply(body={"data": []})
    assert not (await driver.probe(fixed, timeout=5)).degraded


async def test_a_gateway_wanting_a_token_the_instance_lacks(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """No credentials against a token gateway: misconfigured, and the detail says why."""
    driver, spec, _ = served
    gateway.replies["/v1/models"] = Reply(401, {"error": {"type": "unauthorized"}})
    result = await driver.probe(spec.model_copy(update={"credentials": None}), timeout=5)
    assert result.degraded
    assert result.detail == "misconfigured: the gateway wants a token and the instance has none"
    assert all("authorization" not in headers for _, headers, _ in gateway.seen)


async def test_a_401_on_a_call_is_remembered(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """A call answered 401 makes the next call fail without sending the token again."""
    driver, spec, _ = served
    gateway.replies["/v1/chat/completions"] = Reply(401, {"error": {"type": "unauthorized"}})
    for _ in range(3):
        with pytest.raises(InstanceError):
            await driver.invoke(spec, "hi", timeout=5, request_id="r")
    assert gateway.paths() == ["/v1/chat/completions"]


# -- sessions ----------------------------------------------------------------------------


async def test_close_deletes_exactly_the_session(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """Close lists orch-<id> and deletes only exact key matches (every agent), by id."""
    driver, spec, _ = served
    rows = [
        {"key": "agent:main:orch-s1", "sessionId": "u1"},
        {"key": "agent:ops:orch-s1", "sessionId": "u2"},
        {"key": "agent:main:orch-s10", "sessionId": "u3"},
    ]

    def tools(body: dict[str, Any]) -> Any:
        if body["tool"] == "sessions_list":
            return {"ok": True, "result": {"details": {"sessions": rows}}}
        return {"ok": True, "result": {"details": {"deleted": True}}}

    gateway.replies["/tools/invoke"] = Reply(body=tools)
    await driver.session_close(spec, "s1", timeout=5)
    bodies = [body for _, _, body in gateway.seen]
    assert bodies[0] == {"tool": "sessions_list", "args": {"search": "orch-s1"}}
    deletes = [(b["args"]["sessionKey"], b["args"]["expectedSessionId"]) for b in bodies[1:]]
    assert deletes == [("agent:main:orch-s1", "u1"), ("agent:ops:orch-s1", "u2")]
    assert all(b["tool"] == "sessions" and b["args"]["action"] == "delete" for b in bodies[1:])


async def test_restore_replaces_the_session_with_one_context_turn(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """Restore closes the old gateway session, then runs one turn carrying the history;
    an empty history only closes."""
    driver, spec, _ = served
    await driver.session_restore(spec, "s2", [], timeout=5, request_id="r")
    assert gateway.paths() == ["/tools/invoke"]
    history = [({"message": "q"}, {"text": "a"})]
    await driver.session_restore(spec, "s2", history, timeout=5, request_id="r")
    path, headers, body = gateway.seen[-1]
    assert (path, headers["x-openclaw-session-key"]) == ("/v1/chat/completions", "orch-s2")
    assert body["messages"][:2] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert body["messages"][2]["role"] == "user"


async def test_gateway_history_reads_sessions_history(
    served: tuple[OpenClawDriver, InstanceSpec, Clock], gateway: FakeGateway
) -> None:
    """gateway_history asks sessions_history for orch-<id> (agent-qualified when asked)."""
    driver, spec, _ = served
    messages = [{"role": "user", "content": "q"}]
    gateway.replies["/tools/invoke"] = Reply(
        body={"ok": True, "result": {"details": {"messages": messages}}}
    )
    assert await driver.gateway_history(spec, "s3") == messages
    assert await driver.gateway_history(spec, "s3", agent="ops") == messages
    keys = [body["args"]["sessionKey"] for _, _, body in gateway.seen]
    assert keys == ["orch-s3", "agent:ops:orch-s3"]
    gateway.replies["/tools/invoke"] = Reply(body={"ok": True, "result": {"details": {}}})
    with pytest.raises(InstanceProtocolError):
        await driver.gateway_history(spec, "s3")


async def test_driver_is_an_async_context_manager() -> None:
    """The driver owns nothing; entering and leaving it is harmless."""
    async with aiohttp.ClientSession() as http:
        async with OpenClawDriver(http) as driver:
            assert repr(driver) == "<OpenClawDriver kind=openclaw rejected_tokens=0>"
        with contextlib.suppress(Exception):
            await driver.aclose()
