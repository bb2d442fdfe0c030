"""``openclaw orchestrator serve``: run the API in the foreground, safely.

Refuses to listen on a non-loopback address without an API key: an open orchestrator on a
network would let anyone drive every instance behind it.
"""

from __future__ import annotations

import ipaddress

from .logs import configure_logging, get_logger
from .settings import ConfigError, Settings

__all__ = ["UnsafeBindError", "check_bind", "is_loopback", "serve"]

log = get_logger("runner")


class UnsafeBindError(ConfigError):
    """A non-loopback bind without ``ORCHESTRATOR_API_KEY``."""


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


def serve(settings: Settings) -> None:
    """Serve the orchestrator until SIGINT/SIGTERM."""
    check_bind(settings)
    configure_logging(settings.log_level, settings.log_format)
    from .api.app import create_app
    from .server import serve_forever

    if settings.api_key is None:
        log.warning("runner.auth_disabled", reason="no ORCHESTRATOR_API_KEY; loopback only")
    log.info("runner.listening", url=settings.url)
    serve_forever(create_app(settings, server_process=True), host=settings.host, port=settings.port)
