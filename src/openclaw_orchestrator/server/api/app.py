"""``create_app``: the FastAPI application and its lifespan.

The lifespan owns the process's resources: the Orchestrator (with its pooled aiohttp
session, drivers and prober) is opened on start-up and closed on shutdown. Tests may pass an
already-built Orchestrator instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from ... import __about__
from ...mcp_server.http import install_mcp
from ...settings import Settings
from ..asgi import FastPathApp
from ..composition import open_orchestrator
from ..core.idempotency import IdempotencyCache
from ..core.orchestrator import Orchestrator
from ..gc_tuning import settle_after_startup
from ..logs import flush_logs, get_logger
from ..observability import build_observer
from ..observability.http import install_observability
from ..stores.leases import holder_id
from . import activity, runs, sessions
from .docs import install_docs
from .errors import install_error_handlers
from .fastpath import FastPaths
from .middleware import RequestContextMiddleware
from .openapi import finish_schema
from .routes import cluster, orchestrator, public
from .security import Authenticator
from .ui import install_ui

__all__ = ["OrchestratorApp", "create_app"]

log = get_logger("api")

FASTAPI_TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
"""FastAPI's own OpenTelemetry (0.145 and later) stays off: the app's spans and metrics
are ours (:mod:`..observability`), named, sampled and exported as our settings say. It
turns itself on whenever the process has a global tracer or meter provider (run under
``opentelemetry-instrument``, or embedded in an app that sets one): four spans of its own
per request (the request, its dependencies, endpoint and serialization), even with our
tracing off, and beside ours in another trace with it on."""


class OrchestratorApp(FastPathApp, FastAPI):
    """FastAPI that may serve the hot endpoints' ordinary requests with
    :class:`~.fastpath.FastPaths` (:class:`~..asgi.FastPathApp`: middleware added later
    sees them too)."""

    def use_fast_paths(self, *, max_body_bytes: int) -> None:
        """Serve the hot endpoints' ordinary requests with :class:`~.fastpath.FastPaths`,
        over the middleware added so far, refusing bodies over ``max_body_bytes`` as the
        request-context middleware does."""
        state = self.state
        self.use_fast_path(lambda app: FastPaths(app, state=state, max_body_bytes=max_body_bytes))

    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema, made true to what the API answers (:func:`.openapi.finish_schema`)."""
        if self.openapi_schema is None:
            self.openapi_schema = finish_schema(super().openapi())
        return self.openapi_schema


def _share_keys(app: FastAPI, service: Orchestrator) -> None:
    """Replicas on one PostgreSQL database share their Idempotency-Keys (:mod:`..shared_state`)."""
    if service.idempotency is not None:
        app.state.idempotency = service.idempotency


def create_app(
    settings: Settings,
    *,
    service: Orchestrator | None = None,
    server_process: bool = False,
    fast_paths: bool = True,
) -> OrchestratorApp:
    """The orchestrator's HTTP API for ``settings``. ``server_process``: the app owns its
    process (``serve``, uvicorn workers), so the garbage collector is tuned for serving
    once start-up is done (:mod:`..gc_tuning`). ``fast_paths``: serve the hot endpoints'
    ordinary requests with :class:`~.fastpath.FastPaths` (off: the FastAPI routes serve
    every request; the API suite runs both ways). Metrics and traces
    (``settings.metrics``, ``settings.tracing``) are the app's own: a registry and tracer
    of its own, or ``service``'s observer when one is given."""
    observer = (
        service.observer if service is not None else build_observer(settings, replica=holder_id())
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            app.state.orchestrator = service
            _share_keys(app, service)
            yield
            return
        try:
            async with open_orchestrator(settings, observer=observer) as built:
                app.state.orchestrator = built
                _share_keys(app, built)
                log.info(
                    "api.started",
                    instances=len(built.registry),
                    auth="enabled" if app.state.authenticator.is_enabled else "disabled",
                )
                if server_process:
                    settle_after_startup()
                yield
        finally:  # uvicorn may end the process by re-raising SIGTERM: no atexit after that
            if observer.tracing is not None:
                await asyncio.to_thread(observer.tracing.shutdown)  # export what is left
            flush_logs()

    app = OrchestratorApp(
        title="openclaw-orchestrator",
        version=__about__.__version__,
        description="Delegate work to many agent instances: route, fanout, health.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load from a CDN; ours are served locally (.docs)
        redoc_url=None,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    app.state.authenticator = Authenticator(settings.api_key)
    app.state.idempotency = IdempotencyCache(
        ttl=settings.idempotency_ttl,
        clock=time.monotonic,
        max_bytes=settings.idempotency_max_bytes,
    )
    install_error_handlers(app)
    app.include_router(public)
    app.include_router(orchestrator)
    app.include_router(cluster)
    app.include_router(sessions.admin)
    app.include_router(sessions.scoped)
    app.include_router(runs.router)
    app.include_router(activity.router)  # the dashboard's feed (docs/dashboard.md)
    install_docs(app)
    install_ui(app)  # the dashboard at /ui (docs/dashboard.md)
    install_mcp(app, settings)  # /mcp: the same endpoints as MCP tools (docs/mcp.md)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    if fast_paths:
        app.use_fast_paths(max_body_bytes=settings.max_body_bytes)
    install_observability(app, settings, observer)  # after the fast path: it wraps it
    return app
