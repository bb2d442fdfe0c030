"""Structured logs: one JSON object per line on stderr, via structlog.

Every line carries a timestamp, level and event name; the request id comes from a context
variable bound by the API (:func:`bind_request_id`), so a log line inside a driver call still
names its request. Secrets never reach a log call: specs are logged by name and URL only.

Lines logged on a running event loop are handed over together once the loop's current step
is done (:class:`LineSink`): a routed request logs a line per attempt, and one ``write`` per
line on the request's path cost more than the rest of the logging (docs/performance.md).
A line waits at most one loop iteration; elsewhere (threads, no loop) it is handed over at
once. The writing itself is a thread's: a stderr nobody reads (a full pipe) stalls that
thread, never the event loop. While it is stalled, lines wait in a queue bounded in bytes;
past the bound new lines are dropped and counted, and once the writer catches up it writes
one ``logs.dropped`` line with the count. Queued lines are written at exit and by
:func:`flush_logs` (the app lifespans end with it), waiting a bounded time for the writer;
only a process killed outright (SIGKILL) can lose the lines it had not written yet.

Lines of the standard library's ``logging`` (uvicorn's errors and warnings, asyncio's,
any library's) and exceptions that end a thread go through the same processors and sink:
every line on stderr is one JSON object, a traceback included as its ``exception`` field.
"""

from __future__ import annotations

import asyncio
import atexit
import io
import logging
import os
import sys
import threading
import time
from collections import deque
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
    "bind_trace_id",
    "configure_logging",
    "dropped_log_lines",
    "flush_logs",
    "get_logger",
    "reset_request_id",
    "reset_trace_id",
]


DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024
"""Most log text waiting for a stalled writer; past it new lines are dropped (and counted)."""
DEFAULT_FLUSH_TIMEOUT = 2.0
"""Most seconds :meth:`LineSink.flush` waits for the writer (shutdown must not hang on a
stderr nobody reads)."""


def _dropped_json(count: int) -> str:
    return orjson.dumps({"event": "logs.dropped", "dropped": count, "level": "warning"}).decode()


