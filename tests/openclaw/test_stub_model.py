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
    caller_text,
    create_stub_app,
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
