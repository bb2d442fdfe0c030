"""A tiny OpenAI-compatible model server that OpenClaw gateways can use offline.

It answers every chat completion deterministically with ``"echo: <caller's text>"``, so a
test (or ``openclaw orchestrator up --openclaw N``) can run real agent turns without a real
model. The gateway talks to it as a ``vllm``-style provider (``api: "openai-completions"``):

    GET  /v1/models              {"object": "list", "data": [{"id": "stub-1", ...}]}
    POST /v1/chat/completions    JSON, or server-sent events when ``"stream": true``
    GET  /stub/requests          the last bodies it received (newest last), for tests

Finding the caller's text: the gateway does not forward the caller's message as-is. It wraps
it with a timestamp prefix (``[Tue 2026-11-24 05:01 UTC] ``), may follow it with a
``Runtime: agent=main | session=...`` line, and appends its own internal context as the
*last* user message. :func:`caller_text` therefore takes the newest user message that
carries a timestamp prefix, strips the prefix and any trailing runtime lines, and falls
back to the newest user message when none does.

A caller's text containing ``[stub:sleep=S]`` makes the answer wait ``S`` seconds (at most
:data:`MAX_SLEEP`), so tests can catch a turn in flight.

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
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "DEFAULT_MODEL_ID",
    "MAX_SLEEP",
    "caller_text",
    "create_stub_app",
    "main",
    "reply_text",
    "requested_sleep",
]

DEFAULT_MODEL_ID = "stub-1"
MAX_RECORDED = 200
MAX_SLEEP = 30.0
_SLEEP = re.compile(r"\[stub:sleep=(\d+(?:\.\d+)?)\]")
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


def requested_sleep(text: str) -> float:
    """Seconds asked for by a ``[stub:sleep=S]`` directive in ``text`` (0 without one)."""
    match = _SLEEP.search(text)
    return min(float(match.group(1)), MAX_SLEEP) if match else 0.0


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


async def _events(
    cid: str, model: str, answer: str, usage: dict[str, int] | None
) -> AsyncIterator[bytes]:
    """The SSE stream of one answer: role, content, finish, optional usage, ``[DONE]``."""
    yield _chunk(cid, model, {"role": "assistant", "content": ""}, None)
    yield _chunk(cid, model, {"content": answer}, None)
    yield _chunk(cid, model, {}, "stop")
    if usage is not None:
        tail = {"id": cid, "object": "chat.completion.chunk", "model": model, "choices": []}
        yield b"data: " + orjson.dumps({**tail, "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def create_stub_app(model_id: str = DEFAULT_MODEL_ID) -> Starlette:
    """The stub model as an ASGI app serving ``model_id``."""
    recorded: deque[Any] = deque(maxlen=MAX_RECORDED)

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
        if delay:
            await asyncio.sleep(delay)
        model = str(body.get("model") or model_id)
        usage = _usage(messages, answer)
        cid = _completion_id(answer)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            tail = usage if isinstance(options, dict) and options.get("include_usage") else None
            return StreamingResponse(
                _events(cid, model, answer, tail), media_type="text/event-stream"
            )
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

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/stub/requests", requests, methods=["GET"]),
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
