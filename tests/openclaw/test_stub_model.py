"""The stub model: finds the caller's text among the gateway's messages and answers it,
as JSON or as server-sent events, over a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from openclaw_orchestrator.devtools.openclaw.stub_model import (
    MAX_SLEEP,
    MAX_STREAM_GAP,
    TOOL_TIMEOUT,
    ToolStep,
    _tool_call,
    caller_text,
    create_stub_app,
    next_move,
    requested_sleep,
    requested_stream,
    word_chunks,
)
from openclaw_orchestrator.server.hosting import running

INTERNAL = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nnone\n<<<END_OPENCLAW_INTERNAL_CONTEXT>>>"
GATEWAY_MESSAGES = [
    {"role": "system", "content": "You are a personal assistant running inside OpenClaw."},
    {"role": "user", "content": "[Mon 2026-11-23 09:00 UTC] older question"},
    {"role": "assistant", "content": "echo: older question"},
    {
        "role": "user",
        "content": "[Tue 2026-11-24 05:01 UTC] summarize X\n\nRuntime: agent=main | session=s",
    },
    {"role": "user", "content": [{"type": "text", "text": INTERNAL}]},
]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (GATEWAY_MESSAGES, "summarize X"),
        ([{"role": "user", "content": "plain"}], "plain"),
        ([{"role": "user", "content": [{"type": "text", "text": "parts"}]}], "parts"),
        ([{"role": "system", "content": "only system"}], ""),
        ([], ""),
    ],
)
def test_caller_text(messages: list[dict[str, Any]], expected: str) -> None:
    """The newest timestamped user message, unwrapped; else the last user message."""
    assert caller_text(messages) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("no directive", 0.0),
        ("[stub:sleep=1.5] x", 1.5),
        ("[stub:sleep=999]", MAX_SLEEP),
        ("[stub:sleep=9] earlier\n[stub:sleep=0] newest", 0.0),
    ],
)
def test_requested_sleep(text: str, seconds: float) -> None:
    """``[stub:sleep=S]`` asks for a delay, capped; the last one counts."""
    assert requested_sleep(text) == seconds


async def test_models_json_and_streamed_completions() -> None:
    """/v1/models lists the model; completions answer as JSON or as SSE ending in [DONE]."""
    body = {"model": "stub-1", "messages": GATEWAY_MESSAGES}
    async with running(create_stub_app()) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/models") as resp:
            models = await resp.json()
        async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
            plain = await resp.json()
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(f"{url}/v1/chat/completions", json=streamed) as resp:
            content_type = resp.headers["Content-Type"]
            events = (await resp.text()).strip().split("\n\n")
        async with http.post(f"{url}/v1/chat/completions", data=b"{nope") as resp:
            bad = resp.status
        async with http.get(f"{url}/stub/requests") as resp:
            recorded = await resp.json()
    assert [m["id"] for m in models["data"]] == ["stub-1"]
    assert plain["choices"][0]["message"] == {"role": "assistant", "content": "echo: summarize X"}
    assert plain["usage"]["completion_tokens"] == 3
    assert content_type.startswith("text/event-stream")
    assert events[-1] == "data: [DONE]"
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: summarize X"
    assert chunks[-1]["usage"]["total_tokens"] > 0
    assert bad == 400
    assert len(recorded) == 2


@pytest.mark.parametrize(
    ("text", "gap"),
    [
        ("no directive", None),
        ("[stub:stream=0] x", 0.0),
        ("[stub:stream=99]", MAX_STREAM_GAP),
        ("[stub:stream=0.5] earlier\n[stub:stream=0] newest", 0.0),
    ],
)
def test_requested_stream(text: str, gap: float | None) -> None:
    """``[stub:stream=S]`` asks for a word-by-word answer S seconds apart, capped; the last
    one counts."""
    assert requested_stream(text) == gap


@pytest.mark.parametrize(
    ("text", "chunks"),
    [
        ("echo: a  b\nc", ["echo: ", "a  ", "b\n", "c"]),
        (" lead", [" lead"]),
        ("word", ["word"]),
        ("", []),
    ],
)
def test_word_chunks(text: str, chunks: list[str]) -> None:
    """Words keep the whitespace after them, so the chunks join back into the text."""
    assert word_chunks(text) == chunks
    assert "".join(chunks) == text


def contents(events: list[str]) -> list[str]:
    """The content deltas of an SSE body's chunks (role and finish chunks left out)."""
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events if e != "data: [DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    return [d["content"] for d in deltas if d.get("content")]


