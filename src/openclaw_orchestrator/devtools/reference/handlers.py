"""What the reference instance runs: user handlers, how they are called, and the built-ins.

A handler is any callable, sync or async, taking ``payload`` or ``(payload, context)``.
:class:`Invoker` inspects it once, at startup, so the request path only branches on two
booleans. Sync handlers run in a worker thread so a slow one never blocks the event loop.

An async handler may stream its output (protocol v1.3): when the caller asked for a stream,
``context.emit`` is set and each ``await context.emit(value)`` sends one delta before the
result (the built-in :func:`stream` does). A handler that never emits answers plain JSON.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from ...server.logs import get_logger
from .sessions import SessionContext

__all__ = [
    "BUILTIN_HANDLERS",
    "DemoHandler",
    "Emit",
    "Handler",
    "HandlerContext",
    "HandlerError",
    "Invoker",
    "echo",
    "resolve_handler",
    "stream",
]

_log = get_logger("reference.handler")

Handler = Callable[..., Any]
"""``f(payload)`` or ``f(payload, context)``; plain or ``async``; returns any JSON value."""
Emit = Callable[[Any], Awaitable[None]]
"""Sends one delta (any JSON value) of a streamed reply, in order."""
MAX_STREAM_CHUNKS = 10_000
MAX_STREAM_DELAY_MS = 60_000
_WORD_START = re.compile(r"(?<=\s)(?=\S)")


class HandlerError(Exception):
    """Raised by a handler to answer with its own status and error code instead of a 500.

    ``retry_after`` (seconds) becomes a ``Retry-After`` header, useful with 429 and 503.
    """

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"HandlerError status must be 4xx or 5xx, got {status}")
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"<HandlerError {self.status} {self.code}: {self.message}>"


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """Facts about the request a two-parameter handler receives.

    ``deadline`` is a ``time.monotonic()`` instant (``None`` when the caller sent no budget);
    ``session`` is the conversation so far for a session message, ``None`` for a plain task;
    ``emit`` is set when the caller asked for a streamed reply (``Accept:
    text/event-stream``): ``await context.emit(value)`` sends one delta before the result.
    """

    instance: str
    request_id: str
    deadline: float | None = None
    session: SessionContext | None = None
    emit: Emit | None = None

    def time_left(self) -> float | None:
        """Seconds until the caller gives up, never negative; ``None`` without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


async def echo(payload: Any, context: HandlerContext) -> Any:
    """Built-in ``echo``: the payload back, tagged with the instance that saw it.

    In a session it adds ``{"session": {"id", "seen"}}``, ``seen`` counting this message.
    """
    reply: dict[str, Any] = {"instance": context.instance, "payload": payload}
    if context.session is not None:
        reply["session"] = {"id": context.session.id, "seen": context.session.seen + 1}
    return reply


async def stream(payload: Any, context: HandlerContext) -> Any:
    """Built-in ``stream``: ``{"text": str, "chunks": n, "delay_ms": d, "stamp": b}`` (all
    but ``text`` optional) returns ``{"text": text}``; asked for a stream, it first emits
    the text's pieces as ``{"text": piece}`` deltas, word by word (a word keeps the blanks
    after it) or in ``chunks`` nearly equal pieces. Piece ``k`` is due ``k * delay_ms``
    after the first, streamed or not, so it is also a slow handler to cancel. With
    ``"stamp": true`` each delta also has ``"t"``, the ``time.time()`` it was emitted at: a
    reader on the same machine gets each piece's latency from it (``make bench``'s
    streaming relay).

    Each piece is due on its stream's own schedule, not ``delay_ms`` after the previous
    emit: the event loop's timers tick in milliseconds, so two streams whose pieces went
    out in the same tick would be due in the same tick again, and again; over a stream's
    length an instance's streams merged into bursts, which independent model outputs
    never make."""
    text, chunks, delay = _stream_request(payload)
    stamp = _stamp_request(payload)
    start = anyio.current_time()
    for index, piece in enumerate(_pieces(text, chunks)):
        if index and delay:
            await anyio.sleep_until(start + index * delay)
        if context.emit is not None:
            await context.emit({"text": piece, "t": time.time()} if stamp else {"text": piece})
    return {"text": text}


def _stamp_request(payload: dict[str, Any]) -> bool:
    """The optional ``stamp`` of a ``stream`` payload; a 400 naming it unless a boolean."""
    stamp = payload.get("stamp", False)
    if type(stamp) is not bool:
        raise HandlerError(400, "invalid_request", "stamp: expected true or false")
    return stamp


