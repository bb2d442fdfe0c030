"""A tiny OpenAI-compatible model server that OpenClaw gateways can use offline.

It answers every chat completion deterministically with ``"echo: <caller's text>"``, so a
test (or ``openclaw orchestrator up --openclaw N``) can run real agent turns without a real
model. The gateway talks to it as a ``vllm``-style provider (``api: "openai-completions"``):

    GET  /v1/models              {"object": "list", "data": [{"id": "stub-1", ...}]}
    POST /v1/chat/completions    JSON, or server-sent events when ``"stream": true``
    GET  /stub/requests          the last bodies it received (newest last), for tests
    GET  /stub/streams           the last streamed answers and how each ended, for tests

Finding the caller's text: the gateway does not forward the caller's message as-is. It wraps
it with a timestamp prefix (``[Tue 2026-11-24 05:01 UTC] ``), may follow it with a
``Runtime: agent=main | session=...`` line, and appends its own internal context as the
*last* user message. :func:`caller_text` therefore takes the newest user message that
carries a timestamp prefix, strips the prefix and any trailing runtime lines, and falls
back to the newest user message when none does.

Directives in the caller's text, for tests (the last of a kind counts):

    [stub:sleep=S]    the answer waits S seconds (at most MAX_SLEEP), so a test can catch a
                      turn in flight; a streamed answer sends its role chunk first and waits
                      after it, so a client that goes away meanwhile is seen at once
    [stub:stream=S]   a streamed answer comes word by word (each word with the whitespace
                      after it), S seconds apart (at most MAX_STREAM_GAP; 0: back to back),
                      instead of as one content chunk

``GET /stub/streams`` lists the streamed answers (newest last) with how each ended:
``"done"``, or ``"disconnected"`` when the client (a gateway aborting its run) closed the
connection first; ``"streaming"`` while one is under way.

Run it as ``python -m openclaw_orchestrator.devtools.openclaw.stub_model --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "DEFAULT_MODEL_ID",
    "MAX_SLEEP",
    "MAX_STREAM_GAP",
    "caller_text",
    "create_stub_app",
    "main",
    "reply_text",
    "requested_sleep",
    "requested_stream",
    "word_chunks",
]

DEFAULT_MODEL_ID = "stub-1"
MAX_RECORDED = 200
MAX_SLEEP = 30.0
MAX_STREAM_GAP = 5.0
_SLEEP = re.compile(r"\[stub:sleep=(\d+(?:\.\d+)?)\]")
_STREAM = re.compile(r"\[stub:stream=(\d+(?:\.\d+)?)\]")
_WORD = re.compile(r"\s*\S+\s*|\s+")
_STAMP = re.compile(r"^\[[A-Z][a-z]{2} \d{4}-\d{2}-\d{2} \d{2}:\d{2}(?::\d{2})?[^\]]*\]\s*")
_RUNTIME_LINE = re.compile(r"^\s*Runtime:\s", re.MULTILINE)


def _text_of(content: Any) -> str:
    """The text of a message ``content``: a string, or the text parts of a part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _unwrap(text: str) -> str:
    """``text`` without the gateway's timestamp prefix and trailing ``Runtime:`` lines."""
    text = _STAMP.sub("", text.strip(), count=1)
    cut = _RUNTIME_LINE.search(text)
    return (text[: cut.start()] if cut else text).strip()


def caller_text(messages: Sequence[Any]) -> str:
    """The text the gateway's caller sent, found among the messages the gateway built."""
    users = [_text_of(m.get("content")) for m in messages if _is_user(m)]
    for text in reversed(users):
        if _STAMP.match(text.strip()):
            return _unwrap(text)
    return _unwrap(users[-1]) if users else ""


