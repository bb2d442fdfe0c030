"""A lean HTTP/1.1 client for the instance protocol's one hot request: a small JSON POST.

aiohttp spends most of a routed request's client-side CPU on generality this request never
needs (URL objects, header multidicts, payload registry, tracing hooks, streams). This
client writes the request as one pre-formatted byte string over an ``asyncio.Protocol``,
parses the reply with httptools (the parser uvicorn uses) and keeps connections alive in a
pool per host. It is used only where it is correct: ``http://`` URLs without userinfo, and
bodies under :data:`~openclaw_orchestrator.sdk.bodies.STREAM_FROM_BYTES`;
:class:`~.transport.LeanTransport` sends everything else through aiohttp. The same POST
asking for a streamed reply (:meth:`LeanHttp.stream`, instance protocol v1.3) goes here too:
the relay of issue 12 reads 5,000 chunks/s through it, and aiohttp's stream reader cost a
tenth of the relay's CPU per chunk.

Bounds: a reply is read up to the caller's ``max_reply`` bytes of body (a declared
``Content-Length`` over it fails at once; headers get :data:`MAX_HEADER_BYTES` more), and a
host has at most ``max_connections`` connections, in use or idle; a request finding them
all busy waits, in arrival order, for one to come back until its deadline. A connect that
finds the process out of file descriptors closes every idle connection and tries once more.

Failures leave through :func:`map_lean_errors` as the same classes and messages
:func:`~.base.map_client_errors` gives for aiohttp::

    OSError with a LOCAL_RESOURCE_ERRNOS errno -> OverloadedError (ours: EMFILE, ENOBUFS...)
    PoolExhausted (no free connection in time)  -> OverloadedError (ours: max_connections)
    ReplyTooLarge (over max_reply)              -> ReplyTooLargeError; connection closed
    TimeoutError (the whole call's deadline)    -> TimeoutExceededError
    ConnectFailed (connect refused/unreachable) -> InstanceDownError "cannot connect ..."
    ConnectionError/OSError (reset, closed)     -> InstanceDownError "connection ... failed"
    BadResponse (unparseable HTTP)              -> InstanceError "instance ... failed"
    AddressRefused (instances.allow/deny)       -> AddressNotAllowedError; never connected
    JSONDecodeError (the body is not JSON)      -> InstanceProtocolError
    anything else (a request not even built)    -> InstanceError (base.request_failed)

Every new connection is checked against ``instances.allow``/``instances.deny``
(:class:`~openclaw_orchestrator.domain.addresses.AddressPolicy`): a name is resolved here,
its addresses judged, and the connection made to an admitted address, never to the name.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import NamedTuple

import httptools

from ...domain.addresses import AddressPolicy, AddressRefused, parse_address
from ...errors import (
    InstanceDownError,
    InstanceError,
    InstanceProtocolError,
    OrchestratorError,
    OverloadedError,
    TimeoutExceededError,
)
from ...settings import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REPLY_BYTES
from .base import (
    LOCAL_RESOURCE_ERRNOS,
    OVERLOADED_RETRY_AFTER,
    Reply,
    address_not_allowed,
    is_local_exhaustion,
    overloaded_error,
    reply_too_large,
    request_failed,
    translating_errors,
)

__all__ = [
    "DEFAULT_KEEPALIVE",
    "MAX_HEADER_BYTES",
    "BadResponse",
    "ConnectFailed",
    "LeanHttp",
    "PoolExhausted",
    "Reply",
    "ReplyTooLarge",
    "Target",
    "lean_error",
    "map_lean_errors",
]

DEFAULT_KEEPALIVE = 4.0
"""Seconds an idle connection is kept (aiohttp's pool in ``composition.py`` keeps it as
long): under the 5 s after which uvicorn and Node close an idle connection, so a request
is never written into a connection the instance is closing at that moment (a reset that
would count against the instance's health, and could not be retried safely)."""
MAX_HEADER_BYTES = 64 * 1024
"""Bytes a reply may have besides its body (status line and headers)."""
STREAM_BUFFER_BYTES = 64 * 1024
"""Bytes of a streamed reply read ahead of its reader, at most, before the socket is no
longer read (a slow client slows the instance's stream down rather than filling memory)."""
_EVENT_STREAM = b"text/event-stream"
Take = Callable[[], Awaitable[bytes | None]]
"""Gives the body bytes of a streamed reply that arrived since the last call (waiting for
some), or None once the reply has ended."""


class ConnectFailed(OSError):
    """The TCP connection could not be opened (refused, unreachable)."""


class BadResponse(Exception):
    """The reply is not HTTP/1.1 we can parse."""


class ReplyTooLarge(Exception):
    """The reply passed the caller's byte limit; reading stopped there."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the reply is over {limit} bytes")
        self.limit = limit


class PoolExhausted(Exception):
    """Every connection the host may have was busy until the request's deadline."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"all {limit} connections were busy")
        self.limit = limit


class Target(NamedTuple):
    """Where a request goes: the address to connect to and the request-line pieces.

    (A named tuple, as :class:`~.base.Reply`: made per request, and a frozen dataclass
    costs three times as much to build.)"""

    host: str
    port: int
    path: bytes
    host_header: bytes


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
        self._replayed = False
        self._chunks: list[bytes] = []
        self._keep_alive = False
        self._max_reply = DEFAULT_MAX_REPLY_BYTES
        self._received = 0  # bytes of this reply, headers included
        self._body_size = 0
        # A streamed reply (:meth:`exchange` with ``stream=True``, text/event-stream):
        self._stream_ok = False  # the request asked for one
        self._event_stream = False  # the reply's content type says it is one
        self._streaming = False  # its body goes to :meth:`take` as it comes
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._reader: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._tap: Callable[[bytes], bool] | None = None  # takes bytes while take() waits
        self._poked = False  # the tap left events: take() returns b"" for the read loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._streaming:
            if exc is None and not self._parser.should_keep_alive():
                self._ended = True  # a stream without a length ends where the connection does
            elif not self._ended and self._error is None:
                self._error = exc or ConnectionResetError("the instance closed the connection")
            self._wake_reader()
            return
        if self._waiter is None or self._waiter.done():
            return
        if exc is None and self._status and not self._parser.should_keep_alive():
            # A reply without a length ends where the connection does.
            body = b"".join(self._chunks)
            self._waiter.set_result(Reply(self._status, self._retry_after, body, self._replayed))
            return
        self._waiter.set_exception(
            exc or ConnectionResetError("the instance closed the connection")
        )

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._max_reply + MAX_HEADER_BYTES:  # endless headers, too
            self._fail(ReplyTooLarge(self._max_reply))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"unparseable HTTP reply: {exc}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)  # a call per header: be quick
        if size == 11 and name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif size == 14 and name.lower() == b"content-length":
            if value.isdigit() and int(value) > self._max_reply:  # refused before any body
                self._fail(ReplyTooLarge(self._max_reply))
        elif size == 18 and name.lower() == b"x-session-replayed":  # a session message's
            self._replayed = value.lower() == b"true"
        elif size == 12 and self._stream_ok and name.lower() == b"content-type":
            self._event_stream = value.split(b";", 1)[0].strip().lower() == _EVENT_STREAM

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._event_stream and 200 <= self._status < 300:
            self._streaming = True  # the head is the reply; the body goes to take()
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(Reply(self._status, self._retry_after, b"", self._replayed))

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_reply:
            self._fail(ReplyTooLarge(self._max_reply))  # the rest is never kept
        elif self.closed:
            return
        elif self._streaming:
            tap, reader = self._tap, self._reader
            if tap is not None and reader is not None and not reader.done() and not self._pieces:
                if not tap(body):  # the read loop waits and nothing is before these bytes
                    self._poked = True
                    reader.set_result(None)
                return
            self._pieces.append(body)
            self._buffered += len(body)
            self._wake_reader()
            if self._buffered > STREAM_BUFFER_BYTES and not self._paused:
                self._paused = True
                if self.transport is not None:
                    self.transport.pause_reading()
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        if self._streaming:
            self._ended = True
            self._wake_reader()
            return
        reply = Reply(self._status, self._retry_after, b"".join(self._chunks), self._replayed)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(reply)

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        if self._streaming and self._error is None:
            self._error = exc
            self._wake_reader()
        self.close()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def close(self) -> None:
        """Close the socket; the connection is never used again."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def is_reusable(self) -> bool:
        """Whether the last exchange left the connection fit for the next request."""
        return self._keep_alive and not self.closed

    @property
    def is_streaming(self) -> bool:
        """Whether the reply :meth:`exchange` returned is a stream still to :meth:`take`."""
        return self._streaming

    async def take(self) -> bytes | None:
        """The streamed reply's body bytes that arrived since the last call, waiting for
        some; None once it has ended; its failure (a timeout, too long, a broken
        connection) once the bytes before it are taken. With a tap (:meth:`exchange`), the
        bytes that arrive while this waits go to the tap instead, and ``b""`` means the tap
        left events for the caller."""
        while not self._pieces:
            if self._poked:
                self._poked = False
                return b""
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            self._reader = self._loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        pieces = self._pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._pieces, self._buffered, self._poked = [], 0, False
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return data

    def end_stream(self) -> None:
        """Done with the exchange (a streamed reply read to its end or not): its deadline
        no longer runs, and the connection is reusable only if the reply ended."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._streaming and not self._ended:
            self._keep_alive = False
        self._stream_ok = self._event_stream = self._streaming = self._ended = False
        self._pieces, self._buffered, self._error = [], 0, None
        self._tap, self._poked = None, False

    async def exchange(
        self,
        request: bytes,
        deadline: float,
        max_reply: int,
        *,
        stream: bool = False,
        tap: Callable[[bytes], bool] | None = None,
    ) -> Reply:
        """Send ``request`` (complete bytes) and wait for the whole reply until ``deadline``
        (``loop.time()``); past it, TimeoutError and the connection is closed. A body over
        ``max_reply`` bytes is ReplyTooLarge, and the connection is closed too. With
        ``stream``, a 2xx ``text/event-stream`` reply returns at its head
        (:attr:`is_streaming`): its body is read with :meth:`take`, all of it within
        ``deadline`` and ``max_reply``, until :meth:`end_stream`; or, while :meth:`take`
        waits and nothing is before them, given to ``tap`` as they arrive (True: it took
        them all; False: it left events, and :meth:`take` returns ``b""`` for them).

        One timer handle per exchange: ``asyncio.timeout()`` costs several times as much
        (a context object, the current task, a reschedule) and a fanout makes thousands."""
        if self.transport is None or self.closed:
            raise ConnectionResetError("the connection is closed")
        self._status, self._retry_after, self._keep_alive, self._replayed = 0, None, False, False
        self._chunks = []
        self._max_reply, self._received, self._body_size = max_reply, 0, 0
        self._stream_ok, self._event_stream, self._tap = stream, False, tap
        waiter: asyncio.Future[Reply] = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_at(deadline, self._time_out)
        self.transport.write(request)
        try:
            return await waiter
        finally:
            if self._streaming:
                self._timer = timer  # the stream's body must come within the deadline too
            else:
                timer.cancel()
            self._waiter = None

    def _time_out(self) -> None:
        self._fail(TimeoutError())


class _Pool:
    """One host's connections: the idle ones, how many are open (idle or in use) and the
    requests waiting for one, oldest first."""

    __slots__ = ("idle", "open", "waiters")

    def __init__(self) -> None:
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def wake_one(self) -> None:
        """Tell the oldest waiter a connection came back (or a slot was freed)."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class LeanHttp:
    """Keep-alive pools per ``(host, port)``, each at most ``max_connections`` connections;
    :meth:`post` is the one operation."""

    def __init__(
        self,
        *,
        keepalive: float = DEFAULT_KEEPALIVE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        address_policy: AddressPolicy | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be positive")
        self._keepalive = keepalive
        self._max_connections = max_connections
        self._policy = AddressPolicy.parse() if address_policy is None else address_policy
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._closed = False

    def __repr__(self) -> str:
        idle = sum(len(pool.idle) for pool in self._pools.values())
        busy = sum(pool.open for pool in self._pools.values()) - idle
        waiting = sum(len(pool.waiters) for pool in self._pools.values())
        return (
            f"<LeanHttp [{busy} busy, {idle} idle connections, {waiting} waiting,"
            f" {len(self._pools)} hosts]>"
        )

    async def post(
        self,
        target: Target,
        headers: bytes,
        body: bytes,
        *,
        timeout: float,
        max_reply: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> Reply:
        """``POST`` ``body`` with the extra ``headers`` (complete ``Name: value\\r\\n`` lines)
        and return the reply (its body at most ``max_reply`` bytes); the whole call, waiting
        for a connection and connecting included, ends within ``timeout``."""
        request = _request(target, b"application/json", headers, body)
        pool, conn, deadline = await self._checkout(target, timeout)
        try:
            reply = await conn.exchange(request, deadline, max_reply)
        except BaseException:
            self._discard(pool, conn)
            raise
        self._release(pool, conn)
        return reply

    async def stream(
        self,
        target: Target,
        headers: bytes,
        body: bytes,
        *,
        timeout: float,
        max_reply: int = DEFAULT_MAX_REPLY_BYTES,
        read: Callable[[Take], Awaitable[Reply]],
        tap: Callable[[bytes], bool] | None = None,
    ) -> Reply:
        """:meth:`post` asking for ``text/event-stream``: a 2xx event stream is given to
        ``read``, whose reply is returned (its body read within ``timeout`` and
        ``max_reply`` too; the bytes that arrive while ``read`` waits in ``take`` go to
        ``tap`` when one is given, see :meth:`_Connection.exchange`); any other reply is
        returned whole, as :meth:`post` does. The connection goes back to the pool only if
        the stream was read to its end."""
        request = _request(target, _EVENT_STREAM, headers, body)
        pool, conn, deadline = await self._checkout(target, timeout)
        try:
            reply = await conn.exchange(request, deadline, max_reply, stream=True, tap=tap)
            if conn.is_streaming:
                reply = await read(conn.take)
        except BaseException:
            conn.end_stream()
            self._discard(pool, conn)
            raise
        conn.end_stream()
        self._release(pool, conn)
        return reply

    async def _checkout(self, target: Target, timeout: float) -> tuple[_Pool, _Connection, float]:
        """The target's pool, a connection from it (idle, else new or the next released) and
        the call's deadline, ``timeout`` from now (waiting for the connection counts)."""
        if self._closed:
            raise RuntimeError("this LeanHttp is closed")
        key = (target.host, target.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool()
        deadline = asyncio.get_running_loop().time() + timeout
        conn = self._take_idle(pool)
        if conn is None:
            conn = await self._open(key, pool, deadline)
        return pool, conn, deadline

    def _take_idle(self, pool: _Pool) -> _Connection | None:
        """The most recently used idle connection still fit for use; stale ones are closed."""
        idle = pool.idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive:
                return conn
            conn.close()
            pool.open -= 1
        return None

    async def _open(self, key: tuple[str, int], pool: _Pool, deadline: float) -> _Connection:
        """A connection for a request with no idle one at hand: a new one while the host is
        under ``max_connections``, else the next one released, waiting until ``deadline``."""
        loop = asyncio.get_running_loop()
        while pool.open >= self._max_connections:
            waiter: asyncio.Future[None] = loop.create_future()
            pool.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    pool.wake_one()  # woken but leaving: the wake-up goes to the next one
                else:
                    pool.waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise PoolExhausted(self._max_connections) from None
                raise
            if self._closed:
                raise RuntimeError("this LeanHttp is closed")
            conn = self._take_idle(pool)
            if conn is not None:
                return conn
        pool.open += 1
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    return await self._connect(key, loop)
                except ConnectFailed as exc:
                    if exc.errno not in LOCAL_RESOURCE_ERRNOS or not self._shed_idle():
                        raise
                await asyncio.sleep(0)  # a closed socket's descriptor is freed a turn later
                return await self._connect(key, loop)
        except BaseException:
            pool.open -= 1
            pool.wake_one()
            raise

    def _shed_idle(self) -> int:
        """Close the idle connections of every host (how many): out of file descriptors, a
        request that needs a connection now matters more than connections kept for later."""
        shed = 0
        for pool in self._pools.values():
            while pool.idle:
                self._discard(pool, pool.idle.pop())
                shed += 1
        return shed

    async def _connect(self, key: tuple[str, int], loop: asyncio.AbstractEventLoop) -> _Connection:
        """A new connection to the first of the host's admitted addresses that accepts one
        (:meth:`_admitted`): the address connected to is always the address checked."""
        host, port = key
        failure: OSError = ConnectionRefusedError(f"{host} has no address")
        for address in await self._admitted(host, port, loop):
            try:
                _, conn = await loop.create_connection(lambda: _Connection(loop), address, port)
            except OSError as exc:
                failure = exc
                continue
            return conn
        raise ConnectFailed(failure.errno, failure.strerror or str(failure)) from failure

    async def _admitted(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> list[str]:
        """The addresses ``instances.allow``/``instances.deny`` let us connect to for
        ``host`` (AddressRefused when none): a literal address is judged as it is, a name
        after it is resolved. Once per new connection, never per request."""
        if parse_address(host) is not None:
            self._policy.check_host(host)
            return [host]
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectFailed(exc.errno, exc.strerror or str(exc)) from exc
        return self._policy.admit(host, list(dict.fromkeys(str(i[4][0]) for i in infos)))

    def _release(self, pool: _Pool, conn: _Connection) -> None:
        """After a complete exchange: back to idle when reusable, else closed."""
        if not conn.is_reusable or self._closed:
            self._discard(pool, conn)
            return
        conn.idle_since = time.monotonic()
        pool.idle.append(conn)
        pool.wake_one()

    @staticmethod
    def _discard(pool: _Pool, conn: _Connection) -> None:
        """Close ``conn`` for good and free its slot for a waiter."""
        conn.close()
        pool.open -= 1
        pool.wake_one()

    async def aclose(self) -> None:
        """Close every idle connection; later :meth:`post` calls raise RuntimeError."""
        self._closed = True
        self._shed_idle()
        for pool in self._pools.values():
            while pool.waiters:
                pool.wake_one()


def _request(target: Target, accept: bytes, headers: bytes, body: bytes) -> bytes:
    """The whole request: a JSON ``POST`` of ``body`` with the extra ``headers``."""
    return b"".join(
        (
            b"POST ",
            target.path,
            b" HTTP/1.1\r\nHost: ",
            target.host_header,
            b"\r\nContent-Type: application/json\r\nAccept: ",
            accept,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\n",
            headers,
            b"\r\n",
            body,
        )
    )


def map_lean_errors(instance: str) -> AbstractContextManager[None]:
    """Translate this client's failures into the orchestrator's errors (module docstring)."""
    return translating_errors(lean_error, instance)


def lean_error(exc: Exception, instance: str) -> Exception:
    """What :func:`map_lean_errors` raises for ``exc`` (``exc`` itself when it is already
    ours or not the client's); for hot paths, where a generator context manager per call
    costs more than a ``try``."""
    if isinstance(exc, OrchestratorError):
        return exc
    if isinstance(exc, OSError | MemoryError) and is_local_exhaustion(exc):
        return overloaded_error(exc, instance)
    if isinstance(exc, PoolExhausted):
        return OverloadedError(
            f"no free connection to instance {instance} before the deadline: all "
            f"{exc.limit} (instances.max_connections) were busy; retry later",
            instance=instance,
            retry_after=OVERLOADED_RETRY_AFTER,
        )
    if isinstance(exc, ReplyTooLarge):
        return reply_too_large(instance, exc.limit)
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
    if isinstance(exc, AddressRefused):
        return address_not_allowed(exc, instance)
    if isinstance(exc, json.JSONDecodeError):
        return InstanceProtocolError(
            f"instance {instance} sent a reply that is not JSON: {exc}", instance=instance
        )
    return request_failed(exc, instance)
