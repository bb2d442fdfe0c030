"""Structured logs: one JSON object per line on stderr, via structlog.

Every line carries a timestamp, level and event name; request-scoped fields (``request_id``)
come from contextvars bound by the API middleware, so a log line inside a driver call still
names its request. Secrets never reach a log call: specs are logged by name and URL only.

Lines logged on a running event loop are written together once the loop's current step is
done (:class:`LineSink`): a routed request logs a line per attempt, and one ``write`` per
line on the request's path cost more than the rest of the logging (docs/performance.md).
A line waits at most one loop iteration; elsewhere (threads, no loop, exit) it is written
at once, and nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
from typing import Any, TextIO

import orjson
import structlog

__all__ = ["LineSink", "configure_logging", "get_logger"]


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


_sink: LineSink | None = None


def _flush_at_exit() -> None:
    if _sink is not None:
        _sink.flush()


atexit.register(_flush_at_exit)


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Set up structlog once per process; ``fmt`` is ``json`` or ``console``."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    global _sink
    if _sink is not None:
        _sink.flush()
    sink = _sink = LineSink(sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """A structlog logger bound with ``logger=name``."""
    return structlog.get_logger(name).bind(logger=name)
