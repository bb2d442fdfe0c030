"""``uvicorn openclaw_orchestrator.server.api.factory:app --factory``: the API from the environment.

For process managers that start the app themselves (uvicorn ``--workers N``, gunicorn with
uvicorn workers): the settings come from ``ORCHESTRATOR_*`` variables, as ``serve`` reads
them, and the same safety check and logging set-up run in every worker. The protocol is
uvicorn's choice, made before the app exists: pass ``--http
openclaw_orchestrator.server.http_protocol:BoundedRequestProtocol`` to bound request headers as
``serve`` does (docs/deployment.md).
"""

from __future__ import annotations

from fastapi import FastAPI

from ...settings import load_settings
from ..logs import configure_logging
from ..nofile import raise_nofile_limit
from ..serve import check_bind
from .app import create_app

__all__ = ["app"]


def app() -> FastAPI:
    """A new app for ``load_settings()`` (called once per worker by uvicorn's ``--factory``)."""
    settings = load_settings()
    check_bind(settings)
    configure_logging(settings.log_level, settings.log_format)
    raise_nofile_limit()
    return create_app(settings, server_process=True)
