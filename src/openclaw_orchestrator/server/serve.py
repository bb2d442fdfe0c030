"""``openclaw orchestrator serve``: run the API in the foreground, safely.

Refuses to listen on a non-loopback address without an API key: an open orchestrator on a
network would let anyone drive every instance behind it. Everything that can fail on
configuration (that bind, the reducers, a taken port) fails in :func:`preflight` and
:func:`listen_socket`, before the first log line: one ``error:`` line and exit 2.
"""

from __future__ import annotations

import ipaddress
import socket

from ..settings import ConfigError, Settings
from .logs import configure_logging, get_logger
from .nofile import raise_nofile_limit

__all__ = [
    "ListenError",
    "UnsafeBindError",
    "check_bind",
    "is_loopback",
    "listen_socket",
    "preflight",
    "serve",
]

log = get_logger("runner")


class UnsafeBindError(ConfigError):
    """A non-loopback bind without ``ORCHESTRATOR_API_KEY``."""


class ListenError(ConfigError):
    """The address to listen on cannot be bound (most often: another process has the port)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Raise :class:`UnsafeBindError` for a network-reachable bind with no API key."""
    if settings.api_key is None and not is_loopback(settings.host):
        raise UnsafeBindError(
            f"refusing to listen on {settings.host} without an API key: set "
            "ORCHESTRATOR_API_KEY (or bind 127.0.0.1)"
        )


def preflight(settings: Settings) -> None:
    """The start-up checks that need no socket: :func:`check_bind`, the reducers (their
    modules imported now, so a bad ``module:function`` is reported before anything starts)
    and the kind of database ``database_url`` names (nothing is connected yet)."""
    from .composition import load_reducers, open_store

    check_bind(settings)
    load_reducers(settings.reducers)
    open_store(settings)


def listen_socket(host: str, port: int, *, option: str = "--port") -> socket.socket:
    """A socket listening on ``host:port``; :class:`ListenError` (naming ``option``, the flag
    that picks another port) when it cannot be bound."""
    from .hosting import bind_socket

    try:
        return bind_socket(host, port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ListenError(f"{reason} (another process has it; {option} picks another)") from exc


def serve(settings: Settings) -> None:
    """Serve the orchestrator until SIGINT/SIGTERM."""
    preflight(settings)
    sock = listen_socket(settings.host, settings.port)
    configure_logging(settings.log_level, settings.log_format)
    raise_nofile_limit()
    from .api.app import create_app
    from .hosting import serve_forever
    from .http_protocol import RequestLimits

    if settings.api_key is None:
        log.warning("runner.auth_disabled", reason="no ORCHESTRATOR_API_KEY; loopback only")
    bound = settings.model_copy(update={"port": sock.getsockname()[1]})  # port 0: the real one
    log.info("runner.listening", url=bound.url)
    app = create_app(settings, server_process=True)
    limits = RequestLimits.from_settings(settings)
    serve_forever(app, host=settings.host, port=settings.port, sock=sock, request_limits=limits)
