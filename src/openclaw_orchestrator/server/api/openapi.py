"""The OpenAPI schema tells the truth about errors.

Each operation lists the error statuses it can answer, each with the one error envelope
(:class:`~..models.ErrorReply`); routers add what all their routes share (401, 403, 413).
FastAPI adds a ``422`` with its own validation body to every operation with parameters, but
this API answers a validation failure with ``400`` and the envelope: :func:`finish_schema`
removes the 422 and its components, and marks every operation that can answer 401 as needing
the bearer credential.
"""

from __future__ import annotations

from typing import Any

from ...models import ErrorReply

__all__ = ["BEARER", "error_responses", "finish_schema"]

BEARER = "bearer"

_MEANINGS = {
    400: "invalid_request: the request is malformed; `field` names what is wrong",
    401: "unauthorized: missing or wrong API key, or an expired or closed session's token",
    403: "forbidden: a session token used outside its own session",
    404: "not_found: no such session or instance",
    409: "conflict: an Idempotency-Key reused with another body; session_exists",
    410: "session_closed: the session is closed or expired",
    413: "payload_too_large: the body is over max_body_bytes",
    502: "instance_error, reply_too_large, address_not_allowed: the instance failed",
    503: "instance_down, no_healthy_instance, overloaded, storage_unavailable",
    504: "timeout: the deadline passed",
    507: "storage_full: the store's disk is full; nothing was delivered",
    508: "delegation_loop: X-Orchestrator-Hops reached delegation.max_hops; nothing was delivered",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router: each status with the error envelope."""
    return {status: {"model": ErrorReply, "description": _MEANINGS[status]} for status in statuses}


def finish_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (FastAPI's) without the 422 it never answers, with the bearer scheme."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            if "401" in responses:
                operation["security"] = [{BEARER: []}]
    components = schema.setdefault("components", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The API key (ORCHESTRATOR_API_KEY), or a session's token on that "
        "session's send, history, info and close.",
    }
    return schema