async def test_a_streamed_answer_comes_word_by_word_and_a_disconnect_is_recorded() -> None:
    """``[stub:stream=S]`` sends one chunk per word; /stub/streams says how each stream
    ended, ``disconnected`` when the client went away during ``[stub:sleep=S]``."""
    words = [{"role": "user", "content": "[stub:stream=0.01] one two three"}]
    slow = [{"role": "user", "content": "[stub:sleep=30] never answered"}]
    async with running(create_stub_app()) as url, aiohttp.ClientSession() as http:
        body = {"model": "stub-1", "messages": words, "stream": True}
        async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
            events = (await resp.text()).strip().split("\n\n")
        body = {"model": "stub-1", "messages": slow, "stream": True}
        async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
            first = await resp.content.readuntil(b"\n\n")
            resp.close()  # the client goes away while the stub sleeps
        states = []
        for _ in range(200):
            async with http.get(f"{url}/stub/streams") as resp:
                states = await resp.json()
            if states[-1]["state"] != "streaming":
                break
            await asyncio.sleep(0.01)
    assert contents(events) == ["echo: ", "[stub:stream=0.01] ", "one ", "two ", "three"]
    assert events[-1] == "data: [DONE]"
    assert b'"role":"assistant"' in first
    assert states == [
        {"text": "echo: [stub:stream=0.01] one two three", "state": "done", "chunks": 5},
        {"text": "echo: [stub:sleep=30] never answered", "state": "disconnected", "chunks": 0},
    ]


# -- tool directives: the orchestrator's MCP tools -------------------------------------------

CALLER = "[Sun 2026-11-29 23:46 UTC] {text}\n\nRuntime: agent=main | session=agent:main:k"
TOOL_SEARCH = [{"type": "function", "function": {"name": n}} for n in ("read", "tool_call")]
NOTICE = 'SECURITY NOTICE: external content.\n\n\n<<<EXTERNAL_UNTRUSTED_CONTENT id="1">>>\n'


def asked(text: str) -> list[dict[str, Any]]:
    """The messages a gateway sends for the caller's ``text``: system, the caller's message
    (stamped, with the runtime line), the gateway's internal context last."""
    return [
        GATEWAY_MESSAGES[0],
        {"role": "user", "content": CALLER.format(text=text)},
        GATEWAY_MESSAGES[-1],
    ]


def in_envelope(our_text: str) -> str:
    """Our tool result's text as a gateway's ``tool_call`` hands it to the model (the shape
    seen from openclaw 2026.9.6): a security notice around the MCP result's JSON."""
    result = {"content": [{"type": "text", "text": our_text}], "details": {"mcpTool": "x"}}
    envelope = {"tool": {"name": "orchestrator__x", "source": "mcp"}, "result": result}
    return noticed(orjson.dumps(envelope, option=orjson.OPT_INDENT_2).decode())


def noticed(text: str) -> str:
    """``text`` inside the security notice a gateway wraps tool output in."""
    return f'{NOTICE}Source: API\n---\n{text}\n<<<END_EXTERNAL_UNTRUSTED_CONTENT id="1">>>'


def answered(
    messages: list[dict[str, Any]], step: ToolStep, result: str, tools: Any = TOOL_SEARCH
) -> list[dict[str, Any]]:
    """``messages`` after the model's call of ``step`` and the gateway's tool result."""
    call = _tool_call(step, tools, len(messages))
    return [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": result},
    ]


def test_delegate_spawns_then_sends_then_answers_with_the_reply() -> None:
    """``[stub:delegate=G2] Q``: sessions_spawn on G2, sessions_send of Q (the rest of the
    directives passed on) to the spawned session, then G2's reply text."""
    messages = asked("[stub:delegate=G2] [stub:delegate=G1] what is 6x7?")
    spawn = next_move(messages)
    assert spawn == ToolStep("sessions_spawn", {"instance": "G2"})
    spawned = '{"session_id":"s_1","instance":"G2","state":"open","token":"ocs_x"}'
    messages = answered(messages, spawn, in_envelope(f"session s_1 is open on G2\n{spawned}"))
    send = next_move(messages)
    data = {"message": "[stub:delegate=G1] what is 6x7?"}
    args = {"sessionId": "s_1", "data": data, "timeout": TOOL_TIMEOUT}
    assert send == ToolStep("sessions_send", args)
    sent = '{"session_id":"s_1","seq":1,"instance":"G2","reply":{"text":"echo: 42","raw":{}}}'
    messages = answered(messages, send, in_envelope(f"G2 answered\n{sent}"))
    assert next_move(messages) == "G2 answered: echo: 42"


