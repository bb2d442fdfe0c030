"""Structured logs: one JSON object per line on stderr, via structlog.

Every line carries a timestamp, level and event name; the request id comes from a context
variable bound by the API (:func:`bind_request_id`), so a log line inside a driver call still
names its request. Secrets never reach a log call: specs are logged by name and URL only.

Lines logged on a running event loop are written together once the loop's current step is
done (:class:`LineSink`): a routed request logs a line per attempt, and one ``write`` per
line on the request's path cost more than the rest of the logging (docs/performance.md).
A line waits at most one loop iteration; elsewhere (threads, no loop) it is written at
once. Queued lines are written at exit and by :func:`flush_logs` (the app lifespans end with
it); only a process killed outright (SIGKILL) can lose the lines of the step it was in.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from functools import partial
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict

__all__ = [
    "FrequentEvent",
    "LineSink",
    "after_this_step",
    "bind_request_id",
    "configure_logging",
    "flush_logs",
    "get_logger",
    "reset_request_id",
]


class LineSink:
    """Writes log lines to ``file``, batched per event-loop iteration (module docstring).

    Also a structlog logger: every level method takes the rendered line.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._flush_on: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<LineSink {getattr(self._file, 'name', self._file)!r}>"

    def msg(self, line: str) -> None:
        """Queue ``line``; it reaches the file when the loop's current step is done."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._pending.append(line)
            if loop is not None and self._flush_on is loop:
                return  # a flush is due on this loop already
            if loop is not None:
                self._flush_on = loop
                loop.call_soon(self.flush)
                return
        self.flush()  # no loop here (a thread, start-up, shutdown): write now

    log = debug = info = warn = warning = error = err = critical = exception = msg

    def flush(self) -> None:
        """Write every queued line now."""
        with self._lock:
            self._flush_on = None
            if not self._pending:
                return
            text = "\n".join(self._pending) + "\n"
            self._pending.clear()
            try:
                self._file.write(text)
                self._file.flush()
            except (OSError, ValueError):  # stderr closed or gone: logging must not fail
                pass


class _Named:
    """What a named logger writes to: the process's :class:`LineSink`, plus the name."""

    def __init__(self, name: str | None, sink: LineSink | None) -> None:
        self.name = name
        if sink is not None:
            self.msg = self.log = self.debug = self.info = self.warning = self.error = sink.msg
            self.warn = self.err = self.critical = self.exception = sink.msg


_sink: LineSink | None = None


def flush_logs() -> None:
    """Write every queued line now (at shutdown: the last loop step may not come)."""
    if _sink is not None:
        _sink.flush()


atexit.register(flush_logs)


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


_request_id: ContextVar[str | None] = ContextVar("openclaw_request_id", default=None)


def bind_request_id(request_id: str) -> Token[str | None]:
    """Name ``request_id`` on every line logged in this context until :func:`reset_request_id`."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    """Undo the :func:`bind_request_id` that returned ``token``."""
    _request_id.reset(token)


_LEVELS = {"warn": "warning", "exception": "error", "msg": "info"}


class _Annotate:
    """Every line's common fields in one processor (each processor is a call per line):

    - ``logger``: the name given to :func:`get_logger`;
    - ``request_id`` from :func:`bind_request_id`, unless the call names one (one
      ContextVar; structlog's ``merge_contextvars`` copies and scans the whole context);
    - ``level``, as ``add_log_level`` names it;
    - ``timestamp``: ISO 8601 UTC with microseconds (``2026-11-24T08:00:00.123456Z``), the
      part down to the second formatted once per second, not once per line;
    - ``exc_info`` turned into text by ``format_exc_info``, when there is one.
    """

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, logger: Any, method: str, event_dict: EventDict) -> EventDict:
        if "logger" not in event_dict:
            event_dict["logger"] = getattr(logger, "name", None)
        request_id = _request_id.get()
        if request_id is not None:
            event_dict.setdefault("request_id", request_id)
        event_dict["level"] = _LEVELS.get(method, method)
        now = time.time()
        second = int(now)
        cached, prefix = self._second
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        event_dict["timestamp"] = f"{prefix}.{int((now - second) * 1_000_000):06d}Z"
        if "exc_info" in event_dict:
            return structlog.processors.format_exc_info(logger, method, event_dict)
        return event_dict


def after_this_step(log: Callable[..., Any], *args: Any, **fields: Any) -> None:
    """Call ``log(*args, **fields)`` once the event loop's current step is done (now,
    without a loop).

    For the line a request logs last, just before its reply: a routed request's successful
    attempt. Formatting it after the reply is written takes it off the request's latency;
    the context (the request id) goes with it. ``fields`` must be values that do not change
    in the meantime (numbers, strings).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        log(*args, **fields)
        return
    loop.call_soon(partial(log, *args, **fields))


class FrequentEvent:
    """An ``info`` line logged per target or attempt, written without structlog's per-call
    machinery (proxy, bound logger, context copy): the same processors and sink, so the
    same line, at about half the cost; a thousand-target fanout logs a thousand.

    ``FrequentEvent("orchestrator", "orchestrator.attempt")(instance="A", ...)`` logs what
    ``get_logger("orchestrator").info("orchestrator.attempt", instance="A", ...)`` would.
    """

    __slots__ = ("_event", "_fallback", "_named")

    def __init__(self, logger: str, event: str) -> None:
        self._event = event
        self._named = _Named(logger, None)
        self._fallback = get_logger(logger)

    def __call__(self, **fields: Any) -> None:
        pipeline = _pipeline
        if pipeline is None:  # structlog's own configuration: let it decide
            self._fallback.info(self._event, **fields)
            return
        info_enabled, annotate, render, sink = pipeline
        if not info_enabled:
            return
        fields["event"] = self._event
        sink.msg(render(self._named, "info", annotate(self._named, "info", fields)))


_pipeline: tuple[bool, _Annotate, Callable[..., Any], LineSink] | None = None


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Set up structlog once per process; ``fmt`` is ``json`` or ``console``."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    global _sink, _pipeline
    if _sink is not None:
        _sink.flush()
    sink = _sink = LineSink(sys.stderr)
    annotate = _Annotate()
    _pipeline = (numeric <= logging.INFO, annotate, renderer, sink)
    structlog.configure(
        processors=[annotate, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda name=None, *_: _Named(name, sink),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """A logger whose lines say ``"logger": name``. Lazy: a module-level logger made at
    import, before :func:`configure_logging`, still follows the configuration made later
    (bound at import, it would keep structlog's default console output for good)."""
    return structlog.get_logger(name)