class LineSink:
    """Writes log lines to ``file`` from a writer thread, batched per event-loop iteration
    and never blocking the caller (module docstring).

    ``dropped_line(count)`` renders the line reporting dropped lines. Also a structlog
    logger: every level method takes the rendered line.
    """

    def __init__(
        self,
        file: TextIO,
        *,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        dropped_line: Callable[[int], str] = _dropped_json,
    ) -> None:
        self._file = file
        self._fd = _fileno(file)
        self._max_queued = max_queued_bytes
        self._dropped_line = dropped_line
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._flush_on: asyncio.AbstractEventLoop | None = None
        self._queue: deque[str] = deque()
        self._queued = 0  # characters in the queue and in the write under way
        self._writing = False
        self._dropped = 0
        self.dropped_total = 0
        """Lines dropped since start (``_dropped`` counts those not yet reported)."""
        self._writer: threading.Thread | None = None
        self._writer_pid = 0
        self._stop_writer = threading.Event()

    def __repr__(self) -> str:
        name = getattr(self._file, "name", self._file)
        return f"<LineSink {name!r} [{self._queued} queued, {self._dropped} dropped]>"

    def msg(self, line: str) -> None:
        """Queue ``line``; it goes to the writer when the loop's current step is done."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._pending.append(line)
            if loop is None:  # no loop here (a thread, start-up, shutdown): hand over now
                self._hand_over()
            elif self._flush_on is not loop:
                self._flush_on = loop
                loop.call_soon(self._end_of_step)

    log = debug = info = warn = warning = error = err = critical = exception = msg

    def flush(self, timeout: float = DEFAULT_FLUSH_TIMEOUT) -> bool:
        """Hand every queued line to the writer and wait, at most ``timeout`` seconds, until
        it has written them; False when it could not (a stalled stderr)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._hand_over()
            while self._queue or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = DEFAULT_FLUSH_TIMEOUT) -> None:
        """Flush (at most ``timeout`` seconds), then let the writer thread end; a later line
        starts a new one."""
        self.flush(timeout)
        with self._lock:
            self._stop_writer.set()
            self._writer = None
            self._has_work.notify_all()

    def _end_of_step(self) -> None:
        with self._lock:
            self._hand_over()

    def _hand_over(self) -> None:
        """Move the pending lines to the writer's queue, dropping what does not fit (lock
        held: called by the loop, never waits on the writer)."""
        self._flush_on = None
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        text = "\n".join(lines) + "\n"
        if self._queued + len(text) > self._max_queued:
            text = self._what_fits(lines)
        if text:
            self._queue.append(text)
            self._queued += len(text)
            self._start_writer()
            self._has_work.notify()

    def _what_fits(self, lines: list[str]) -> str:
        """The first ``lines`` that fit in the queue; the rest are counted as dropped."""
        room = self._max_queued - self._queued
        kept: list[str] = []
        for line in lines:
            room -= len(line) + 1
            if room < 0:
                break
            kept.append(line)
        self._dropped += len(lines) - len(kept)
        self.dropped_total += len(lines) - len(kept)
        return "".join(line + "\n" for line in kept)

    def _start_writer(self) -> None:
        """The writer thread, started on first use (and again in a forked child)."""
        if self._writer is not None and self._writer_pid == os.getpid():
            return
        self._writer_pid = os.getpid()
        self._stop_writer = stop = threading.Event()
        self._writer = threading.Thread(
            target=self._write_forever, args=(stop,), name="log-writer", daemon=True
        )
        self._writer.start()

    def _write_forever(self, stop: threading.Event) -> None:
        while True:
            with self._lock:
                while not self._queue or stop.is_set():
                    if stop.is_set():
                        return  # closed: a later line has a new writer
                    self._has_work.wait()
                text = "".join(self._queue)
                self._queue.clear()
                self._writing = True
            self._write(text)
            with self._lock:
                self._writing = False
                self._queued -= len(text)
                if not self._queue and self._dropped:  # caught up: say what was lost
                    report = self._report_dropped(self._dropped) + "\n"
                    self._dropped = 0
                    self._queue.append(report)
                    self._queued += len(report)
                if not self._queue:
                    self._idle.notify_all()

    def _report_dropped(self, count: int) -> str:
        try:
            return self._dropped_line(count)
        except Exception:  # the writer thread must live on: the plain form then
            return _dropped_json(count)

    def _write(self, text: str) -> None:
        """One blocking write (the writer thread's alone); errors are swallowed: stderr
        closed or gone must not break logging."""
        try:
            if self._fd is None:
                self._file.write(text)
                self._file.flush()
                return
            data = memoryview(text.encode("utf-8", "replace"))
            while data:
                data = data[os.write(self._fd, data) :]
        except (OSError, ValueError):
            pass


def _fileno(file: TextIO) -> int | None:
    """The descriptor under ``file``, written to directly: a writer blocked inside Python's
    buffered stderr would hold its lock, and the interpreter's exit needs that lock. None for
    a file without one (a StringIO, pytest's capture): written through the file object."""
    try:
        fd = file.fileno()
        file.flush()
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
    return fd


class _Named:
    """What a named logger writes to: the process's :class:`LineSink`, plus the name."""

    def __init__(self, name: str | None, sink: LineSink | None) -> None:
        self.name = name
        if sink is not None:
            self.msg = self.log = self.debug = self.info = self.warning = self.error = sink.msg
            self.warn = self.err = self.critical = self.exception = sink.msg


_sink: LineSink | None = None


def flush_logs(timeout: float = DEFAULT_FLUSH_TIMEOUT) -> None:
    """Write every queued line, waiting at most ``timeout`` seconds (at shutdown: the last
    loop step may not come)."""
    if _sink is not None:
        _sink.flush(timeout)


atexit.register(flush_logs)


def dropped_log_lines() -> int:
    """How many log lines this process dropped because its log sink was stuck."""
    return 0 if _sink is None else _sink.dropped_total


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


_request_id: ContextVar[str | None] = ContextVar("openclaw_request_id", default=None)


