"""The synchronous SDK: :class:`Client`, :class:`Sessions` and :class:`Session`.

The same calls as :class:`~.client.AsyncClient`, built and read by :mod:`.api_calls`, sent
over the stdlib :class:`~.transport.SyncTransport`: no event loop, no aiohttp. Light enough
for the CLI's fast path, which runs its commands through it. Called inside a running event
loop it refuses (``RuntimeError``), since a blocking call there would stall that loop.

Most methods are the builders of :mod:`.api_calls` turned into methods by :func:`_sends`:
their parameters and docstrings are written once, there, for both clients.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, Self, TypeVar

from . import calls
from .calls import (
    DEFAULT_HISTORY_PAGE,
    DEFAULT_TIMEOUT,
    ApiCall,
    RunsBase,
    SessionHandleBase,
    SessionsBase,
    StreamItem,
    display_url,
)
from .closing import ClosesOnExit
from .env import resolve_client
from .events import Delta, OutputStreamReader, RunEvent, SseParser
from .sync_transport import SyncTransport

if TYPE_CHECKING:
    from pathlib import Path

    from ..models import (
        FanoutResult,
        HistoryEntry,
        RouteResult,
        RunInfo,
        SendResult,
        SessionInfo,
        SpawnResult,
    )

__all__ = ["Client", "Runs", "Session", "Sessions"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="_Sender")
H = TypeVar("H", bound="SessionHandleBase[Caller]")


class Caller(Protocol):
    """Sends one :class:`~.api_calls.ApiCall` and returns its parsed reply."""

    def __call__(self, call: ApiCall[R], /) -> R: ...


EventReader = Callable[["ApiCall[None]"], Iterator[RunEvent]]


class OutputReader(Protocol):
    """Opens a streamed route or send and yields its deltas, then its result (the client's
    ``_output_stream``)."""

    def __call__(self, call: ApiCall[R], /) -> Iterator[Delta | R]: ...


"""Opens a run's event stream and yields its events (the client's ``_run_stream``)."""


class _Sender(Protocol):
    """What :func:`_sends` needs of its class: one way to send a call."""

    @property
    def _call(self) -> Caller: ...


def _sends(build: Callable[P, ApiCall[R]]) -> Callable[Concatenate[S, P], R]:
    """A method that builds its call with ``build`` and sends it (see :func:`method_like`)."""

    def method(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call(build(*args, **kwargs))

    return calls.method_like(method, build)


def _sends_for_session(
    build: Callable[Concatenate[str, P], ApiCall[R]],
) -> Callable[Concatenate[H, P], R]:
    """A handle's method: ``build`` with the handle's session id, sent with its token."""

    def method(self: H, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call(build(self._id, *args, **kwargs).with_token(self._token))

    return calls.method_like(method, build, bound=1)


def _spawns(
    build: Callable[P, ApiCall[SpawnResult]],
) -> Callable[Concatenate[Sessions, P], Session]:
    """``spawn``: the session ``build`` creates, as a handle holding its token."""

    def method(self: Sessions, /, *args: P.args, **kwargs: P.kwargs) -> Session:
        spawned = self._call(build(*args, **kwargs))
        return Session(
            self._call,
            spawned.session_id,
            token=spawned.token,
            info=spawned,
            output=self._output,
        )

    return calls.method_like(method, build)


def _streams(
    build: Callable[P, ApiCall[FanoutResult]],
) -> Callable[Concatenate[Client, P], Iterator[StreamItem]]:
    """``fanout_stream``: the fanout ``build`` makes, read as a stream of items."""

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[StreamItem]:
        return self._stream(build(*args, **kwargs))

    return calls.method_like(method, build, calls.FANOUT_STREAM_DOC)


def _output_streams(
    build: Callable[P, ApiCall[RouteResult]],
) -> Callable[Concatenate[Client, P], Iterator[Delta | RouteResult]]:
    """``route_stream``: the route ``build`` makes, its output read as it is produced."""

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[Delta | RouteResult]:
        return self._output_stream(build(*args, **kwargs))

    doc = calls.OUTPUT_STREAM_DOC.format(name="route", result="RouteResult")
    return calls.method_like(method, build, doc)


class Client(ClosesOnExit):
    """Synchronous client of one orchestrator over one kept-alive stdlib connection.

    Same arguments and methods as :class:`~.client.AsyncClient` (but no ``session``);
    :meth:`fanout_stream` and ``iter_history`` are plain iterators.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        config: Path | None = None,
    ) -> None:
        resolved, key = resolve_client(config, url, api_key)
        self._transport = SyncTransport(resolved, api_key=key, timeout=timeout)
        self._closed = False
        self._sessions = Sessions(self._call, self.url, self._output_stream)
        self._runs = Runs(self._call, self._run_stream, self.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={display_url(self.url)!r}>"

    @property
    def url(self) -> str:
        """The orchestrator's base URL."""
        return self._transport.url

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called; a closed client refuses every call."""
        return self._closed

    @property
    def sessions(self) -> Sessions:
        """Stateful conversations pinned to one instance: spawn, send, history, close."""
        return self._sessions

    @property
    def runs(self) -> Runs:
        """Durable runs: submit a route, fanout or session send, then get, wait, cancel or
        watch it."""
        return self._runs

    def close(self) -> None:
        """Close the kept-alive connection. Safe to call twice."""
        self._closed = True
        self._transport.close()

    route = _sends(calls.route)
    route_stream = _output_streams(calls.route)
    fanout = _sends(calls.fanout)
    health = _sends(calls.health)
    health_detail = _sends(calls.health_detail)
    liveness = _sends(calls.liveness)
    activity = _sends(calls.activity)
    instances_activity = _sends(calls.instances_activity)
    register = _sends(calls.register)
    instances = _sends(calls.instances)
    unregister = _sends(calls.unregister)
    fanout_stream = _streams(calls.fanout)

    def _call(self, call: ApiCall[R], /) -> R:
        """Send ``call`` and parse its reply; every failure is an OrchestratorError."""
        self._check_usable()
        return self._transport.request(call)

    def _stream(self, call: ApiCall[FanoutResult]) -> Iterator[StreamItem]:
        """Send a streaming fanout and yield its items as they are read; leaving early drops
        the stream's connection."""
        self._check_usable()
        reader = calls.FanoutStreamReader()
        chunks = self._transport.stream(calls.streamed(call))
        with closing(chunks):  # leaving early drops the connection now, not at collection
            for chunk in chunks:
                yield from reader.feed(chunk)
        yield from reader.end()

    def _output_stream(self, call: ApiCall[R]) -> Iterator[Delta | R]:
        """Send a streamed route or send and yield its deltas, then its result; leaving
        early drops the connection, which stops the work on the orchestrator."""
        self._check_usable()
        call = calls.output_streamed(call)
        reader = OutputStreamReader(call.parse)
        chunks = self._transport.stream(call)
        with closing(chunks):
            for chunk in chunks:
                yield from reader.feed(chunk)
                if reader.finished:
                    return
        reader.end()

    def _run_stream(self, call: ApiCall[None]) -> Iterator[RunEvent]:
        """Open a run's event stream and yield its events up to the ``result`` one; leaving
        early drops the stream's connection."""
        self._check_usable()
        parser = SseParser()
        chunks = self._transport.stream(call)
        with closing(chunks):
            for chunk in chunks:
                for event in parser.feed(chunk):
                    yield event
                    if event.type == "result":
                        return
        raise calls.stream_cut(parser.last_id)

    def _check_usable(self) -> None:
        """Refuse a closed client, and a call that would block a running event loop."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; create a new one")
        if _in_running_loop():
            raise RuntimeError(
                f"{type(self).__name__} cannot run inside an event loop; use AsyncClient"
            )


def _in_running_loop() -> bool:
    """Whether this thread runs an event loop (asyncio is not imported just to ask)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Sessions(SessionsBase[Caller]):
    """``Client.sessions``: see :class:`~.client.AsyncSessions`; the same calls, synchronous."""

    def __init__(self, call: Caller, url: str, output: OutputReader) -> None:
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
    ) -> Iterator[Delta | SendResult]:
        """See :meth:`~.async_client.AsyncSessions.send_stream`: the same, an iterator."""
        call = calls.send_to_session(
            session_id, data, timeout=timeout, idempotency_key=idempotency_key
        )
        return self._output(call)

    def iter_history(
        self, session_id: str, *, offset: int = 0, page_size: int = DEFAULT_HISTORY_PAGE
    ) -> Iterator[HistoryEntry]:
        """Every history entry from ``offset`` on, fetching pages of ``page_size`` as you
        iterate."""
        return _iter_history(self._call, session_id, offset, page_size, None)

    def session(self, session_id: str, token: str | None = None) -> Session:
        """A handle to an existing session, without a request; with ``token`` its calls send
        that token instead of the client's API key."""
        calls.session_path(session_id)
        return Session(self._call, session_id, token=calls.check_token(token), output=self._output)


