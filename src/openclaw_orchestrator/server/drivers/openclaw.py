"""The driver for real OpenClaw gateways (``driver: "openclaw"``; see ``docs/openclaw.md``).

A payload becomes one gateway call, and the reply a documented result::

    {"message": "summarize X"}               POST /v1/chat/completions   an agent turn
    {"messages": [{"role", "content"}, ...]}   (a bare string is a message too, and any
                                               other JSON is sent as its JSON text)
        "agent": "main"        optional      model "openclaw/<agent>" (default "openclaw")
        "session_key": "k"     optional      x-openclaw-session-key (routes only)
      -> {"text", "usage", "session_key", "model", "raw"}
    {"tool": "sessions_list", "args": {}}    POST /tools/invoke          a tool call
        "action", "agent"      optional      the gateway's "action" and "agentId"
      -> {"tool", "result", "raw"}           result: the tool's "details", else its result

Replies map to the error tree by status::

    401              InstanceError(401)        "gateway rejected the token"; never retried, and
                                               the token is not resent (see below)
    429              InstanceError(429)        retry_after from Retry-After
    404 (tool)       InstanceRejectedError     tool not available over HTTP
    404 (turn)       InstanceError(404)        chat completions endpoint disabled on the gateway
    other 4xx        InstanceRejectedError     the gateway refused the payload
    5xx              InstanceError(status)     502/503/504 retried on another instance
    transport        map_client_errors()       refused: InstanceDownError, timeout, non-JSON

Health: ``GET /readyz`` (or the instance's ``health_path``), falling back to ``/healthz``
when it is not served, plus ``GET /v1/models`` with the token to prove the token works.
Ready is healthy; live but not ready, or ``eventLoop.degraded``, is degraded with a detail;
unreachable raises ``InstanceDownError``. A 401 (or a 429 for failed auth) means the
gateway is *misconfigured*, not down: the probe says so (degraded, detail
``"misconfigured: gateway rejected the token"``) and the driver remembers the rejection for
these credentials, so neither probes nor calls resend that token until the instance's
credentials change or ``rejection_backoff`` seconds pass (then one probe re-checks it).

Sessions: session ``S`` is the gateway session ``x-openclaw-session-key: orch-S`` (shown by
the gateway as ``agent:<agentId>:orch-S``). A restore replays the history as context of
one turn, the way the gateway folds earlier ``messages`` into a turn: its newest messages
within ``restore_bytes`` of text (a model's context is bounded anyway), saying how many
earlier ones were left out; the history streams through, so memory is bounded too. Closing
deletes the gateway session with its ``sessions`` tool (its transcript is archived by the
gateway).

Fencing: the session calls accept a :class:`~.base.Fence` (instance protocol v1.2) and send
nothing of it. A gateway has no epoch or message position to check, so it cannot refuse a
stale sender or recognise a redelivered message; what protects a gateway session is the
orchestrator's own side, its session lease and conditional writes of the history.

Streaming: given ``on_delta``, an agent turn asks for ``"stream": true`` (with
``stream_options.include_usage``) and relays each content delta as ``{"text": "..."}``, awaited
in order, then returns the very result the JSON call returns: :class:`ChatStream` folds the
chunks back into a ``chat.completion``. A ``data: {"error": ...}`` event mid-stream maps like
a JSON error reply of the status :data:`STREAM_ERROR_STATUS` gives its type; a stream that
ends without ``data: [DONE]`` is ``InstanceProtocolError``. Tool calls do not stream.

Loop guard: every agent turn and tool call (a restore's turn too) carries
``X-Orchestrator-Hops``, one more than the call being served came with; the gateway does not
pass it on by itself (its MCP client's headers are static), so every such delivery is also
held in the :data:`~..delegation.LEDGER` while it is in flight (streamed or not; until it
returns, fails or is cancelled): a call back from the gateway that names it in
``X-Orchestrator-Caller`` counts as that delivery's hops (``docs/openclaw.md``, "Delegation
loops").

Cancel: a call whose task is cancelled closes its connection (never pooled). The gateway
cancels an agent run whose HTTP client disconnects, streamed or not; it offers no other
cancel over HTTP (``docs/openclaw.md``, "Streaming and cancel").

Every reply, streamed or not, is read up to the instance's ``max_reply_bytes`` (else
``instances.max_reply_bytes``); past it the connection is dropped: ``reply_too_large``.

The token goes into the ``Authorization`` header and nowhere else: no message, log or repr.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ...errors import (
    InstanceError,
    InstanceProtocolError,
    InstanceRejectedError,
)
from ...models import InstanceSpec
from ...sdk.closing import AsyncClosesOnExit
from ...settings import DEFAULT_MAX_REPLY_BYTES
from ..delegation import HOPS_HEADER, LEDGER, outgoing_hops
from ..observability.tracing import TRACEPARENT, TRACESTATE, outgoing_trace
from .base import (
    REQUEST_ID_HEADER,
    Delta,
    DeltaError,
    Fence,
    History,
    ProbeResult,
    SseDecoder,
    error_fields,
    exchanges,
    map_client_errors,
    read_reply,
    reply_too_large,
    request_url,
)
from .rejected_tokens import DEFAULT_REJECTION_BACKOFF, MISCONFIGURED, RejectedTokens
from .worker import parse_retry_after

__all__ = [
    "CHAT_PATH",
    "DEFAULT_HEALTH_PATH",
    "DEFAULT_REJECTION_BACKOFF",
    "DEFAULT_RESTORE_BYTES",
    "LIVE_PATH",
    "MISCONFIGURED",
    "MODELS_PATH",
    "RESERVED_SESSION_PREFIXES",
    "RESTORE_NOTE",
    "RESTORE_NOTE_TRIMMED",
    "SESSION_KEY_HEADER",
    "SESSION_KEY_PREFIX",
    "STREAM_ERROR_STATUS",
    "TOOLS_PATH",
    "ChatStream",
    "OpenClawDriver",
    "ToolCall",
    "Turn",
    "chunk_text",
    "history_messages",
    "latest_messages",
    "message_text",
    "parse_payload",
    "readiness",
    "session_key",
]

CHAT_PATH = "/v1/chat/completions"
TOOLS_PATH = "/tools/invoke"
MODELS_PATH = "/v1/models"
DEFAULT_HEALTH_PATH = "/readyz"
LIVE_PATH = "/healthz"
SESSION_KEY_HEADER = "x-openclaw-session-key"
SESSION_KEY_PREFIX = "orch-"
RESERVED_SESSION_PREFIXES = ("subagent:", "cron:", "acp:")
RESTORE_NOTE = (
    "[orchestrator] This conversation was moved to this gateway from another instance; "
    "the messages above are its history so far. Reply with OK."
)
RESTORE_NOTE_TRIMMED = (
    "[orchestrator] This conversation was moved to this gateway from another instance; "
    "the messages above are the latest of its history ({left_out} earlier messages were "
    "left out). Reply with OK."
)
DEFAULT_RESTORE_BYTES = 256 * 1024
"""Text of the history a restore replays, newest first; the rest is left out."""

STREAM_ERROR_STATUS = {
    "invalid_request_error": 400,
    "insufficient_quota": 402,
    "permission_error": 403,
    "rate_limit_error": 429,
    "authentication_error": 502,  # the gateway's model provider refused it, not our token
}
"""The HTTP status a mid-stream ``{"error": {"type"}}`` stands for (the gateway's
``resolveOpenAiCompatError`` types); any other type (``api_error``) is 500."""
_EVENT_STREAM = "text/event-stream"
_DONE = b"[DONE]"

_BASE_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_STREAM_HEADERS = {"Accept": _EVENT_STREAM}
_TURN_OPTIONS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "user",
)
_PAYLOAD_KEYS = frozenset({"message", "messages", "tool"})
_AGENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def session_key(session_id: str) -> str:
    """The gateway session key of orchestrator session ``session_id``: ``orch-<id>``."""
    return f"{SESSION_KEY_PREFIX}{session_id}"


# -- payload -> request ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    """An agent turn: ``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]]
    model: str = "openclaw"
    session_key: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def body(self, *, stream: bool = False) -> dict[str, Any]:
        """The chat completion request: one JSON reply, or server-sent chunks ending in a
        usage chunk (so a streamed turn's result has the usage a JSON one has)."""
        body = {**self.options, "model": self.model, "messages": self.messages, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool invocation: ``POST /tools/invoke``."""

    tool: str
    args: dict[str, Any]
    action: str | None = None
    agent: str | None = None
    session_key: str | None = None

    def body(self) -> dict[str, Any]:
        """The ``/tools/invoke`` request."""
        body: dict[str, Any] = {"tool": self.tool, "args": self.args}
        optional = {"action": self.action, "agentId": self.agent, "sessionKey": self.session_key}
        body.update({k: v for k, v in optional.items() if v is not None})
        return body


def _as_text(value: Any) -> str:
    """A string as is; any other JSON value as its (key-sorted) JSON text."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _delivery_headers(request_id: str) -> dict[str, str]:
    """A delivery's headers: its request id and ``X-Orchestrator-Hops``, one more than the
    call being served came with (the loop guard, :mod:`..delegation`)."""
    return {REQUEST_ID_HEADER: request_id, HOPS_HEADER: str(outgoing_hops())}


def _reject(instance: str, field_name: str, problem: str) -> InstanceRejectedError:
    return InstanceRejectedError(
        f"{instance}: {field_name}: {problem}", instance=instance, field=field_name
    )


def _optional_str(payload: Mapping[str, Any], key: str, instance: str) -> str | None:
    value = payload.get(key)
    if value is not None and not (isinstance(value, str) and value):
        raise _reject(instance, f"payload.{key}", "must be a non-empty string")
    return value


def _agent(payload: Mapping[str, Any], instance: str) -> str | None:
    agent = _optional_str(payload, "agent", instance)
    if agent is not None and not _AGENT_RE.match(agent):
        raise _reject(instance, "payload.agent", f"{agent!r} is not an agent id")
    return agent


def _checked_key(key: str | None, instance: str) -> str | None:
    if key is not None and key.startswith(RESERVED_SESSION_PREFIXES):
        reserved = ", ".join(RESERVED_SESSION_PREFIXES)
        raise _reject(instance, "payload.session_key", f"reserved prefix (one of {reserved})")
    return key


def _messages(payload: Mapping[str, Any], instance: str) -> list[dict[str, Any]]:
    if "messages" in payload:
        messages = payload["messages"]
        valid = isinstance(messages, list) and messages
        if not valid or not all(_is_chat_message(m) for m in messages):
            raise _reject(
                instance, "payload.messages", "must be a non-empty list of {role, content}"
            )
        return list(messages)
    message = payload.get("message")
    if not isinstance(message, str) or not message:
        raise _reject(instance, "payload.message", "must be a non-empty string")
    return [{"role": "user", "content": message}]


def _is_chat_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("role"), str)
        and isinstance(message.get("content"), str | list)
    )


