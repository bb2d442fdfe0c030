"""The typed async SDK: :class:`AsyncClient` (aiohttp), its session namespace and handles.

Requests are built and replies read by :mod:`.api_calls` (no I/O), the layer the sync
:class:`~.sync_client.Client` shares; this module only sends them. Transport failures are
translated in one place, the client's ``_mapped_errors``::

    connection refused, DNS, reset     -> ConnectionFailedError   (the orchestrator is unreachable)
    the client-side deadline passed    -> TimeoutExceededError
    a non-2xx reply                    -> the class named by its JSON ``code``
    a reply that is not JSON/the model -> OrchestratorError

The client-side HTTP deadline is the request's own ``timeout`` plus :data:`DEFAULT_TIMEOUT_MARGIN`,
so the server's 504 (with its partial results) arrives before the client gives up.

Sessions live under ``client.sessions`` (:class:`AsyncSessions`): calls made there carry the
client's API key, while a handle (:class:`AsyncSession`) that holds a session token sends that
token instead, so a program given only a token needs no key.

Durable runs live under ``client.runs`` (:class:`AsyncRuns`): a run's event stream is read
by :class:`~.events.SseParser` and bounded per read, not as a whole (its pings keep it alive).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, Self, TypeVar

import aiohttp
import orjson

from ..errors import ConnectionFailedError, OrchestratorError, TimeoutExceededError
from ..models import (
    FanoutResult,
    HistoryEntry,
    RouteResult,
    RunInfo,
    SendResult,
    SessionInfo,
    SpawnResult,
)
from . import calls
from .bodies import outgoing_body
from .calls import (
    DEFAULT_HISTORY_PAGE,
    DEFAULT_TIMEOUT,
    DEFAULT_TIMEOUT_MARGIN,
    ApiCall,
    RunsBase,
    SessionHandleBase,
    SessionsBase,
    StreamItem,
    base_headers,
    decode_error,
    decode_reply,
    display_url,
    os_reason,
)
from .closing import AsyncClosesOnExit
from .env import resolve_client
from .events import Delta, OutputStreamReader, RunEvent, SseParser
from .sync_client import Client, Runs, Session, Sessions

__all__ = [
    "DEFAULT_HISTORY_PAGE",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TIMEOUT_MARGIN",
    "AsyncClient",
    "AsyncRuns",
    "AsyncSession",
    "AsyncSessions",
    "Client",
    "Delta",
    "RunEvent",
    "Runs",
    "Session",
    "Sessions",
]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="_Sender")
H = TypeVar("H", bound="SessionHandleBase[AsyncCaller]")


class AsyncCaller(Protocol):
    """Sends one :class:`~.api_calls.ApiCall` and returns its parsed reply."""

    async def __call__(self, call: ApiCall[R], /) -> R: ...


EventReader = Callable[[ApiCall[None]], AsyncGenerator[RunEvent, None]]
"""Opens a run's event stream and yields its events (the client's ``_run_stream``)."""


class OutputReader(Protocol):
    """Opens a streamed route or send and yields its deltas, then its result (the client's
    ``_output_stream``)."""

    def __call__(self, call: ApiCall[R], /) -> AsyncGenerator[Delta | R, None]: ...


class _Sender(Protocol):
    """What :func:`_sends` needs of its class: one way to send a call."""

    @property
    def _call(self) -> AsyncCaller: ...


def _sends(build: Callable[P, ApiCall[R]]) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """A method that builds its call with ``build`` and sends it (see ``method_like``)."""

    async def method(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._call(build(*args, **kwargs))

    return calls.method_like(method, build)


def _sends_for_session(
    build: Callable[Concatenate[str, P], ApiCall[R]],
) -> Callable[Concatenate[H, P], Coroutine[Any, Any, R]]:
    """A handle's method: ``build`` with the handle's session id, sent with its token."""

    async def method(self: H, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._call(build(self._id, *args, **kwargs).with_token(self._token))

    return calls.method_like(method, build, bound=1)


def _spawns(
    build: Callable[P, ApiCall[SpawnResult]],
) -> Callable[Concatenate[AsyncSessions, P], Coroutine[Any, Any, AsyncSession]]:
    """``spawn``: the session ``build`` creates, as a handle holding its token."""

    async def method(self: AsyncSessions, /, *args: P.args, **kwargs: P.kwargs) -> AsyncSession:
        spawned = await self._call(build(*args, **kwargs))
        return AsyncSession(
            self._call,
            spawned.session_id,
            token=spawned.token,
            info=spawned,
            output=self._output,
        )

    return calls.method_like(method, build)


def _streams(
    build: Callable[P, ApiCall[FanoutResult]],
) -> Callable[Concatenate[AsyncClient, P], AsyncGenerator[StreamItem, None]]:
    """``fanout_stream``: the fanout ``build`` makes, read as a stream of items."""

    def method(
        self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs
    ) -> AsyncGenerator[StreamItem, None]:
        return self._stream(build(*args, **kwargs))

    return calls.method_like(method, build, calls.FANOUT_STREAM_DOC)


def _output_streams(
    build: Callable[P, ApiCall[RouteResult]],
) -> Callable[Concatenate[AsyncClient, P], AsyncGenerator[Delta | RouteResult, None]]:
    """``route_stream``: the route ``build`` makes, its output read as it is produced."""

    def method(
        self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs
    ) -> AsyncGenerator[Delta | RouteResult, None]:
        return self._output_stream(build(*args, **kwargs))

    doc = calls.OUTPUT_STREAM_DOC.format(name="route", result="RouteResult")
    return calls.method_like(method, build, doc)


class AsyncClient(AsyncClosesOnExit):
    """Async client of one orchestrator; one pooled aiohttp session, opened on first use.

    ``url``/``api_key`` default to ``ORCHESTRATOR_URL``/``ORCHESTRATOR_API_KEY`` and then to
    ``config`` (see :func:`~.settings.load_client_settings`). A ``session`` passed in is used
    as is and left open by :meth:`aclose`.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        config: Path | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        resolved, key = resolve_client(config, url, api_key)
        self.url = resolved.rstrip("/")
        self.timeout = timeout
        self._headers = base_headers(None if key is None else f"Bearer {key}")
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._sessions = AsyncSessions(self._call, self.url, self._output_stream)
        self._runs = AsyncRuns(self._call, self._run_stream, self.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={display_url(self.url)!r}>"

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` was called; a closed client refuses every call."""
        return self._closed

    @property
    def sessions(self) -> AsyncSessions:
        """Stateful conversations pinned to one instance: spawn, send, history, close."""
        return self._sessions

    @property
    def runs(self) -> AsyncRuns:
        """Durable runs: submit a route, fanout or session send, then get, wait, cancel or
        watch it."""
        return self._runs

    async def aclose(self) -> None:
        """Close the pooled session (unless it was passed in). Safe to call twice."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    route = _sends(calls.route)
    route_stream = _output_streams(calls.route)
    fanout = _sends(calls.fanout)
    fanout_stream = _streams(calls.fanout)
    health = _sends(calls.health)
    health_detail = _sends(calls.health_detail)
    liveness = _sends(calls.liveness)
    activity = _sends(calls.activity)
    instances_activity = _sends(calls.instances_activity)
    register = _sends(calls.register)
    instances = _sends(calls.instances)
    unregister = _sends(calls.unregister)

    # -- transport -------------------------------------------------------------------------

    async def _call(self, call: ApiCall[R], /) -> R:
        """Send ``call`` and parse its reply; every failure is an OrchestratorError."""
        with self._mapped_errors(call):
            async with self._send(call) as response:
                raw = await response.read()
        return call.parse(decode_reply(response.status, raw))

    async def _stream(self, call: ApiCall[FanoutResult]) -> AsyncGenerator[StreamItem, None]:
        """Send a streaming fanout and yield its items as they are read."""
        call = calls.streamed(call)
        reader = calls.FanoutStreamReader()
        with self._mapped_errors(call):
            async with self._send(call) as response:
                if response.status >= 400:
                    raise decode_error(response.status, await response.read())
                async for chunk in response.content.iter_any():
                    for item in reader.feed(chunk):
                        yield item
        for item in reader.end():
            yield item

    async def _output_stream(self, call: ApiCall[R]) -> AsyncGenerator[Delta | R, None]:
        """Send a streamed route or send and yield its deltas, then its result; leaving
        early drops the connection, which stops the work on the orchestrator."""
        call = calls.output_streamed(call)
        reader = OutputStreamReader(call.parse)
        with self._mapped_errors(call):
            async with self._send(call) as response:
                if response.status >= 400:
                    raise decode_error(response.status, await response.read())
                async for chunk in response.content.iter_any():
                    for item in reader.feed(chunk):
                        yield item
                    if reader.finished:
                        return
        reader.end()

    async def _run_stream(self, call: ApiCall[None]) -> AsyncGenerator[RunEvent, None]:
        """Open a run's event stream and yield its events up to the ``result`` one."""
        parser = SseParser()
        with self._mapped_errors(call):
            async with self._send(call) as response:
                if response.status >= 400:
                    raise decode_error(response.status, await response.read())
                async for chunk in response.content.iter_any():
                    for event in parser.feed(chunk):
                        yield event
                        if event.type == "result":
                            return
        raise calls.stream_cut(parser.last_id)

    def _send(self, call: ApiCall[Any]) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """Start ``call`` on the pooled session, with the client's headers and the call's own."""
        session = self._ensure_session()
        headers = {**self._headers, **call.headers()}
        data = None
        if call.body is not None:
            data = outgoing_body(orjson.dumps(call.body))
            headers["Content-Type"] = "application/json"
        return session.request(
            call.method,
            f"{self.url}{call.path}",
            data=data,
            params=call.params,
            headers=headers,
            timeout=self._timeout(call),
        )

    def _timeout(self, call: ApiCall[Any]) -> aiohttp.ClientTimeout:
        """The whole call's limit, or each read's for an open-ended stream (its pings keep
        a quiet one alive)."""
        wait = call.wait(self.timeout)
        if call.open_ended:
            return aiohttp.ClientTimeout(total=None, sock_connect=wait, sock_read=wait)
        return aiohttp.ClientTimeout(total=wait)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; create a new one")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    @contextmanager
    def _mapped_errors(self, call: ApiCall[Any]) -> Iterator[None]:
        """Translate aiohttp/asyncio failures into the error tree, most specific first."""
        where = display_url(self.url)
        try:
            yield
        except OrchestratorError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TimeoutExceededError(
                f"no answer from the orchestrator at {where} within {call.wait(self.timeout):g}s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectionFailedError(
                f"cannot reach the orchestrator at {where}: {os_reason(exc.os_error)}"
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise ConnectionFailedError(
                f"cannot reach the orchestrator at {where}: not a valid URL"
            ) from exc
        except aiohttp.ClientError as exc:
            raise ConnectionFailedError(
                f"connection to the orchestrator at {where} failed: {exc}"
            ) from exc


class AsyncSessions(SessionsBase[AsyncCaller]):
    """``client.sessions``: sessions are conversations pinned to one instance, durable in the
    orchestrator. Calls here use the client's API key; the :class:`AsyncSession` handles that
    :meth:`spawn` and :meth:`session` return use their session token when they hold one."""

    def __init__(self, call: AsyncCaller, url: str, output: OutputReader) -> None:
        super().__init__(call, url)
        self._output = output

    spawn = _spawns(calls.spawn_session)
    send = _sends(calls.send_to_session)
    history = _sends(calls.session_history)
    list = _sends(calls.session_list)
    get = _sends(calls.get_session)
    close = _sends(calls.close_session)

    def send_stream(
        self,
        session_id: str,
        data: Any = None,
        *,
        timeout: float | str | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncGenerator[Delta | SendResult, None]:
        """Like ``send``, but yield the instance's output as it is produced: a
        :class:`~.events.Delta` per piece (``.text`` for text), then the
        :class:`SendResult` (the history records the whole reply, as always). A failure
        raises its typed error; once output has streamed the message is not migrated."""
        call = calls.send_to_session(
            session_id, data, timeout=timeout, idempotency_key=idempotency_key
        )
        return self._output(call)

    def iter_history(
        self, session_id: str, *, offset: int = 0, page_size: int = DEFAULT_HISTORY_PAGE
    ) -> AsyncGenerator[HistoryEntry, None]:
        """Every history entry from ``offset`` on, fetching pages of ``page_size`` as needed."""
        return _iter_history(self._call, session_id, offset, page_size, None)

    def session(self, session_id: str, token: str | None = None) -> AsyncSession:
        """A handle to an existing session, without a request; with ``token`` its calls send
        that token instead of the client's API key."""
        calls.session_path(session_id)
        return AsyncSession(
            self._call, session_id, token=calls.check_token(token), output=self._output
        )


class AsyncRuns(RunsBase[AsyncCaller, EventReader]):
    """``client.runs``: routes, fanouts and session sends stored by the orchestrator and
    worked on in the background, so they outlive this program's connection."""

    submit = _sends(calls.submit_run)
    get = _sends(calls.get_run)
    list = _sends(calls.list_runs)
    cancel = _sends(calls.cancel_run)

    async def wait(self, run_id: str, *, timeout: float | str | None = None) -> RunInfo:
        """The run once it has ended, or as it stands when ``timeout`` (seconds or ``"5m"``;
        None: until it ends, which its own deadline bounds) runs out: check ``state``."""
        slices = calls.wait_slices(timeout)
        info = await self._call(calls.look_at_run(run_id, next(slices)))
        for wait in slices:
            if info.state in calls.FINISHED_STATES:
                break
            info = await self._call(calls.look_at_run(run_id, wait))
        return info

    def events(self, run_id: str, after: int | None = None) -> AsyncGenerator[RunEvent, None]:
        """``async for event in client.runs.events(run_id)``: the run's events as they are
        recorded (after event ``after``, to resume), ending with its ``result`` event."""
        return self._events(calls.run_events(run_id, after))


class AsyncSession(SessionHandleBase[AsyncCaller]):
    """A handle to one session: ``send``, ``history``, ``close``; ``async with`` closes it.

    ``token`` is the session token (None for a handle opened by id with the API key); when
    set, every call sends it instead of the client's key. It never appears in the repr.
    ``info`` is the last :class:`SessionInfo` seen (from spawn, :meth:`get` or :meth:`close`),
    without the token.
    """

    def __init__(
        self,
        call: AsyncCaller,
        session_id: str,
        *,
        token: str | None = None,
        info: SessionInfo | None = None,
        output: OutputReader,
    ) -> None:
        super().__init__(call, session_id, token=token, info=info)
        self._output = output

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the session unless it is known closed; already closed or gone is fine."""
        if not self.is_closed:
            with suppress(*self._gone_errors()):
                await self.close()

    send = _sends_for_session(calls.send_to_session)
    history = _sends_for_session(calls.session_history)

    def send_stream(
        self,
        data: Any = None,
        *,
        timeout: float | str | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncGenerator[Delta | SendResult, None]:
        """See :meth:`AsyncSessions.send_stream`."""
        call = calls.send_to_session(
            self._id, data, timeout=timeout, idempotency_key=idempotency_key
        )
        return self._output(call.with_token(self._token))

    def iter_history(
        self, *, offset: int = 0, page_size: int = DEFAULT_HISTORY_PAGE
    ) -> AsyncGenerator[HistoryEntry, None]:
        """See :meth:`AsyncSessions.iter_history`."""
        return _iter_history(self._call, self._id, offset, page_size, self._token)

    async def get(self) -> SessionInfo:
        """The session's current state (also kept in :attr:`info`)."""
        self.info = await self._call(calls.get_session(self._id).with_token(self._token))
        return self.info

    async def close(self) -> SessionInfo:
        """Close the session; the closed :class:`SessionInfo` is kept in :attr:`info`."""
        self.info = await self._call(calls.close_session(self._id).with_token(self._token))
        return self.info


async def _iter_history(
    call: AsyncCaller, session_id: str, offset: int, page_size: int, token: str | None
) -> AsyncGenerator[HistoryEntry, None]:
    """Every history entry from ``offset`` on, fetching pages of ``page_size`` as needed."""
    next_offset: int | None = offset
    while next_offset is not None:
        page_call = calls.session_history(session_id, offset=next_offset, limit=page_size)
        page = await call(page_call.with_token(token))
        for entry in page.messages:
            yield entry
        next_offset = calls.next_history_offset(page, next_offset)
