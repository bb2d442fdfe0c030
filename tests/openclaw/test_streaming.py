"""Streaming and cancel on OpenClaw gateways: chat completion chunks -> ``{"text"}`` deltas
and the same result as the JSON call; a cancelled call hangs up and the gateway aborts
the agent run.

No Node here: :class:`ChatStream` on its own, then the driver against a small scripted
server over a real socket (streams a real gateway cannot be made to send: a mid-stream
error, no ``[DONE]``, too many bytes). The same against real gateways, and through the
orchestrator, is in ``test_gateways.py`` (which shares its gateways among its tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from openclaw_orchestrator.domain.backoff import is_retryable
from openclaw_orchestrator.errors import (
    InstanceError,
    InstanceProtocolError,
    InstanceRejectedError,
    ReplyTooLargeError,
)
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.drivers.openclaw import (
    ChatStream,
    OpenClawDriver,
    Turn,
    chunk_text,
)
from openclaw_orchestrator.server.hosting import running

TOKEN = "gateway-token-1"


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """A ``chat.completion.chunk`` as the gateway writes it."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    head = {"id": "chatcmpl_1", "object": "chat.completion.chunk", "created": 7}
    return {**head, "model": "openclaw", "choices": [choice], **extra}


USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
CHUNKS = [
    chunk({"role": "assistant"}),
    chunk({"content": "echo:"}),
    chunk({"content": " hello"}),
    chunk({"content": " there"}),
    chunk({}, "stop"),
    {**chunk({}), "choices": [], "usage": USAGE},
]
REPLY = {
    "id": "chatcmpl_1",
    "object": "chat.completion",
    "created": 7,
    "model": "openclaw",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "echo: hello there"},
            "finish_reason": "stop",
        }
    ],
    "usage": USAGE,
}


def sse(*events: Any) -> bytes:
    """``data:`` events, JSON values as JSON, bytes as they are."""
    out = b""
    for event in events:
        data = event if isinstance(event, bytes) else orjson.dumps(event)
        out += b"data: " + data + b"\n\n"
    return out


# -- ChatStream, on its own --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (chunk({"content": " hi"}), " hi"),
        (chunk({"role": "assistant"}), ""),
        (chunk({}, "stop"), ""),
        ({"choices": []}, ""),
        ({"choices": [{"delta": {"content": 3}}]}, ""),
        ({}, ""),
    ],
)
def test_chunk_text(value: dict[str, Any], text: str) -> None:
    """A chunk's text is its first choice's ``delta.content``; anything else adds none."""
    assert chunk_text(value) == text


def test_a_stream_folds_into_the_json_reply() -> None:
    """Each event gives the text it adds; ``[DONE]`` ends it; the reply is the
    ``chat.completion`` the JSON call returns (usage from the trailing usage chunk)."""
    stream = ChatStream("O1")
    texts = [stream.take(orjson.dumps(c)) for c in CHUNKS]
    assert not stream.done
    assert stream.take(b"[DONE]") == ""
    assert texts == ["", "echo:", " hello", " there", "", ""]
    assert stream.done
    assert stream.reply() == REPLY


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ([*CHUNKS], r"without data: \[DONE\]"),
        ([b"[DONE]"], "no chat completion chunk"),
        ([b"not json"], "not a JSON object"),
        ([b"[1, 2]"], "not a JSON object"),
    ],
)
def test_a_broken_stream_is_a_protocol_error(events: list[Any], problem: str) -> None:
    """No ``[DONE]``, nothing before it, or an event that is no JSON object."""
    stream = ChatStream("O1")

    def run() -> None:
        for event in events:
            stream.take(event if isinstance(event, bytes) else orjson.dumps(event))
        stream.reply()

    with pytest.raises(InstanceProtocolError, match=problem) as caught:
        run()
    assert caught.value.instance == "O1"


