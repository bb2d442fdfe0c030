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

Directives that make the model call the orchestrator's MCP tools (OpenAI ``tool_calls``),
one step per request, reading each tool's result from the next request's messages:

    [stub:delegate=NAME] Q   sessions_spawn on NAME, then sessions_send of Q to that session;
                             answers "NAME answered: <the send's reply text>"
    [stub:route=NAME] Q      route of Q to NAME; answers "NAME answered: <reply text>"
    [stub:fanout=A,B] Q      fanout of Q over A and B; answers "fanout: A: <text> | B: <text>"
    [stub:send=ID] Q         sessions_send of Q to session ID; answers "ID answered: <text>"

Q is the caller's text without that directive (the first of these four in the text is the
one that counts, so a chain ``[stub:delegate=G2] [stub:delegate=G1] Q`` delegates on: G2's
model gets ``[stub:delegate=G1] Q``); a message sent is ``{"message": Q}``, and each call
asks for a deadline of :data:`TOOL_TIMEOUT`. A failed tool answers "<what> failed: <code>:
<message>" with our error code (or the gateway's own text).
The tools are the MCP server ``orchestrator``'s as the gateway names them
(``orchestrator__sessions_spawn``, :data:`MCP_SERVER`): called directly when the request's
``tools`` has them, else through the gateway's Tool Search wrapper ``tool_call`` (its
default: MCP tools stay out of ``tools``; ``{"id": "orchestrator__route", "args": {...}}``).

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
import json
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
    "MCP_SERVER",
    "TOOL_TIMEOUT",
    "ToolStep",
    "caller_text",
    "create_stub_app",
    "main",
    "next_move",
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


# -- tool calls: the orchestrator's MCP tools ---------------------------------------------

MCP_SERVER = "orchestrator"
"""The MCP server name whose tools the tool directives call (``<server>__<tool>``)."""
TOOL_TIMEOUT = 55.0
"""The deadline the model asks for on a route, fanout or send (seconds): a delegated turn
on a fresh gateway session takes a while, and this stays under the 60 s a gateway's MCP
client waits for a tool (``requestTimeoutMs`` as ``skill install`` writes it)."""
_TOOL_SEARCH_CALL = "tool_call"
_PLANS = re.compile(
    r"\[stub:(delegate|route|fanout|send)=([A-Za-z0-9][A-Za-z0-9_.:,-]{0,200})\]\s*"
)
_JSON = orjson.loads
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class ToolStep:
    """One tool call the model makes: the orchestrator tool's name and its arguments."""

    tool: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    kind: str
    target: str
    question: str


