"""Running ASGI apps on uvicorn (uvloop + httptools), in the foreground or as a task.

``running(app)`` (:class:`BackgroundServer` as an async context manager) is what tests and
the local cluster use: it binds ``host:port`` itself (port 0 picks a free one), so the URL is
known before the first request and no port is ever raced.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from .http_protocol import RequestLimits, bounded_protocol

__all__ = ["BackgroundServer", "bind_socket", "running", "serve_forever", "uvicorn_config"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port), ready for uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(
    app: Any,
    *,
    log_level: str = "warning",
    request_limits: RequestLimits | None = None,
    **kwargs: Any,
) -> uvicorn.Config:
    """Our uvicorn defaults: uvloop, httptools with request headers bounded in size and time
    (``request_limits``, default :class:`RequestLimits`), no access log (we log requests
    ourselves), uvicorn's own lines left to our JSON log (``log_config=None``: no handlers of
    its own; see ``logs.configure_logging``), and no ``X-Forwarded-*`` rewriting: nothing
    here reads the client's address, and that middleware is a layer on every request."""
    return uvicorn.Config(
        app,
        loop="uvloop",
        http=bounded_protocol(request_limits or RequestLimits()),
        log_config=None,
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        log_level=log_level,
        server_header=False,
        timeout_graceful_shutdown=5,
        **kwargs,
    )


def serve_forever(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str = "warning",
    sock: socket.socket | None = None,
    request_limits: RequestLimits | None = None,
) -> None:
    """Serve ``app`` in the foreground until SIGINT/SIGTERM (uvicorn handles the signals), on
    ``sock`` when the caller bound it already (to report a taken port before anything else)."""
    sock = sock or bind_socket(host, port)
    server = uvicorn.Server(uvicorn_config(app, log_level=log_level, request_limits=request_limits))
    server.run(sockets=[sock])


class _EmbeddedServer(uvicorn.Server):
    """A server living inside someone else's loop: the host process owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class BackgroundServer:
    """An ASGI app served by a task of the current loop, on a socket bound up front (``sock``
    if the caller bound it).

    Stopping is two steps, ``request_stop()`` then ``wait_stopped()``, so that many servers
    can be asked to stop at once and then awaited together (uvicorn polls every 0.1 s).
    ``async with BackgroundServer(app) as url`` starts it, gives its base URL and stops it.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        sock: socket.socket | None = None,
        request_limits: RequestLimits | None = None,
    ) -> None:
        self._sock = sock or bind_socket(host, port)
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        config = uvicorn_config(app, log_level=log_level, request_limits=request_limits)
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "running" if self._task and not self._task.done() else "stopped"
        return f"<BackgroundServer {self.url} {state}>"

    @property
    def listening_socket(self) -> socket.socket:
        """The socket it accepts connections on (options set on it, such as buffer sizes,
        carry over to the connections it accepts from then on)."""
        return self._sock

    async def start(self) -> str:
        """Start serving; returns once the app's lifespan has started."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("server exited before it started")
            await asyncio.sleep(0.005)
        return self.url

    def request_stop(self) -> None:
        """Ask the server to shut down (graceful: open requests finish)."""
        self._server.should_exit = True

    async def wait_stopped(self) -> None:
        """Wait for the shutdown asked by ``request_stop`` and release the socket."""
        try:
            if self._task is not None:
                await self._task
        finally:
            self._sock.close()

    async def aclose(self) -> None:
        """Stop and wait."""
        self.request_stop()
        await self.wait_stopped()

    async def __aenter__(self) -> str:
        try:
            return await self.start()
        except BaseException:  # a server that failed to start still holds its socket
            await self.aclose()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


running = BackgroundServer
"""Serve ``app`` as a task of the current loop: ``async with running(app) as url``."""
