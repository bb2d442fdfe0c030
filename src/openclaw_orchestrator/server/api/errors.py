"""Every failure becomes the JSON envelope ``{"error": {"code", "message", ...}}``, here.

One handler per kind: our own errors carry their status; validation errors name the field;
Starlette's HTTP errors (unknown path, wrong method) keep their status; anything else is a
generic 500 whose details stay in the server log, never in the response.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ...domain.runs import RUN_KINDS
from ...errors import InvalidRequestError, OrchestratorError
from ..logs import get_logger
from .middleware import request_id_of

__all__ = ["error_headers", "error_response", "install_error_handlers"]

log = get_logger("api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}


def error_headers(exc: OrchestratorError) -> dict[str, str]:
    """The headers an error reply carries besides its JSON: ``Retry-After`` when ``exc``
    says when to retry, ``WWW-Authenticate`` on a 401."""
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def error_response(exc: OrchestratorError) -> Response:
    """The JSON response for ``exc``, with :func:`error_headers`."""
    return Response(
        orjson.dumps(exc.to_dict()),
        status_code=exc.status,
        media_type="application/json",
        headers=error_headers(exc),
    )


def _field_of(loc: tuple[Any, ...]) -> str:
    """The field a validation error is about, as the caller wrote it: without pydantic's
    location words, and without the tag a run's body is told apart by (``("body",
    "route", "timeout")`` is the submitted run's ``timeout``, not ``route.timeout``)."""
    if len(loc) > 2 and loc[0] == "body" and loc[1] in RUN_KINDS:
        loc = (loc[0], *loc[2:])
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
    """The first problem of a validation error, phrased with the field it is about."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = _field_of(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        field, message = "body", "request body is not valid JSON"
    problems = [
        {"field": _field_of(tuple(e.get("loc", ()))), "message": str(e.get("msg"))} for e in errors
    ]
    return InvalidRequestError(
        f"{field}: {message}",
        field=field,
        details={"problems": problems} if len(problems) > 1 else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; the MRO lookup makes subclasses share their base's handler."""

    async def on_orchestrator_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OrchestratorError)
        return error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err = OrchestratorError(str(exc.detail))
        body = err.to_dict()
        body["error"]["code"] = _HTTP_CODES.get(exc.status_code, "http_error")
        return Response(  # its headers too: a 405 says which methods are Allowed
            orjson.dumps(body),
            status_code=exc.status_code,
            media_type="application/json",
            headers=exc.headers,
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("api.unexpected_error", path=request.url.path, exc_info=exc)
        response = error_response(OrchestratorError("internal error; see the orchestrator log"))
        if request_id := request_id_of(request.scope):  # answered outside the middleware
            response.headers["X-Request-ID"] = request_id
        return response

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        # The client left (or was cut off) while sending its body: an everyday event, not
        # a server error; no reply can reach it, so this one goes nowhere.
        log.info("api.client_disconnected", path=request.url.path)
        return Response(status_code=400)

    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(OrchestratorError, on_orchestrator_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