def _is_user(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "user"


def reply_text(messages: Sequence[Any]) -> str:
    """The stub's deterministic answer: ``"echo: <caller's text>"``."""
    return f"echo: {caller_text(messages)}"


def _last(directive: re.Pattern[str], text: str) -> float | None:
    """The value of ``directive``'s last occurrence in ``text`` (None without one): the
    caller's newest say, when the gateway folds an earlier message in before it."""
    found = directive.findall(text)
    return float(found[-1]) if found else None


def requested_sleep(text: str) -> float:
    """Seconds asked for by a ``[stub:sleep=S]`` directive in ``text`` (0 without one)."""
    seconds = _last(_SLEEP, text)
    return 0.0 if seconds is None else min(seconds, MAX_SLEEP)


def requested_stream(text: str) -> float | None:
    """Seconds between words asked for by a ``[stub:stream=S]`` directive in ``text``; None
    without one (a streamed answer is then one content chunk)."""
    gap = _last(_STREAM, text)
    return None if gap is None else min(gap, MAX_STREAM_GAP)


def word_chunks(text: str) -> list[str]:
    """``text`` cut after each word's trailing whitespace; joined, they are ``text`` again."""
    return _WORD.findall(text)


def _usage(messages: Sequence[Any], answer: str) -> dict[str, int]:
    prompt = sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))
    completion = len(answer.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion_id(answer: str) -> str:
    return "chatcmpl-stub-" + hashlib.sha256(answer.encode()).hexdigest()[:12]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


@dataclass(slots=True)
class _Answer:
    """One streamed answer: what to send and how its sending went (``/stub/streams``)."""

    cid: str
    model: str
    text: str
    usage: dict[str, int] | None
    delay: float
    gap: float | None
    sent: int = 0
    state: str = "streaming"

    def pieces(self) -> list[str]:
        """The content chunks: the whole answer, or its words with ``[stub:stream=S]``."""
        return [self.text] if self.gap is None else word_chunks(self.text)

    def record(self) -> dict[str, Any]:
        return {"text": self.text, "state": self.state, "chunks": self.sent}


async def _events(answer: _Answer) -> AsyncIterator[bytes]:
    """The SSE stream of one answer: role, content (after any delay; one chunk, or word by
    word), finish, optional usage, ``[DONE]``. Its state ends ``"disconnected"`` when the
    client leaves first (the server cancels the stream, or stops pulling it)."""
    cid, model = answer.cid, answer.model
    try:
        yield _chunk(cid, model, {"role": "assistant", "content": ""}, None)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        for i, piece in enumerate(answer.pieces()):
            if i and answer.gap:
                await asyncio.sleep(answer.gap)
            yield _chunk(cid, model, {"content": piece}, None)
            answer.sent += 1
        yield _chunk(cid, model, {}, "stop")
        if answer.usage is not None:
            tail = {"id": cid, "object": "chat.completion.chunk", "model": model, "choices": []}
            yield b"data: " + orjson.dumps({**tail, "usage": answer.usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"
        answer.state = "done"
    finally:
        if answer.state != "done":
            answer.state = "disconnected"


def create_stub_app(model_id: str = DEFAULT_MODEL_ID) -> Starlette:
    """The stub model as an ASGI app serving ``model_id``."""
    recorded: deque[Any] = deque(maxlen=MAX_RECORDED)
    streams: deque[_Answer] = deque(maxlen=MAX_RECORDED)

    async def models(request: Request) -> Response:
        data = [{"id": model_id, "object": "model", "created": 0, "owned_by": "stub"}]
        return _json({"object": "list", "data": data})

    async def completions(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _json({"error": {"message": "body is not JSON", "type": "invalid"}}, 400)
        recorded.append(body)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return _json({"error": {"message": "messages: required", "type": "invalid"}}, 400)
        answer = reply_text(messages)
        delay = requested_sleep(answer)
        model = str(body.get("model") or model_id)
        usage = _usage(messages, answer)
        cid = _completion_id(answer)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            tail = usage if isinstance(options, dict) and options.get("include_usage") else None
            streamed = _Answer(cid, model, answer, tail, delay, requested_stream(answer))
            streams.append(streamed)
            return StreamingResponse(_events(streamed), media_type="text/event-stream")
        if delay:
            await asyncio.sleep(delay)
        message = {"role": "assistant", "content": answer}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return _json(
            {
                "id": cid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        )

    async def requests(request: Request) -> Response:
        return JSONResponse(list(recorded))

    async def streamed(request: Request) -> Response:
        return JSONResponse([answer.record() for answer in streams])

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/stub/requests", requests, methods=["GET"]),
            Route("/stub/streams", streamed, methods=["GET"]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the stub model in the foreground on loopback until SIGINT/SIGTERM."""
    from ...server.hosting import serve_forever

    parser = argparse.ArgumentParser(description="A tiny OpenAI-compatible model server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default=DEFAULT_MODEL_ID)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group
        serve_forever(create_stub_app(args.model), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