def _stream_request(payload: Any) -> tuple[str, int | None, float]:
    """``(text, chunks, delay in seconds)`` of a ``stream`` payload; a 400 naming the field."""
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise HandlerError(400, "invalid_request", "text: expected a string")
    chunks, delay_ms = payload.get("chunks"), payload.get("delay_ms", 0)
    if chunks is not None and (type(chunks) is not int or not 1 <= chunks <= MAX_STREAM_CHUNKS):
        message = f"chunks: expected an integer from 1 to {MAX_STREAM_CHUNKS}"
        raise HandlerError(400, "invalid_request", message)
    if (
        type(delay_ms) not in (int, float)
        or not math.isfinite(delay_ms)
        or not 0 <= delay_ms <= MAX_STREAM_DELAY_MS
    ):
        message = f"delay_ms: expected a number from 0 to {MAX_STREAM_DELAY_MS}"
        raise HandlerError(400, "invalid_request", message)
    return payload["text"], chunks, delay_ms / 1000


def _pieces(text: str, chunks: int | None) -> list[str]:
    """``text`` cut word by word, or into ``chunks`` nearly equal pieces; they join to it."""
    if chunks is None:
        return [piece for piece in _WORD_START.split(text) if piece]
    size, extra = divmod(len(text), min(chunks, len(text)) or 1)
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = start + size + (1 if len(pieces) < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _builtin_search(shard: str | None) -> Handler:
    from .search import SearchHandler, parse_shard

    return SearchHandler(parse_shard(shard) if shard else None)


class DemoHandler:
    """Built-in ``demo`` (what ``openclaw orchestrator up`` runs): ``search`` when the payload
    has a ``query``, ``echo`` otherwise, so one cluster shows both routing and distributed
    search."""

    __slots__ = ("_search",)

    def __init__(self, shard: str | None = None) -> None:
        self._search = _builtin_search(shard)

    async def __call__(self, payload: Any, context: HandlerContext) -> Any:
        """Dispatch on the payload's shape."""
        if isinstance(payload, dict) and "query" in payload:
            return await self._search(payload, context)
        return await echo(payload, context)


BUILTIN_HANDLERS = ("demo", "echo", "search", "stream")


def resolve_handler(spec: str, *, shard: str | None = None) -> Handler:
    """``echo``, ``search``, ``demo``, ``stream`` or ``module:function`` (or
    ``module:Class.attr``).

    ``shard`` (``"i/n"``) applies to ``search`` only; without it the shard comes from the
    instance name. Raises ValueError with a message fit for a command line.
    """
    if shard is not None and spec not in ("search", "demo"):
        raise ValueError(f"--shard applies to the 'search' and 'demo' handlers, not {spec!r}")
    if spec == "echo":
        return echo
    if spec == "stream":
        return stream
    if spec == "demo":
        return DemoHandler(shard)
    if spec == "search":
        return _builtin_search(shard)
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(
            f"handler {spec!r}: expected 'echo', 'search', 'demo' or 'module:function'"
            " (or 'stream')"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"handler {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            message = f"handler {spec!r}: {module_name} has no attribute {attr_path!r}"
            raise ValueError(message) from None
    if not callable(target):
        raise ValueError(f"handler {spec!r}: {attr_path} is not callable")
    return target  # type: ignore[no-any-return]  # a callable found by name is untyped


def _is_async(fn: Handler) -> bool:
    """Coroutine functions, including callable objects with an ``async def __call__``."""
    call = getattr(fn, "__call__", None)  # noqa: B004  # we need the method, not a truth test
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _wants_context(fn: Handler) -> bool:
    """Whether ``fn`` accepts a second positional argument (or ``*args``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: call with payload only
        return False
    positional = 0
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            return True
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


class Invoker:
    """A handler adapted once to the single shape the app calls: ``await invoker(payload, ctx)``.

    Any exception other than :class:`HandlerError` becomes a 500 ``handler_error`` whose
    message is ``"<ExcType>: <msg>"``; the traceback stays in the instance's log.
    """

    __slots__ = ("handler", "is_async", "wants_context")

    def __init__(self, handler: Handler) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        self.handler = handler
        self.is_async = _is_async(handler)
        self.wants_context = _wants_context(handler)

    async def __call__(self, payload: Any, context: HandlerContext) -> Any:
        """Run the handler; sync ones in a worker thread, abandoned if the deadline passes."""
        args = (payload, context) if self.wants_context else (payload,)
        try:
            if self.is_async:
                return await self.handler(*args)
            call = functools.partial(self.handler, *args)
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except HandlerError:
            raise
        except Exception as exc:
            _log.error(
                "instance.handler_failed",
                instance=context.instance,
                request_id=context.request_id,
                exc_info=exc,
            )
            raise HandlerError(500, "handler_error", f"{type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        kind = "async" if self.is_async else "sync"
        name = getattr(self.handler, "__qualname__", type(self.handler).__name__)
        return f"<Invoker {name} {kind} context={self.wants_context}>"