def bind_request_id(request_id: str) -> Token[str | None]:
    """Name ``request_id`` on every line logged in this context until :func:`reset_request_id`."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    """Undo the :func:`bind_request_id` that returned ``token``."""
    _request_id.reset(token)


_trace_id: ContextVar[str | None] = ContextVar("openclaw_trace_id", default=None)


def bind_trace_id(trace_id: str) -> Token[str | None]:
    """Name ``trace_id`` on every line logged in this context (a span is current: tracing,
    :mod:`.observability.tracing`) until :func:`reset_trace_id`."""
    return _trace_id.set(trace_id)


def reset_trace_id(token: Token[str | None]) -> None:
    """Undo the :func:`bind_trace_id` that returned ``token``."""
    _trace_id.reset(token)


_LEVELS = {"warn": "warning", "exception": "error", "msg": "info"}


class _Annotate:
    """Every line's common fields in one processor (each processor is a call per line):

    - ``logger``: the name given to :func:`get_logger`;
    - ``request_id`` from :func:`bind_request_id`, unless the call names one (one
      ContextVar; structlog's ``merge_contextvars`` copies and scans the whole context);
    - ``trace_id`` from :func:`bind_trace_id` while a span is current (tracing on);
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
        trace_id = _trace_id.get()
        if trace_id is not None:
            event_dict.setdefault("trace_id", trace_id)
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
        _sink.close()
    annotate = _Annotate()
    sink = _sink = LineSink(sys.stderr, dropped_line=partial(_dropped_line, annotate, renderer))
    _pipeline = (numeric <= logging.INFO, annotate, renderer, sink)
    _route_stdlib_logging(_StdlibHandler(annotate, renderer, sink), numeric)
    structlog.configure(
        processors=[annotate, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda name=None, *_: _Named(name, sink),
        cache_logger_on_first_use=True,
    )


def _dropped_line(annotate: _Annotate, render: Callable[..., Any], count: int) -> str:
    """The ``logs.dropped`` line, formatted like every other line."""
    named = _Named("logs", None)
    fields: EventDict = {"event": "logs.dropped", "dropped": count}
    return str(render(named, "warning", annotate(named, "warning", fields)))


class _StdlibHandler(logging.Handler):
    """Standard-library log records as our lines: the message is the event, the record's
    logger and level are ours, a traceback becomes the ``exception`` field."""

    def __init__(self, annotate: _Annotate, render: Callable[..., Any], sink: LineSink) -> None:
        super().__init__()
        self._annotate = annotate
        self._render = render
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            named = _Named(record.name, None)
            method = record.levelname.lower()
            fields: EventDict = {"event": record.getMessage().rstrip()}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            self._sink.msg(self._render(named, method, self._annotate(named, method, fields)))
        except Exception:  # logging must not fail the caller; logging's own fallback
            self.handleError(record)


_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def _route_stdlib_logging(handler: _StdlibHandler, level: int) -> None:
    """Send every ``logging`` record to ``handler``: it replaces ours of an earlier call on
    the root logger, and uvicorn's loggers lose their own text handlers (installed when
    uvicorn is started from its command line) and pass their records up to the root.
    ``server.uvicorn_config`` gives uvicorn no handlers at all."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if logger.handlers:  # none: uvicorn turned it off (no access log) or never set it up
            for own in list(logger.handlers):
                logger.removeHandler(own)
            logger.propagate = True
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that ended a thread: a log line with its traceback, not plain text."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    logging.getLogger("threading").error("thread %s failed", name, exc_info=exc_info)


def _plain_tracebacks_by_default() -> None:
    """Until someone configures structlog (:func:`configure_logging`, or an application
    embedding ours), its default console output renders an exception with Rich, every
    frame's locals included: seconds per traceback (4 s for one of ours here, 50 s on a
    loaded machine) and locals that may hold a request's body or a credential. Keep those
    defaults but print tracebacks plainly, without locals."""
    if structlog.is_configured():
        return
    processors = list(structlog.get_config()["processors"])
    if processors and isinstance(processors[-1], structlog.dev.ConsoleRenderer):
        plain = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        structlog.configure(processors=[*processors[:-1], plain])


_plain_tracebacks_by_default()


def get_logger(name: str) -> Any:
    """A logger whose lines say ``"logger": name``. Lazy: a module-level logger made at
    import, before :func:`configure_logging`, still follows the configuration made later
    (bound at import, it would keep structlog's default console output for good)."""
    return structlog.get_logger(name)