@pytest.mark.parametrize(
    ("kind", "error_class", "status", "retryable"),
    [
        ("invalid_request_error", InstanceRejectedError, 400, False),
        ("permission_error", InstanceRejectedError, 403, False),
        ("rate_limit_error", InstanceError, 429, True),
        ("authentication_error", InstanceError, 502, True),
        ("api_error", InstanceError, 500, False),
        (None, InstanceError, 500, False),
    ],
)
def test_an_error_event_maps_like_a_json_error_reply(
    kind: str | None, error_class: type[InstanceError], status: int, retryable: bool
) -> None:
    """``data: {"error": {...}}`` raises what a JSON error reply of its type's status
    raises, with the gateway's message and type."""
    stream = ChatStream("O1")
    stream.take(orjson.dumps(CHUNKS[1]))
    error = {"message": "upstream provider error", **({"type": kind} if kind else {})}
    with pytest.raises(InstanceError) as caught:
        stream.take(orjson.dumps({"error": error}))
    assert type(caught.value) is error_class
    assert caught.value.upstream_status == status
    assert "upstream provider error" in caught.value.message
    assert is_retryable(caught.value) is retryable


def test_a_turn_body_asks_for_a_stream_with_usage_only_when_streamed() -> None:
    """The JSON body is as before; the streamed one asks for the usage chunk too."""
    turn = Turn([{"role": "user", "content": "hi"}], options={"temperature": 0.5})
    plain = {"temperature": 0.5, "model": "openclaw", "messages": turn.messages, "stream": False}
    assert turn.body() == plain
    streamed = {**plain, "stream": True, "stream_options": {"include_usage": True}}
    assert turn.body(stream=True) == streamed


# -- the driver against a scripted server ------------------------------------------------


@dataclass
class Script:
    """What the scripted chat completions endpoint answers next, and what it was sent."""

    body: bytes = b""
    status: int = 200
    media_type: str = "text/event-stream"
    seen: list[tuple[dict[str, str], Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def completions(request: Request) -> Response:
            self.seen.append((dict(request.headers), orjson.loads(await request.body())))
            if self.media_type == "text/event-stream" and self.status == 200:
                return StreamingResponse(self._pieces(), media_type=self.media_type)
            return Response(self.body, self.status, media_type=self.media_type)

        async def tools(request: Request) -> Response:
            reply = {"ok": True, "result": {"details": {"sessions": []}}}
            return Response(orjson.dumps(reply), media_type="application/json")

        return Starlette(
            routes=[
                Route("/v1/chat/completions", completions, methods=["POST"]),
                Route("/tools/invoke", tools, methods=["POST"]),
            ]
        )

    async def _pieces(self) -> AsyncIterator[bytes]:
        for event in self.body.split(b"\n\n"):
            if event:
                yield event + b"\n\n"


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Script, OpenClawDriver, InstanceSpec]]:
    """A scripted gateway, a driver and its instance spec."""
    script = Script()
    async with running(script.app()) as url, aiohttp.ClientSession() as http:
        spec = InstanceSpec(name="G", url=url, driver="openclaw", credentials=SecretStr(TOKEN))
        yield script, OpenClawDriver(http), spec


class Deltas(list[Any]):
    """An ``on_delta`` that keeps what it is given."""

    async def __call__(self, delta: Any) -> None:
        self.append(delta)


async def test_a_streamed_turn_relays_text_deltas_and_returns_the_json_result(
    scripted: tuple[Script, OpenClawDriver, InstanceSpec],
) -> None:
    """Each content delta becomes ``{"text"}`` in order; the result is what the JSON reply
    of the same completion gives; the request asked for a stream with usage."""
    script, driver, spec = scripted
    script.body = sse(*CHUNKS, b"[DONE]")
    deltas = Deltas()
    result = await driver.invoke(spec, "hello there", timeout=5, request_id="r1", on_delta=deltas)
    script.media_type, script.body = "application/json", orjson.dumps(REPLY)
    plain = await driver.invoke(spec, "hello there", timeout=5, request_id="r2")
    assert deltas == [{"text": "echo:"}, {"text": " hello"}, {"text": " there"}]
    assert result == plain
    assert result["text"] == "echo: hello there" == "".join(d["text"] for d in deltas)
    (headers, body), (_, plain_body) = script.seen
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})
    assert headers["accept"] == "text/event-stream"
    assert headers["x-request-id"] == "r1"
    assert (plain_body["stream"], "stream_options" in plain_body) == (False, False)


