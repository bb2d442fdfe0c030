"""A lean HTTP/1.1 client for the instance protocol's one hot request: a small JSON POST.

aiohttp spends most of a routed request's client-side CPU on generality this request never
needs (URL objects, header multidicts, payload registry, tracing hooks, streams). This
client writes the request as one pre-formatted byte string over an ``asyncio.Protocol``,
parses the reply with httptools (the parser uvicorn uses) and keeps connections alive in a
pool per host. It is used only where it is correct: ``http://`` URLs without userinfo, and
bodies under :data:`~openclaw_orchestrator.bodies.STREAM_FROM_BYTES`;
:class:`~.worker.WorkerDriver` sends everything else through aiohttp.

Failures leave through :func:`map_lean_errors` as the same classes and messages
:func:`~.base.map_client_errors` gives for aiohttp::

    TimeoutError (the whole call's deadline)   -> TimeoutExceededError
    ConnectFailed (connect refused/unreachable) -> InstanceDownError "cannot connect ..."
    ConnectionError/OSError (reset, closed)     -> InstanceDownError "connection ... failed"
    BadResponse (unparseable HTTP)              -> InstanceError "instance ... failed"
    ValueError (the body is not JSON)           -> InstanceProtocolError
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import httptools

from ..errors import (
    InstanceDownError,
    InstanceError,
    InstanceProtocolError,
    OrchestratorError,
    TimeoutExceededError,
)

__all__ = [
    "DEFAULT_KEEPALIVE",
    "BadResponse",
    "ConnectFailed",
    "LeanHttp",
    "Reply",
    "Target",
    "lean_error",
    "map_lean_errors",
]

DEFAULT_KEEPALIVE = 30.0
"""Seconds an idle connection is kept (aiohttp's pool in ``runtime.py`` keeps 30 s too)."""
DEFAULT_MAX_IDLE_PER_HOST = 1024


class ConnectFailed(OSError):
    """The TCP connection could not be opened (refused, unreachable)."""


class BadResponse(Exception):
    """The reply is not HTTP/1.1 we can parse."""


class Target(NamedTuple):
    """Where a request goes: the address to connect to and the request-line pieces.

    (Named tuples here and for :class:`Reply`: made per request, and a frozen dataclass
    costs three times as much to build.)"""

    host: str
    port: int
    path: bytes
    host_header: bytes


class Reply(NamedTuple):
    """A complete reply: status, ``Retry-After`` (as sent) and the body."""

    status: int
    retry_after: str | None
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Reply] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._header_name = b""
        self._retry_after: str | None = None
        self._chunks: list[bytes] = []
        self._keep_alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if exc is None and self._status and not self._parser.should_keep_alive():
            # A reply without a length ends where the connection does.
            self._waiter.set_result(Reply(self._status, self._retry_after, b"".join(self._chunks)))
            return
        self._waiter.set_exception(
            exc or ConnectionResetError("the instance closed the connection")
        )

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"unparseable HTTP reply: {exc}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":  # a call per header: be quick
            self._retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        reply = Reply(self._status, self._retry_after, b"".join(self._chunks))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(reply)

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        """Close the socket; the connection is never used again."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def is_reusable(self) -> bool:
        """Whether the last exchange left the connection fit for the next request."""
        return self._keep_alive and not self.closed

    async def exchange(self, request: bytes, deadline: float) -> Reply:
        """Send ``request`` (complete bytes) and wait for the whole reply until ``deadline``
        (``loop.time()``); past it, TimeoutError and the connection is closed.

        One timer handle per exchange: ``asyncio.timeout()`` costs several times as much
        (a context object, the current task, a reschedule) and a fanout makes thousands."""
        if self.transport is None or self.closed:
            raise ConnectionResetError("the connection is closed")
        self._status, self._retry_after, self._keep_alive = 0, None, False
        self._chunks = []
        waiter: asyncio.Future[Reply] = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_at(deadline, self._time_out)
        self.transport.write(request)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _time_out(self) -> None:
        self._fail(TimeoutError())


class LeanHttp:
    """Keep-alive pools per ``(host, port)``; :meth:`post` is the one operation."""

    def __init__(
        self,
        *,
        keepalive: float = DEFAULT_KEEPALIVE,
        max_idle_per_host: int = DEFAULT_MAX_IDLE_PER_HOST,
    ) -> None:
        self._keepalive = keepalive
        self._max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._closed = False

    def __repr__(self) -> str:
        idle = sum(len(conns) for conns in self._idle.values())
        return f"<LeanHttp [{idle} idle connections, {len(self._idle)} hosts]>"

    async def post(self, target: Target, headers: bytes, body: bytes, *, timeout: float) -> Reply:
        """``POST`` ``body`` with the extra ``headers`` (complete ``Name: value\\r\\n`` lines)
        and return the reply; the whole call, connect included, ends within ``timeout``."""
        if self._closed:
            raise RuntimeError("this LeanHttp is closed")
        request = b"".join(
            (
                b"POST ",
                target.path,
                b" HTTP/1.1\r\nHost: ",
                target.host_header,
                b"\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
                b"Content-Length: ",
                str(len(body)).encode(),
                b"\r\n",
                headers,
                b"\r\n",
                body,
            )
        )
        key = (target.host, target.port)
        conn: _Connection | None = None
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            conn = self._acquire(key)
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect(key)
            reply = await conn.exchange(request, deadline)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._release(key, conn)
        return reply

    def _acquire(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive:
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Connection(loop), *key)
        except OSError as exc:
            raise ConnectFailed(exc.errno, exc.strerror or str(exc)) from exc
        return conn

    def _release(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if not conn.is_reusable or self._closed or len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def aclose(self) -> None:
        """Close every idle connection; later :meth:`post` calls raise RuntimeError."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


@contextmanager
def map_lean_errors(instance: str) -> Iterator[None]:
    """Translate this client's failures into the orchestrator's errors (module docstring)."""
    try:
        yield
    except Exception as exc:
        translated = lean_error(exc, instance)
        if translated is exc:
            raise
        raise translated from exc


def lean_error(exc: Exception, instance: str) -> Exception:
    """What :func:`map_lean_errors` raises for ``exc`` (``exc`` itself when it is already
    ours or not the client's); for hot paths, where a generator context manager per call
    costs more than a ``try``."""
    if isinstance(exc, OrchestratorError):
        return exc
    if isinstance(exc, TimeoutError):
        return TimeoutExceededError(
            f"instance {instance} did not answer in time", instance=instance
        )
    if isinstance(exc, ConnectFailed):
        return InstanceDownError(
            f"cannot connect to instance {instance}: {exc.strerror or exc}", instance=instance
        )
    if isinstance(exc, OSError):  # ConnectionResetError and friends: the connection broke
        return InstanceDownError(
            f"connection to instance {instance} failed: {exc}", instance=instance
        )
    if isinstance(exc, BadResponse):
        return InstanceError(f"instance {instance} failed: {exc}", instance=instance)
    if isinstance(exc, ValueError):
        return InstanceProtocolError(
            f"instance {instance} sent a reply that is not JSON: {exc}", instance=instance
        )
    return exc
