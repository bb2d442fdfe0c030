"""The HTTP side of observation: :class:`ObservationMiddleware` (a span and a count per
request, the fast path's requests included) and ``GET /metrics``.

The middleware is added after the fast path (:class:`~..asgi.FastPathApp`), so it wraps
both the fast path and the framework. A request is counted under its route *template*:
FastAPI's matched route (``scope["route"]``), or the one the fast path names in
``scope[ENDPOINT_KEY]`` when it serves the request itself; anything unmatched is
``unmatched``. A raw path never becomes a label.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...settings import Settings
from ..api.security import Authenticator, bearer_token
from .metrics import Metrics
from .observer import ENDPOINT_KEY, Observer
from .tracing import Tracing

__all__ = [
    "ENDPOINT_KEY",
    "METRICS_PATH",
    "MetricsEndpoint",
    "ObservationMiddleware",
    "endpoint_of",
    "install_observability",
]

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def endpoint_of(scope: Scope) -> str:
    """The route template that served ``scope`` (see the module docstring)."""
    named = scope.get(ENDPOINT_KEY)
    if named is not None:
        return str(named)
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    return str(scope.get("root_path") or UNMATCHED)  # a mounted app (/mcp) by its mount


def _method_of(scope: Scope) -> str:
    method = str(scope.get("method", ""))
    return method if method in _METHODS else "other"


def _carrier(scope: Scope) -> dict[str, str]:
    """The caller's ``traceparent``/``tracestate`` (the first of each), for the propagator."""
    carrier: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in (b"traceparent", b"tracestate"):
            carrier.setdefault(name.decode(), value.decode("latin-1"))
    return carrier


class ObservationMiddleware:
    """Counts every HTTP request (``orchestrator_requests_total``, its duration) and, with
    tracing on, serves it inside a server span whose parent is the caller's
    ``traceparent`` when it sent one."""

    def __init__(self, app: ASGIApp, *, observer: Observer) -> None:
        self.app = app
        self.metrics = observer.metrics
        self.tracing = observer.tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # the app raised before it answered: ServerErrorMiddleware's 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            if self.tracing is None:
                await self.app(scope, receive, watch)
            else:
                await self._traced(self.tracing, scope, receive, watch, lambda: status)
        finally:
            if self.metrics is not None:
                seconds = time.perf_counter() - started
                self.metrics.request(endpoint_of(scope), _method_of(scope), status, seconds)

    async def _traced(
        self,
        tracing: Tracing,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: Callable[[], int],
    ) -> None:
        """The app inside a server span named for the route template once it is known."""
        method = _method_of(scope)
        attributes = {"http.request.method": method, "url.path": str(scope.get("path", ""))}
        with tracing.span(
            method, attributes, carrier=_carrier(scope), kind=SpanKind.SERVER
        ) as span:
            try:
                await self.app(scope, receive, send)
            finally:
                endpoint = endpoint_of(scope)
                code = status()
                span.update_name(f"{method} {endpoint}")
                span.set_attribute("http.route", endpoint)
                span.set_attribute("http.response.status_code", code)
                if code >= 500:
                    span.set_status(Status(StatusCode.ERROR))


class MetricsEndpoint:
    """``GET /metrics``: the app's registry in Prometheus's text format, for the API key
    or the ``metrics.token`` (which grants nothing else)."""

    def __init__(
        self, metrics: Metrics, authenticator: Authenticator, token: SecretStr | None
    ) -> None:
        self._metrics = metrics
        self._auth = authenticator
        self._token = None if token is None else Authenticator(token)

    def __repr__(self) -> str:
        return f"<MetricsEndpoint token={'set' if self._token else 'none'}>"

    async def serve(self, request: Request) -> Response:
        """The exposition; 401 (the error envelope) without a key or the token."""
        request.scope[ENDPOINT_KEY] = METRICS_PATH  # a plain route: FastAPI names it not
        self._check(request.headers.get("authorization"))
        return Response(generate_latest(self._metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _check(self, authorization: str | None) -> None:
        token = bearer_token(authorization)
        if self._token is not None and token is not None and self._token.is_api_key(token):
            return
        self._auth.check(authorization)  # the API key (or an open API, loopback only)


def install_observability(app: Starlette, settings: Settings, observer: Observer) -> None:
    """``GET /metrics`` (metrics on) and the middleware (anything on), added after the fast
    path so that it wraps it (:class:`~..asgi.FastPathApp`)."""
    app.state.observer = observer
    if observer.metrics is not None:
        endpoint = MetricsEndpoint(
            observer.metrics, app.state.authenticator, settings.metrics.token
        )
        app.add_route(METRICS_PATH, endpoint.serve, methods=["GET"], include_in_schema=False)
    if observer.is_on:
        app.add_middleware(ObservationMiddleware, observer=observer)
