"""Running ASGI apps on uvicorn (uvloop + httptools), in the foreground or as a task.

``running()`` is what tests and the local cluster use: it binds ``host:port`` itself (port 0
picks a free one), so the URL is known before the first request and no port is ever raced.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn

__all__ = ["bind_socket", "running", "serve_forever", "uvicorn_config"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port), ready for uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, *, log_level: str = "warning", **kwargs: Any) -> uvicorn.Config:
    """Our uvicorn defaults: uvloop, httptools, no access log (we log requests ourselves)."""
    return uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        server_header=False,
        timeout_graceful_shutdown=5,
        **kwargs,
    )


def serve_forever(app: Any, *, host: str, port: int, log_level: str = "warning") -> None:
    """Serve ``app`` in the foreground until SIGINT/SIGTERM (uvicorn handles the signals)."""
    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn_config(app, log_level=log_level))
    server.run(sockets=[sock])


class _EmbeddedServer(uvicorn.Server):
    """A server living inside someone else's loop: the host process owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def running(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> AsyncIterator[str]:
    """Serve ``app`` as a task of the current loop; yield its base URL; stop it on exit."""
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    server = _EmbeddedServer(uvicorn_config(app, log_level=log_level))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server exited before it started")
            await asyncio.sleep(0.005)
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        await task
        sock.close()