def _tool_call(payload: Mapping[str, Any], instance: str, key: str | None) -> ToolCall:
    tool = _optional_str(payload, "tool", instance)
    if tool is None:
        raise _reject(instance, "payload.tool", "must be a non-empty string")
    args = payload.get("args", {})
    if not isinstance(args, dict):
        raise _reject(instance, "payload.args", "must be an object")
    return ToolCall(
        tool=tool,
        args=args,
        action=_optional_str(payload, "action", instance),
        agent=_agent(payload, instance),
        session_key=key,
    )


def parse_payload(payload: Any, *, instance: str, session: str | None = None) -> Turn | ToolCall:
    """The gateway call for ``payload`` (module docstring); ``session`` is the gateway
    session key a session message runs in. InstanceRejectedError names what is wrong."""
    if not isinstance(payload, dict) or not payload.keys() & _PAYLOAD_KEYS:
        payload = {"message": _as_text(payload)}
    if session is not None and "session_key" in payload:
        raise _reject(instance, "payload.session_key", "set by the orchestrator in a session")
    key = session or _checked_key(_optional_str(payload, "session_key", instance), instance)
    if "tool" in payload:
        return _tool_call(payload, instance, key)
    agent = _agent(payload, instance)
    options = {k: payload[k] for k in _TURN_OPTIONS if k in payload}
    model = "openclaw" if agent is None else f"openclaw/{agent}"
    return Turn(_messages(payload, instance), model, key, options)


