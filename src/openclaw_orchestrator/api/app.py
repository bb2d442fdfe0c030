"""``create_app``: the FastAPI application and its lifespan.

The lifespan owns the process's resources: the Orchestrator (with its pooled aiohttp
session, drivers and prober) is opened on start-up and closed on shutdown. Tests may pass an
already-built Orchestrator instead.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __about__
from ..idempotency import IdempotencyCache
from ..logs import get_logger
from ..runtime import open_orchestrator
from ..service import Orchestrator
from ..settings import Settings
from . import sessions
from .errors import install_error_handlers
from .fastpath import FastPaths
from .middleware import RequestContextMiddleware
from .routes import cluster, orchestrator, public
from .security import Authenticator

__all__ = ["create_app"]

log = get_logger("api")


def create_app(settings: Settings, *, service: Orchestrator | None = None) -> FastAPI:
    """The orchestrator's HTTP API for ``settings``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            app.state.orchestrator = service
            yield
            return
        async with open_orchestrator(settings) as built:
            app.state.orchestrator = built
            log.info(
                "api.started",
                instances=len(built.registry),
                auth="enabled" if app.state.authenticator.is_enabled else "disabled",
            )
            yield

    app = FastAPI(
        title="openclaw-orchestrator",
        version=__about__.__version__,
        description="Delegate work to many agent instances: route, fanout, health.",
        lifespan=lifespan,
    )
    app.state.authenticator = Authenticator(settings.api_key)
    app.state.idempotency = IdempotencyCache(ttl=settings.idempotency_ttl, clock=time.monotonic)
    install_error_handlers(app)
    app.include_router(public)
    app.include_router(orchestrator)
    app.include_router(cluster)
    app.include_router(sessions.admin)
    app.include_router(sessions.scoped)
    app.add_middleware(FastPaths)  # inside the request id and body limit, before FastAPI
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