class Runs(RunsBase[Caller, EventReader]):
    """``Client.runs``: see :class:`~.async_client.AsyncRuns`; the same calls, synchronous,
    and :meth:`events` a plain iterator."""

    submit = _sends(calls.submit_run)
    get = _sends(calls.get_run)
    list = _sends(calls.list_runs)
    cancel = _sends(calls.cancel_run)

    def wait(self, run_id: str, *, timeout: float | str | None = None) -> RunInfo:
        """The run once it has ended, or as it stands when ``timeout`` (seconds or ``"5m"``;
        None: until it ends, which its own deadline bounds) runs out: check ``state``."""
        slices = calls.wait_slices(timeout)
        info = self._call(calls.look_at_run(run_id, next(slices)))
        for wait in slices:
            if info.state in calls.FINISHED_STATES:
                break
            info = self._call(calls.look_at_run(run_id, wait))
        return info

    def events(self, run_id: str, after: int | None = None) -> Iterator[RunEvent]:
        """``for event in client.runs.events(run_id)``: the run's events as they are
        recorded (after event ``after``, to resume), ending with its ``result`` event."""
        return self._events(calls.run_events(run_id, after))


class Session(SessionHandleBase[Caller]):
    """A handle to one session (see :class:`~.client.AsyncSession`); ``with`` closes it."""

    def __init__(
        self,
        call: Caller,
        session_id: str,
        *,
        token: str | None = None,
        info: SessionInfo | None = None,
        output: OutputReader,
    ) -> None:
        super().__init__(call, session_id, token=token, info=info)
        self._output = output

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the session unless it is known closed; already closed or gone is fine."""
        if not self.is_closed:
            with suppress(*self._gone_errors()):
                self.close()

    send = _sends_for_session(calls.send_to_session)
    history = _sends_for_session(calls.session_history)

    def send_stream(
        self,
        data: Any = None,
        *,
        timeout: float | str | None = None,
        idempotency_key: str | None = None,
    ) -> Iterator[Delta | SendResult]:
        """See :meth:`Sessions.send_stream`."""
        call = calls.send_to_session(
            self._id, data, timeout=timeout, idempotency_key=idempotency_key
        )
        return self._output(call.with_token(self._token))

    def iter_history(
        self, *, offset: int = 0, page_size: int = DEFAULT_HISTORY_PAGE
    ) -> Iterator[HistoryEntry]:
        """See :meth:`Sessions.iter_history`."""
        return _iter_history(self._call, self._id, offset, page_size, self._token)

    def get(self) -> SessionInfo:
        """The session's current state (also kept in :attr:`info`)."""
        self.info = self._call(calls.get_session(self._id).with_token(self._token))
        return self.info

    def close(self) -> SessionInfo:
        """Close the session; the closed :class:`SessionInfo` is kept in :attr:`info`."""
        self.info = self._call(calls.close_session(self._id).with_token(self._token))
        return self.info


def _iter_history(
    call: Caller, session_id: str, offset: int, page_size: int, token: str | None
) -> Iterator[HistoryEntry]:
    """Every history entry from ``offset`` on, fetching pages of ``page_size`` as needed."""
    next_offset: int | None = offset
    while next_offset is not None:
        page_call = calls.session_history(session_id, offset=next_offset, limit=page_size)
        page = call(page_call.with_token(token))
        yield from page.messages
        next_offset = calls.next_history_offset(page, next_offset)