def _plan(text: str) -> _Plan | None:
    """The first tool directive in ``text`` and the text without it (the question)."""
    found = _PLANS.search(text)
    if found is None:
        return None
    question = (text[: found.start()] + text[found.end() :]).strip() or "hello"
    return _Plan(found.group(1), found.group(2), question)


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in ``text`` (at each ``{`` that starts one), outermost first, with
    the objects nested in it and those in its strings' text: a tool result reaches the
    model as our text block (a summary line, then the reply's JSON) inside the gateway's
    own JSON envelope (its ``tool_call`` wraps it once more, with a security notice)."""
    found: list[dict[str, Any]] = []
    start = text.find("{")
    while start != -1:
        try:
            value, end = _DECODER.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        _walk(value, found)
        start = text.find("{", end)
    return found


def _walk(value: Any, found: list[dict[str, Any]]) -> None:
    if isinstance(value, dict):
        found.append(value)
        for item in value.values():
            _walk(item, found)
    elif isinstance(value, list):
        for item in value:
            _walk(item, found)
    elif isinstance(value, str) and "{" in value:
        found.extend(_json_objects(value))


_SUCCESS_KEYS = ("session_id", "reply", "results", "attempts")
"""A spawn's, a send's, a fanout's and a route's reply: what tells ours from an envelope."""


def _outcome(text: str) -> dict[str, Any]:
    """A tool result as the reply it carries: the first (outermost) JSON object shaped like
    one of ours, a success (:data:`_SUCCESS_KEYS`) or our error body (``{"error": {"code",
    ...}}``); else the gateway's own error (an unknown tool, a paused server), as text."""
    for value in _json_objects(text):
        error = value.get("error")
        if any(k in value for k in _SUCCESS_KEYS) or (isinstance(error, dict) and "code" in error):
            return value
    return {"error": {"code": "gateway", "message": _gateway_error(text)}}


_UNTRUSTED = re.compile(
    r"<<<EXTERNAL_UNTRUSTED_CONTENT[^>]*>>>.*?\n---\n(.*?)<<<END_EXTERNAL", re.S
)


def _gateway_error(text: str) -> str:
    """The gateway's own error, on one line: its envelope's ``error`` text, without the
    security notice the gateway wraps tool output in."""
    for value in _json_objects(text):
        if isinstance(value.get("error"), str):
            text = value["error"]
            break
    inner = _UNTRUSTED.search(text)
    return " ".join((inner.group(1) if inner else text).split())[:300]


def _failure(outcome: dict[str, Any]) -> str | None:
    """``code: message`` of an error outcome; None for a success."""
    error = outcome.get("error")
    if not isinstance(error, dict) or "code" not in error:
        return None
    return f"{error.get('code')}: {error.get('message', '')}"


def _said(result: Any) -> str:
    """What an instance answered: an agent turn's text, else the result's JSON."""
    if isinstance(result, dict) and isinstance(result.get("text"), str):
        return str(result["text"])
    return orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode()


def _tool_of(call: Any) -> str | None:
    """The orchestrator tool an assistant's tool call called (direct or via ``tool_call``)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return None
    name = function.get("name")
    if name == _TOOL_SEARCH_CALL:
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
            name = _JSON(function.get("arguments") or "{}").get("id")
    prefix = f"{MCP_SERVER}__"
    return name[len(prefix) :] if isinstance(name, str) and name.startswith(prefix) else None


def _results_since_caller(messages: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    """(tool, outcome) of each orchestrator tool result after the caller's message."""
    start = _caller_index(messages)
    calls: dict[str, str] = {}
    done: list[tuple[str, dict[str, Any]]] = []
    for message in messages[start + 1 :]:
        if not isinstance(message, dict):
            continue
        for call in message.get("tool_calls") or []:
            tool = _tool_of(call)
            if tool is not None and isinstance(call.get("id"), str):
                calls[call["id"]] = tool
        if message.get("role") == "tool" and message.get("tool_call_id") in calls:
            text = _text_of(message.get("content"))
            done.append((calls[message["tool_call_id"]], _outcome(text)))
    return done


def _caller_index(messages: Sequence[Any]) -> int:
    """Where the caller's message is (as :func:`caller_text` finds it); -1 without one."""
    users = [i for i, m in enumerate(messages) if _is_user(m)]
    for i in reversed(users):
        if _STAMP.match(_text_of(messages[i].get("content")).strip()):
            return i
    return users[-1] if users else -1


def next_move(messages: Sequence[Any]) -> ToolStep | str | None:
    """What the model does next for a tool directive in the caller's text: the next tool
    call, or the final answer once the last result is in; None without a directive."""
    plan = _plan(caller_text(messages))
    if plan is None:
        return None
    done = _results_since_caller(messages)
    if plan.kind == "delegate":
        return _delegate(plan, done)
    tool, args, what = _single(plan)
    if not done:
        return ToolStep(tool, args)
    failed = _failure(done[-1][1])
    if failed is not None:
        return f"{what} failed: {failed}"
    return _answer(plan, done[-1][1])


def _single(plan: _Plan) -> tuple[str, dict[str, Any], str]:
    """The one tool call of a route, fanout or send directive, and what to call it."""
    payload, timeout = {"message": plan.question}, TOOL_TIMEOUT
    if plan.kind == "route":
        args = {"instances": [plan.target], "payload": payload, "timeout": timeout}
        return "route", args, f"route to {plan.target}"
    if plan.kind == "fanout":
        args = {"targets": plan.target, "payload": payload, "timeout": timeout}
        return "fanout", args, f"fanout over {plan.target}"
    args = {"sessionId": plan.target, "data": payload, "timeout": timeout}
    return "sessions_send", args, f"send to {plan.target}"


def _answer(plan: _Plan, outcome: dict[str, Any]) -> str:
    if plan.kind == "fanout":
        parts = [
            f"{e.get('instance')}: {_said(e.get('result')) if e.get('status') == 'ok' else e}"
            for e in outcome.get("results", [])
            if isinstance(e, dict)
        ]
        return "fanout: " + " | ".join(parts)
    if plan.kind == "route":
        return f"{outcome.get('instance')} answered: {_said(outcome.get('result'))}"
    return f"{plan.target} answered: {_said(outcome.get('reply'))}"


def _delegate(plan: _Plan, done: list[tuple[str, dict[str, Any]]]) -> ToolStep | str:
    """sessions_spawn on the target, then sessions_send of the question, then the answer."""
    if not done:
        return ToolStep("sessions_spawn", {"instance": plan.target})
    tool, outcome = done[-1]
    failed = _failure(outcome)
    if failed is not None:
        return f"delegation to {plan.target} failed: {failed}"
    if tool == "sessions_spawn":
        args = {
            "sessionId": outcome.get("session_id"),
            "data": {"message": plan.question},
            "timeout": TOOL_TIMEOUT,
        }
        return ToolStep("sessions_send", args)
    return f"{plan.target} answered: {_said(outcome.get('reply'))}"


def _tool_call(step: ToolStep, tools: Any, seq: int) -> dict[str, Any]:
    """The OpenAI ``tool_calls`` entry for ``step``: the tool itself when the request offers
    it, else the gateway's ``tool_call`` wrapper naming it."""
    name = f"{MCP_SERVER}__{step.tool}"
    offered = {t.get("function", {}).get("name") for t in tools or [] if isinstance(t, dict)}
    args: dict[str, Any] = step.args
    if name not in offered and _TOOL_SEARCH_CALL in offered:
        name, args = _TOOL_SEARCH_CALL, {"id": name, "args": step.args}
    arguments = orjson.dumps(args).decode()
    digest = hashlib.sha256(f"{seq}:{name}:{arguments}".encode()).hexdigest()[:16]
    return {
        "id": f"call_{digest}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


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


def _completion(
    cid: str, model: str, message: dict[str, Any], finish: str, usage: dict[str, int]
) -> Response:
    """A non-streamed ``chat.completion`` with one choice."""
    choice = {"index": 0, "message": message, "finish_reason": finish}
    body = {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }
    return _json(body)


async def _tool_events(
    cid: str, model: str, call: dict[str, Any], usage: dict[str, int] | None
) -> AsyncIterator[bytes]:
    """A streamed tool call: role, the whole call in one delta, ``tool_calls`` finish,
    optional usage, ``[DONE]``."""
    yield _chunk(cid, model, {"role": "assistant", "content": ""}, None)
    yield _chunk(cid, model, {"tool_calls": [{"index": 0, **call}]}, None)
    yield _chunk(cid, model, {}, "tool_calls")
    if usage is not None:
        tail = {"id": cid, "object": "chat.completion.chunk", "model": model, "choices": []}
        yield b"data: " + orjson.dumps({**tail, "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def _usage_tail(body: dict[str, Any], usage: dict[str, int]) -> dict[str, int] | None:
    """The usage a streamed answer ends with, when ``stream_options.include_usage`` asks."""
    options = body.get("stream_options") or {}
    return usage if isinstance(options, dict) and options.get("include_usage") else None


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
        move = next_move(messages)
        model = str(body.get("model") or model_id)
        if isinstance(move, ToolStep):
            return _tool_reply(body, model, _tool_call(move, body.get("tools"), len(messages)))
        answer = reply_text(messages) if move is None else move
        delay = requested_sleep(answer)
        usage = _usage(messages, answer)
        cid = _completion_id(answer)
        if body.get("stream"):
            tail = _usage_tail(body, usage)
            streamed = _Answer(cid, model, answer, tail, delay, requested_stream(answer))
            streams.append(streamed)
            return StreamingResponse(_events(streamed), media_type="text/event-stream")
        if delay:
            await asyncio.sleep(delay)
        return _completion(cid, model, {"role": "assistant", "content": answer}, "stop", usage)

    def _tool_reply(body: dict[str, Any], model: str, call: dict[str, Any]) -> Response:
        """The model's tool call, streamed or not as the request asks."""
        messages = body["messages"]
        usage = _usage(messages, call["function"]["arguments"])
        cid = _completion_id(call["id"])
        if body.get("stream"):
            events = _tool_events(cid, model, call, _usage_tail(body, usage))
            return StreamingResponse(events, media_type="text/event-stream")
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return _completion(cid, model, message, "tool_calls", usage)

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