async def test_a_json_answer_to_a_streamed_turn_and_a_tool_give_no_deltas(
    scripted: tuple[Script, OpenClawDriver, InstanceSpec],
) -> None:
    """A gateway answering JSON anyway, and a tool call (never streamed): just the result."""
    script, driver, spec = scripted
    script.media_type, script.body = "application/json", orjson.dumps(REPLY)
    deltas = Deltas()
    turn = await driver.invoke(spec, {"message": "x"}, timeout=5, request_id="r", on_delta=deltas)
    tool = await driver.session_send(
        spec, "s1", {"tool": "sessions_list"}, timeout=5, request_id="r", on_delta=deltas
    )
    assert deltas == []
    assert turn["text"] == "echo: hello there"
    assert tool["result"] == {"sessions": []}


async def test_a_gateway_error_mid_stream_is_raised_after_the_deltas_before_it(
    scripted: tuple[Script, OpenClawDriver, InstanceSpec],
) -> None:
    """``data: {"error"}`` then ``[DONE]`` (how the gateway fails a streamed run): the
    deltas so far were relayed, then the mapped error."""
    script, driver, spec = scripted
    error = {"error": {"message": "upstream provider timeout", "type": "api_error"}}
    script.body = sse(*CHUNKS[:2], error, b"[DONE]")
    deltas = Deltas()
    with pytest.raises(InstanceError, match="upstream provider timeout") as caught:
        await driver.invoke(spec, "x", timeout=5, request_id="r", on_delta=deltas)
    assert deltas == [{"text": "echo:"}]
    assert (caught.value.upstream_status, caught.value.instance) == (500, "G")


@pytest.mark.parametrize(
    ("body", "error_class"),
    [
        (sse(*CHUNKS), InstanceProtocolError),  # no [DONE]
        (sse(*CHUNKS[:2], b"{broken"), InstanceProtocolError),
        (sse(*CHUNKS, *CHUNKS, *CHUNKS, b"[DONE]"), ReplyTooLargeError),  # past 1,500 bytes
    ],
)
async def test_a_broken_or_long_stream_fails(
    scripted: tuple[Script, OpenClawDriver, InstanceSpec],
    body: bytes,
    error_class: type[InstanceError],
) -> None:
    """No ``[DONE]``, an event that is no JSON, or more bytes than ``max_reply_bytes``."""
    script, driver, spec = scripted
    script.body = body
    spec = spec.model_copy(update={"max_reply_bytes": 1500})
    assert len(sse(*CHUNKS)) < 1500 < len(body) or error_class is not ReplyTooLargeError
    with pytest.raises(error_class):
        await driver.invoke(spec, "x", timeout=5, request_id="r", on_delta=Deltas())


async def test_errors_before_the_stream_map_as_before(
    scripted: tuple[Script, OpenClawDriver, InstanceSpec],
) -> None:
    """A non-2xx reply to a streamed turn is the JSON error reply it always was."""
    script, driver, spec = scripted
    script.status, script.media_type = 400, "application/json"
    script.body = orjson.dumps({"error": {"message": "Unknown agent 'x'.", "type": "invalid"}})
    with pytest.raises(InstanceRejectedError, match="Unknown agent"):
        await driver.invoke(spec, "x", timeout=5, request_id="r", on_delta=Deltas())


async def test_a_failing_on_delta_is_raised_as_it_is(
    scripted: tuple[Script, OpenClawDriver, InstanceSpec],
) -> None:
    """The caller's own failure is not the instance's: raised untranslated."""
    script, driver, spec = scripted
    script.body = sse(*CHUNKS, b"[DONE]")

    async def failing(delta: Any) -> None:
        raise LookupError("the consumer broke")

    with pytest.raises(LookupError, match="the consumer broke"):
        await driver.invoke(spec, "x", timeout=5, request_id="r", on_delta=failing)