# -- reply -> result -----------------------------------------------------------------------


def message_text(content: Any) -> str:
    """The text of a message ``content``: a string, or the text parts of a part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(t for t in texts if isinstance(t, str))
    return ""


def _turn_result(name: str, reply: Any, key: str | None) -> dict[str, Any]:
    choices = reply.get("choices") if isinstance(reply, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        raise InstanceProtocolError(
            f"{name}: chat completion has no choices[0].message", instance=name
        )
    return {
        "text": message_text(message.get("content")),
        "usage": reply.get("usage"),
        "session_key": key,
        "model": reply.get("model"),
        "raw": reply,
    }


def _tool_result(name: str, tool: str, reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict) or reply.get("ok") is not True or "result" not in reply:
        raise InstanceProtocolError(f"{name}: tool reply has no 'ok' result", instance=name)
    result = reply["result"]
    if isinstance(result, dict) and "details" in result:
        result = result["details"]
    return {"tool": tool, "result": result, "raw": reply}


def chunk_text(chunk: Mapping[str, Any]) -> str:
    """The text a ``chat.completion.chunk`` adds: its first choice's ``delta.content``."""
    choices = chunk.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    delta = first.get("delta") if isinstance(first, dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


class ChatStream:
    """A streamed chat completion folded back into the ``chat.completion`` the JSON call
    returns: each ``data:`` event in (:meth:`take`, which gives the text it adds), the
    whole reply out (:meth:`reply`) once ``[DONE]`` came."""

    __slots__ = ("_finish", "_head", "_instance", "_parts", "_usage", "done")

    def __init__(self, instance: str) -> None:
        self._instance = instance
        self._head: dict[str, Any] = {}
        self._parts: list[str] = []
        self._finish: Any = None
        self._usage: Any = None
        self.done = False

    def take(self, data: bytes) -> str:
        """One event's data: the text it adds (``""`` for none). An ``{"error": ...}`` event
        raises the error its type maps to; anything but a JSON object or ``[DONE]`` is an
        InstanceProtocolError."""
        if data == _DONE:
            self.done = True
            return ""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            raise self._broken("an event that is not a JSON object")
        if "error" in chunk:
            raise _stream_error(self._instance, chunk["error"], data)
        for key in ("id", "created", "model"):
            self._head.setdefault(key, chunk.get(key))
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            self._finish = choices[0].get("finish_reason") or self._finish
        text = chunk_text(chunk)
        if text:
            self._parts.append(text)
        return text

    def reply(self) -> dict[str, Any]:
        """The ``chat.completion`` the chunks make; InstanceProtocolError before ``[DONE]``."""
        if not self.done:
            raise self._broken("the stream ended without data: [DONE]")
        if not self._head:
            raise self._broken("no chat completion chunk came before [DONE]")
        message = {"role": "assistant", "content": "".join(self._parts)}
        choice = {"index": 0, "message": message, "finish_reason": self._finish}
        head = self._head
        return {
            "id": head["id"],
            "object": "chat.completion",
            "created": head["created"],
            "model": head["model"],
            "choices": [choice],
            "usage": self._usage,
        }

    def _broken(self, problem: str) -> InstanceProtocolError:
        return InstanceProtocolError(
            f"{self._instance}: broken chat completion stream: {problem}", instance=self._instance
        )


def _stream_error(name: str, error: Any, raw: bytes) -> InstanceError:
    """The error a mid-stream ``{"error": {...}}`` event stands for, mapped as a JSON error
    reply of its type's status would be (:data:`STREAM_ERROR_STATUS`)."""
    kind = error.get("type") if isinstance(error, dict) else None
    status = STREAM_ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500
    return _reply_error(name, status, raw, None, path=CHAT_PATH)


def _reply_error(
    name: str, status: int, raw: bytes, retry_after: str | None, *, path: str
) -> InstanceError:
    """The error for a non-2xx gateway reply (module docstring)."""
    kind, message = error_fields(raw, "type")
    details = {"upstream_type": kind} if kind else None
    text = f"{name}: {message or f'HTTP {status}'}"
    if status == 401:
        return InstanceError(
            f"{name}: gateway rejected the token (HTTP 401): check the instance's credentials",
            instance=name,
            upstream_status=401,
        )
    if status == 429 or 500 <= status < 600:
        return InstanceError(
            text,
            instance=name,
            upstream_status=status,
            retry_after=parse_retry_after(retry_after),
            details=details,
        )
    if status == 404 and path == CHAT_PATH:
        return InstanceError(
            f"{name}: the gateway does not serve {CHAT_PATH}: enable "
            "gateway.http.endpoints.chatCompletions in its config",
            instance=name,
            upstream_status=404,
        )
    if 400 <= status < 500:
        return InstanceRejectedError(text, instance=name, upstream_status=status, details=details)
    return InstanceProtocolError(
        f"{name}: unexpected HTTP {status}", instance=name, upstream_status=status
    )


async def _relay(on_delta: Delta, delta: Any) -> None:
    """Await ``on_delta(delta)``; its failure is the caller's, carried as a DeltaError
    through the transport's error translation."""
    try:
        await on_delta(delta)
    except Exception as exc:
        raise DeltaError(exc) from exc


# -- health --------------------------------------------------------------------------------


def readiness(status: int, body: Any) -> tuple[bool, str | None] | None:
    """``(degraded, detail)`` from a ``/readyz`` or ``/healthz`` reply; None when the reply
    says nothing about readiness (the caller falls back to ``/healthz``)."""
    if not isinstance(body, dict):
        return None
    if "ready" in body:
        if body["ready"] is not True:
            failing = body.get("failing") or []
            names = ", ".join(str(f) for f in failing) if isinstance(failing, list) else ""
            return True, f"live but not ready: failing {names or 'checks'}"
        loop = body.get("eventLoop")
        if isinstance(loop, dict) and loop.get("degraded") is True:
            reasons = loop.get("reasons") or []
            why = ", ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""
            return True, f"event loop degraded: {why or 'unspecified'}"
        return False, None
    if status == 200 and body.get("ok") is True:  # /healthz: live
        return False, None
    return None


# -- history -------------------------------------------------------------------------------


def _user_text(payload: Any) -> str | None:
    """The user side of one history entry; None for tool calls (not conversation)."""
    if not isinstance(payload, dict) or not payload.keys() & _PAYLOAD_KEYS:
        return _as_text(payload)
    if "tool" in payload:
        return None
    if "message" in payload:
        return _as_text(payload["message"])
    messages = payload["messages"]
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        return message_text(users[-1].get("content")) if users else _as_text(messages)
    return _as_text(messages)


def _exchange_messages(payload: Any, result: Any) -> list[dict[str, str]]:
    """The user and assistant messages of one history pair; none for a tool call."""
    user = _user_text(payload)
    if user is None:
        return []
    reply = result.get("text") if isinstance(result, dict) else None
    content = reply if isinstance(reply, str) else _as_text(result)
    return [{"role": "user", "content": user}, {"role": "assistant", "content": content}]


def history_messages(history: Sequence[tuple[Any, Any]]) -> list[dict[str, str]]:
    """Chat messages replaying ``(payload, result)`` pairs: the user's text, then the reply's
    ``text`` (any other payload or result as JSON); tool calls are left out."""
    return [m for payload, result in history for m in _exchange_messages(payload, result)]


async def latest_messages(history: History, budget: int) -> tuple[list[dict[str, str]], int]:
    """:func:`history_messages` of the newest pairs whose text fits ``budget`` characters
    (the newest pair always), and how many messages were left out before them. Reads
    ``history`` once, holding no more than the window."""
    window: deque[list[dict[str, str]]] = deque()
    size = left_out = 0
    async for payload, result in exchanges(history):
        pair = _exchange_messages(payload, result)
        if not pair:
            continue
        window.append(pair)
        size += sum(len(m["content"]) for m in pair)
        while size > budget and len(window) > 1:
            dropped = window.popleft()
            size -= sum(len(m["content"]) for m in dropped)
            left_out += len(dropped)
    return [m for pair in window for m in pair], left_out


# -- the driver ----------------------------------------------------------------------------


class OpenClawDriver(AsyncClosesOnExit):
    """Talks to OpenClaw gateways over a shared ``aiohttp.ClientSession`` it does not own.

    The session calls take a ``fence`` and cannot enforce it: gateways have no fencing
    (module docstring), so the orchestrator's lease and conditional writes protect them."""

    kind = "openclaw"
    fences_sessions = False  # gateways have no fencing (class docstring)

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        rejection_backoff: float = DEFAULT_REJECTION_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        restore_bytes: int = DEFAULT_RESTORE_BYTES,
    ) -> None:
        self._session = session
        self._max_reply_bytes = max_reply_bytes
        self._restore_bytes = restore_bytes
        self._rejected = RejectedTokens(rejection_backoff, clock)

    def __repr__(self) -> str:
        return f"<OpenClawDriver kind={self.kind} rejected_tokens={len(self._rejected)}>"

    # -- rejected tokens -----------------------------------------------------------------

    def is_rejected(self, instance: InstanceSpec) -> bool:
        """Whether ``instance``'s current token was refused and is not to be resent yet."""
        return self._rejected.detail(instance) is not None

    # -- HTTP ------------------------------------------------------------------------------

    def _reply_limit(self, instance: InstanceSpec) -> int:
        """The most bytes of a reply read from ``instance``: its own limit, else ours."""
        return instance.max_reply_bytes or self._max_reply_bytes

    @staticmethod
    def _headers(
        instance: InstanceSpec, extra: Mapping[str, str], *, auth: bool = True
    ) -> dict[str, str]:
        headers = {**_BASE_HEADERS, **extra}
        if auth and instance.credentials is not None:
            headers["Authorization"] = f"Bearer {instance.credentials.get_secret_value()}"
        trace = outgoing_trace()  # W3C trace context of the attempt's span (tracing on)
        if trace is not None:
            headers[TRACEPARENT] = trace[0]
            if trace[1] is not None:
                headers[TRACESTATE] = trace[1]
        return headers

    async def _get(
        self, instance: InstanceSpec, path: str, *, timeout: float, auth: bool
    ) -> tuple[int, Any, str | None]:
        """``GET path``: (status, parsed JSON body or None, Retry-After)."""
        with map_client_errors(instance.name):
            async with self._session.get(
                request_url(instance, path),
                headers=self._headers(instance, {}, auth=auth),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                raw = await read_reply(resp, instance.name, self._reply_limit(instance))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        return resp.status, body, resp.headers.get("Retry-After")

    async def _post(
        self,
        instance: InstanceSpec,
        path: str,
        body: Mapping[str, Any],
        *,
        timeout: float,
        extra: Mapping[str, str],
    ) -> Any:
        """``POST path`` with the token; the parsed 2xx body, else the mapped error."""
        if self.is_rejected(instance):
            raise RejectedTokens.refusal(instance)
        with map_client_errors(instance.name):
            async with self._session.post(
                request_url(instance, path),
                data=orjson.dumps(body),
                headers=self._headers(instance, extra),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                try:
                    raw = await read_reply(resp, instance.name, self._reply_limit(instance))
                except asyncio.CancelledError:
                    resp.close()  # abandoned: the gateway cancels the run when we hang up
                    raise
                self._check_status(instance, resp, raw, path)
            return orjson.loads(raw)

    def _check_status(
        self, instance: InstanceSpec, resp: aiohttp.ClientResponse, raw: bytes, path: str
    ) -> None:
        """Raise the mapped error for a non-2xx reply (remembering a refused token)."""
        if not 200 <= resp.status < 300:
            retry_after = resp.headers.get("Retry-After")
            error = _reply_error(instance.name, resp.status, raw, retry_after, path=path)
            if resp.status == 401:
                self._rejected.remember(instance, error)
            raise error

    async def _post_streamed(
        self,
        instance: InstanceSpec,
        turn: Turn,
        *,
        timeout: float,
        extra: Mapping[str, str],
        on_delta: Delta,
    ) -> Any:
        """:meth:`_post` of a streamed turn: the ``chat.completion`` its chunks make, each
        text delta handed to ``on_delta`` first. A reply that is not an event stream is
        read as :meth:`_post` reads it (no deltas). A stream that did not end cleanly
        (cancelled, broken, too long, ``on_delta`` failed) closes the connection, which
        cancels the gateway's run."""
        if self.is_rejected(instance):
            raise RejectedTokens.refusal(instance)
        with map_client_errors(instance.name):
            async with self._session.post(
                request_url(instance, CHAT_PATH),
                data=orjson.dumps(turn.body(stream=True)),
                headers=self._headers(instance, {**extra, **_STREAM_HEADERS}),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                try:
                    if 200 <= resp.status < 300 and resp.content_type == _EVENT_STREAM:
                        return await self._read_chat_stream(instance, resp, on_delta)
                    raw = await read_reply(resp, instance.name, self._reply_limit(instance))
                except BaseException:
                    resp.close()
                    raise
                self._check_status(instance, resp, raw, CHAT_PATH)
            return orjson.loads(raw)

    async def _read_chat_stream(
        self, instance: InstanceSpec, resp: aiohttp.ClientResponse, on_delta: Delta
    ) -> dict[str, Any]:
        """Read a chat completion's events (at most the reply limit in bytes), relaying
        each text delta as ``{"text": ...}``; the reply once ``[DONE]`` came."""
        limit, total = self._reply_limit(instance), 0
        decoder, stream = SseDecoder(), ChatStream(instance.name)
        async for data in resp.content.iter_any():
            total += len(data)
            if total > limit:
                raise reply_too_large(instance.name, limit)
            for event in decoder.feed(data):
                text = stream.take(event.data)
                if text:
                    await _relay(on_delta, {"text": text})
                if stream.done:
                    return stream.reply()
        return stream.reply()

    async def _call(
        self,
        instance: InstanceSpec,
        call: Turn | ToolCall,
        *,
        timeout: float,
        request_id: str | None,
        on_delta: Delta | None = None,
    ) -> dict[str, Any]:
        """Run one parsed call and shape its result (a turn streamed to ``on_delta``); a
        delivery (one with a request id) is in the ledger while it runs."""
        if request_id is None:
            return await self._run(instance, call, timeout=timeout, extra={}, on_delta=on_delta)
        with LEDGER.delivering(instance.name, outgoing_hops()):
            extra = _delivery_headers(request_id)
            return await self._run(instance, call, timeout=timeout, extra=extra, on_delta=on_delta)

    async def _run(
        self,
        instance: InstanceSpec,
        call: Turn | ToolCall,
        *,
        timeout: float,
        extra: dict[str, str],
        on_delta: Delta | None,
    ) -> dict[str, Any]:
        """The call itself: a tool call, a JSON turn, or a turn streamed to ``on_delta``."""
        if isinstance(call, ToolCall):
            reply = await self._post(
                instance, TOOLS_PATH, call.body(), timeout=timeout, extra=extra
            )
            return _tool_result(instance.name, call.tool, reply)
        if call.session_key is not None:
            extra[SESSION_KEY_HEADER] = call.session_key
        if on_delta is None:
            reply = await self._post(instance, CHAT_PATH, call.body(), timeout=timeout, extra=extra)
        else:
            try:
                reply = await self._post_streamed(
                    instance, call, timeout=timeout, extra=extra, on_delta=on_delta
                )
            except DeltaError as exc:
                raise exc.error from None
        return _turn_result(instance.name, reply, call.session_key)

    async def _tool(
        self, instance: InstanceSpec, tool: str, args: dict[str, Any], *, timeout: float
    ) -> Any:
        """A tool's ``result`` (its ``details`` when it has them)."""
        done = await self._call(instance, ToolCall(tool, args), timeout=timeout, request_id=None)
        return done["result"]

    # -- InstanceDriver --------------------------------------------------------------------

    async def invoke(
        self,
        instance: InstanceSpec,
        payload: Any,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
        request_id: str,
        on_delta: Delta | None = None,
    ) -> Any:
        """An agent turn or a tool call, by the payload's shape (module docstring); a turn's
        text streamed to ``on_delta`` as ``{"text": ...}`` deltas when given."""
        call = parse_payload(payload, instance=instance.name)
        return await self._call(
            instance, call, timeout=timeout, request_id=request_id, on_delta=on_delta
        )

    async def session_send(
        self,
        instance: InstanceSpec,
        session_id: str,
        payload: Any,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
        request_id: str,
        fence: Fence | None = None,  # accepted, not enforceable (class docstring)
        on_delta: Delta | None = None,
    ) -> Any:
        """Like :meth:`invoke`, inside the gateway session ``orch-<session_id>``."""
        key = session_key(session_id)
        call = parse_payload(payload, instance=instance.name, session=key)
        return await self._call(
            instance, call, timeout=timeout, request_id=request_id, on_delta=on_delta
        )

    async def session_restore(
        self,
        instance: InstanceSpec,
        session_id: str,
        history: History,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
        request_id: str,
        fence: Fence | None = None,  # accepted, not enforceable (class docstring)
    ) -> None:
        """Give the gateway the conversation: drop any old gateway session of this id, then
        one turn whose ``messages`` are the history (its newest ``restore_bytes`` of text)
        plus a note that it was moved here (the gateway folds them into the session as
        context; its reply is discarded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self.session_close(instance, session_id, timeout=timeout)
        messages, left_out = await latest_messages(history, self._restore_bytes)
        if not messages:
            return
        note = RESTORE_NOTE_TRIMMED.format(left_out=left_out) if left_out else RESTORE_NOTE
        messages.append({"role": "user", "content": note})
        turn = Turn(messages, session_key=session_key(session_id))
        left = max(deadline - loop.time(), 0.001)
        await self._call(instance, turn, timeout=left, request_id=request_id)

    async def session_close(
        self,
        instance: InstanceSpec,
        session_id: str,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
        fence: Fence | None = None,  # accepted, not enforceable (class docstring)
    ) -> None:
        """Delete the gateway session(s) ``agent:*:orch-<id>`` with the ``sessions`` tool; a
        session the gateway does not have is already closed."""
        key = session_key(session_id)
        listed = await self._tool(instance, "sessions_list", {"search": key}, timeout=timeout)
        rows = listed.get("sessions", []) if isinstance(listed, dict) else []
        for row in rows:
            full = row.get("key") if isinstance(row, dict) else None
            if not isinstance(full, str) or full.split(":", 2)[-1] != key:
                continue
            args = {"action": "delete", "sessionKey": full, "expectedSessionId": row["sessionId"]}
            await self._tool(instance, "sessions", args, timeout=timeout)

    async def gateway_history(
        self,
        instance: InstanceSpec,
        session_id: str,
        *,
        agent: str | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """The gateway's own transcript of session ``session_id`` (``sessions_history``):
        its messages, oldest first, as the gateway returns them."""
        key = session_key(session_id)
        if agent is not None:
            key = f"agent:{agent}:{key}"
        details = await self._tool(
            instance, "sessions_history", {"sessionKey": key}, timeout=timeout
        )
        messages = details.get("messages") if isinstance(details, dict) else None
        if not isinstance(messages, list):
            raise InstanceProtocolError(
                f"{instance.name}: sessions_history has no messages", instance=instance.name
            )
        return messages

    async def probe(
        self,
        instance: InstanceSpec,
        *,
        timeout: float,  # InstanceDriver's signature; sets ClientTimeout
    ) -> ProbeResult:
        """Readiness plus a token check, concurrently (module docstring)."""
        started = time.perf_counter()
        rejected = self._rejected.detail(instance)
        if rejected is not None:
            await self._live(instance, timeout=timeout)  # no token: liveness only
            return ProbeResult(time.perf_counter() - started, degraded=True, detail=rejected)
        (degraded, detail), token = await asyncio.gather(
            self._ready(instance, timeout=timeout), self._token_problem(instance, timeout=timeout)
        )
        if token is not None:
            degraded, detail = True, token
        return ProbeResult(time.perf_counter() - started, degraded=degraded, detail=detail)

    async def _ready(self, instance: InstanceSpec, *, timeout: float) -> tuple[bool, str | None]:
        path = instance.health_path or DEFAULT_HEALTH_PATH
        status, body, _ = await self._get(instance, path, timeout=timeout, auth=True)
        verdict = readiness(status, body)
        if verdict is not None:
            return verdict
        await self._live(instance, timeout=timeout)
        return True, f"live, but {path} answered HTTP {status}"

    async def _live(self, instance: InstanceSpec, *, timeout: float) -> None:
        """``GET /healthz`` (no token); InstanceError unless it says live."""
        status, body, _ = await self._get(instance, LIVE_PATH, timeout=timeout, auth=False)
        if readiness(status, body) != (False, None):
            raise InstanceError(
                f"{instance.name}: {LIVE_PATH} answered HTTP {status}",
                instance=instance.name,
                upstream_status=status,
            )

    async def _token_problem(self, instance: InstanceSpec, *, timeout: float) -> str | None:
        """None when ``GET /v1/models`` takes the token; else what is wrong (remembered for
        401/429, so the token is not resent)."""
        status, _, retry_after = await self._get(instance, MODELS_PATH, timeout=timeout, auth=True)
        if status in (401, 429):
            error = InstanceError(
                MISCONFIGURED,
                instance=instance.name,
                upstream_status=status,
                retry_after=parse_retry_after(retry_after),
            )
            return self._rejected.remember(instance, error)
        if status == 404:
            return f"the gateway does not serve {CHAT_PATH} (chatCompletions disabled)"
        return None

    async def aclose(self) -> None:
        """Nothing to release: the session belongs to the caller."""