def test_a_tool_call_goes_through_tool_call_unless_the_tool_is_offered() -> None:
    """The gateway's Tool Search keeps MCP tools out of ``tools``: the call is then
    ``tool_call`` naming ``orchestrator__<tool>``; offered directly, it is called as is."""
    step = ToolStep("route", {"instances": ["R"], "payload": {"message": "hi"}})
    wrapped = _tool_call(step, TOOL_SEARCH, 3)
    assert wrapped["function"]["name"] == "tool_call"
    assert orjson.loads(wrapped["function"]["arguments"]) == {
        "id": "orchestrator__route",
        "args": step.args,
    }
    direct = _tool_call(
        step, [{"type": "function", "function": {"name": "orchestrator__route"}}], 3
    )
    assert direct["function"]["name"] == "orchestrator__route"
    assert orjson.loads(direct["function"]["arguments"]) == step.args
    assert wrapped["id"].startswith("call_")
    assert wrapped["id"] != direct["id"]


@pytest.mark.parametrize(
    ("result", "answer"),
    [
        (
            in_envelope(
                "delegation_loop: too deep\n"
                '{"error":{"code":"delegation_loop","message":"too deep"}}'
            ),
            "delegation to G2 failed: delegation_loop: too deep",
        ),
        (
            orjson.dumps(
                {
                    "status": "error",
                    "tool": "tool_call",
                    "error": noticed("MCP error -32602: Tool orchestrator__route not found"),
                }
            ).decode(),
            "delegation to G2 failed: gateway: MCP error -32602: Tool orchestrator__route "
            "not found",
        ),
        ("plain failure text", "delegation to G2 failed: gateway: plain failure text"),
    ],
)
def test_a_failed_tool_is_the_answer_with_our_code_or_the_gateways_text(
    result: str, answer: str
) -> None:
    """Our error body gives ``code: message``; anything else is the gateway's own error."""
    messages = asked("[stub:delegate=G2] ping")
    spawn = next_move(messages)
    assert isinstance(spawn, ToolStep)
    assert next_move(answered(messages, spawn, result)) == answer


def test_fanout_route_and_send_directives() -> None:
    """One tool call each; the answer names each instance's text (a non-turn result as its
    JSON); a fanout entry that failed shows its error."""
    fanout = next_move(asked("[stub:fanout=G2,R] compare"))
    args = {"targets": "G2,R", "payload": {"message": "compare"}, "timeout": TOOL_TIMEOUT}
    assert fanout == ToolStep("fanout", args)
    results = [
        {"instance": "G2", "status": "ok", "result": {"text": "echo: compare"}},
        {"instance": "R", "status": "ok", "result": {"payload": {"message": "compare"}}},
        {"instance": "X", "status": "error", "error": {"code": "instance_down"}},
    ]
    reply = orjson.dumps({"results": results, "succeeded": 2, "error": None}).decode()
    assert next_move(answered(asked("[stub:fanout=G2,R] compare"), fanout, reply)) == (
        'fanout: G2: echo: compare | R: {"payload":{"message":"compare"}} | '
        "X: {'instance': 'X', 'status': 'error', 'error': {'code': 'instance_down'}}"
    )
    route = next_move(asked("please [stub:route=G2] now"))
    args = {"instances": ["G2"], "payload": {"message": "please now"}, "timeout": TOOL_TIMEOUT}
    assert route == ToolStep("route", args)
    routed = '{"instance":"G2","result":{"text":"echo: please now"},"attempts":[]}'
    assert next_move(answered(asked("please [stub:route=G2] now"), route, routed)) == (
        "G2 answered: echo: please now"
    )
    send = next_move(asked("[stub:send=s_9] hi"))
    args = {"sessionId": "s_9", "data": {"message": "hi"}, "timeout": TOOL_TIMEOUT}
    assert send == ToolStep("sessions_send", args)
    refused = '{"error":{"code":"forbidden","message":"not your session"}}'
    assert next_move(answered(asked("[stub:send=s_9] hi"), send, refused)) == (
        "send to s_9 failed: forbidden: not your session"
    )
    assert next_move(asked("no directive")) is None


async def test_a_tool_call_is_answered_streamed_and_as_json() -> None:
    """The gateway asks with ``stream: true``: the call comes as one ``tool_calls`` delta
    and a ``tool_calls`` finish; as JSON it is the message's ``tool_calls``."""
    body = {"model": "stub-1", "messages": asked("[stub:route=R] hi"), "tools": TOOL_SEARCH}
    async with running(create_stub_app()) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
            plain = await resp.json()
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(f"{url}/v1/chat/completions", json=streamed) as resp:
            events = (await resp.text()).strip().split("\n\n")
    (choice,) = plain["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "tool_call"
    assert events[-1] == "data: [DONE]"
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-1]]
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    (streamed_call,) = [d["delta"]["tool_calls"][0] for d in deltas if "tool_calls" in d["delta"]]
    assert streamed_call == {"index": 0, **call}
    assert deltas[-1]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["total_tokens"] > 0
