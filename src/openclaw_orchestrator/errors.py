"""The one error tree of openclaw-orchestrator.

Every failure a user can see is an ``OrchestratorError``; its ``code`` is the JSON error code
of the HTTP API and its ``status`` the HTTP status. The SDK turns a JSON ``code`` back into
the same class through :data:`ERRORS_BY_CODE`, so server and client raise the same types;
an error that names an ``instance`` is looked up in :data:`INSTANCE_ERRORS_BY_CODE` first,
which tells an instance's refusal (``InstanceRejectedError``) apart from a malformed request
(``InvalidRequestError``) under the one documented code ``invalid_request``::

    OrchestratorError                  500 internal_error
    ├── InvalidRequestError            400 invalid_request      names the offending field
    ├── UnauthorizedError              401 unauthorized
    ├── ForbiddenError                 403 forbidden            valid credential, wrong scope
    ├── NotFoundError                  404 not_found
    ├── ConflictError                  409 conflict             e.g. idempotency key reused
    │   └── SessionExistsError         409 session_exists
    ├── SessionClosedError             410 session_closed       closed or expired session
    ├── PayloadTooLargeError           413 payload_too_large
    ├── NoHealthyInstanceError         503 no_healthy_instance
    ├── OverloadedError                503 overloaded           the orchestrator's own resources
    ├── StorageUnavailableError        503 storage_unavailable  the store cannot be reached
    │   └── StorageFullError           507 storage_full         the store's disk is full
    ├── AggregationError               502 aggregation_failed   results could not be combined
    ├── DelegationLoopError            508 delegation_loop      X-Orchestrator-Hops at the limit
    └── InstanceError                  502 instance_error       carries .instance
        ├── InstanceRejectedError      400 invalid_request      instance refused the payload (4xx)
        ├── InstanceProtocolError      502 instance_error       unparseable reply
        ├── ReplyTooLargeError         502 reply_too_large      reply over the instance's limit
        ├── AddressNotAllowedError     502 address_not_allowed  instances.allow/deny refused it
        ├── InstanceDownError          503 instance_down
        ├── TimeoutExceededError       504 timeout
        ├── StaleEpochError            409 stale_epoch          fenced off: a newer epoch holds it
        └── StaleSeqError              409 stale_seq            fenced off: a later message ran

Errors that only the SDK or CLI see (``ConnectionFailedError``: orchestrator unreachable)
live here too so that one ``except OrchestratorError`` covers them.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ERRORS_BY_CODE",
    "INSTANCE_ERRORS_BY_CODE",
    "AddressNotAllowedError",
    "AggregationError",
    "ConflictError",
    "ConnectionFailedError",
    "DelegationLoopError",
    "ForbiddenError",
    "InstanceDownError",
    "InstanceError",
    "InstanceProtocolError",
    "InstanceRejectedError",
    "InvalidRequestError",
    "NoHealthyInstanceError",
    "NotFoundError",
    "OrchestratorError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ReplyTooLargeError",
    "SessionClosedError",
    "SessionExistsError",
    "StaleEpochError",
    "StaleSeqError",
    "StorageFullError",
    "StorageUnavailableError",
    "TimeoutExceededError",
    "UnauthorizedError",
    "error_from_body",
]


class OrchestratorError(Exception):
    """Base of every error with a JSON code; ``details`` holds extra, code-specific facts."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        instance: str | None = None,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.instance = instance
        self.field = field
        self.details = details or {}
        self.retry_after = retry_after
        self.upstream_status = upstream_status

    def to_dict(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` envelope the API returns; no secret ever goes in here."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.instance is not None:
            body["instance"] = self.instance
        if self.field is not None:
            body["field"] = self.field
        if self.upstream_status is not None:
            body["upstream_status"] = self.upstream_status
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        if self.details:
            body["details"] = self.details
        return {"error": body}

    def __repr__(self) -> str:
        where = f" instance={self.instance!r}" if self.instance else ""
        return f"<{type(self).__name__} {self.code}{where}: {self.message}>"


class InvalidRequestError(OrchestratorError):
    """The request is malformed; ``field`` names what is wrong."""

    code = "invalid_request"
    status = 400


class UnauthorizedError(OrchestratorError):
    """Missing or wrong bearer credential."""

    code = "unauthorized"
    status = 401


class ForbiddenError(OrchestratorError):
    """The credential is valid but does not grant this action."""

    code = "forbidden"
    status = 403


class NotFoundError(OrchestratorError):
    """The named resource does not exist."""

    code = "not_found"
    status = 404


class ConflictError(OrchestratorError):
    """The request conflicts with existing state."""

    code = "conflict"
    status = 409


class SessionExistsError(ConflictError):
    """A spawn named a session id that is already taken."""

    code = "session_exists"
    status = 409


class SessionClosedError(OrchestratorError):
    """The session was closed or expired: it exists, but takes no more sends."""

    code = "session_closed"
    status = 410


class PayloadTooLargeError(OrchestratorError):
    """The request body is over the configured limit."""

    code = "payload_too_large"
    status = 413


class NoHealthyInstanceError(OrchestratorError):
    """Every candidate is down (or none is left within the deadline and retry budget)."""

    code = "no_healthy_instance"
    status = 503


class OverloadedError(OrchestratorError):
    """The orchestrator ran out of a local resource (file descriptors, connections, memory):
    its own failure, never blamed on an instance; retry later."""

    code = "overloaded"
    status = 503


class StorageUnavailableError(OrchestratorError):
    """The store cannot be reached or cannot write; nothing was delivered; retry later."""

    code = "storage_unavailable"
    status = 503


class StorageFullError(StorageUnavailableError):
    """The store's disk is full; nothing was delivered until space is freed."""

    code = "storage_full"
    status = 507


class AggregationError(OrchestratorError):
    """The replies arrived but the requested aggregate cannot combine them."""

    code = "aggregation_failed"
    status = 502


class DelegationLoopError(OrchestratorError):
    """The call came through ``delegation.max_hops`` deliveries already
    (``X-Orchestrator-Hops``): agents are delegating in a loop, or too deep. ``details``
    holds ``hops`` and ``max_hops``; nothing was delivered."""

    code = "delegation_loop"
    status = 508


class ConnectionFailedError(OrchestratorError):
    """The SDK could not reach the orchestrator itself (never sent by the server)."""

    code = "connection_failed"
    status = 503


class InstanceError(OrchestratorError):
    """An instance failed the task; ``upstream_status`` is its HTTP status when it sent one."""

    code = "instance_error"
    status = 502


class InstanceRejectedError(InstanceError):
    """The instance refused the payload with a 4xx: retrying elsewhere would not help."""

    code = "invalid_request"
    status = 400


class InstanceProtocolError(InstanceError):
    """The instance answered with something that is not the instance protocol."""

    code = "instance_error"
    status = 502


class ReplyTooLargeError(InstanceError):
    """The instance's reply passed its size limit; reading stopped there."""

    code = "reply_too_large"
    status = 502


class AddressNotAllowedError(InstanceError):
    """The instance's address is outside ``instances.allow`` or inside ``instances.deny``."""

    code = "address_not_allowed"
    status = 502


class InstanceDownError(InstanceError):
    """The instance could not be reached (refused, reset, marked down)."""

    code = "instance_down"
    status = 503


class TimeoutExceededError(InstanceError):
    """The deadline passed before the instance answered."""

    code = "timeout"
    status = 504


class StaleEpochError(InstanceError):
    """The instance refused a session call whose fencing epoch is older than one it has seen
    (instance protocol v1.2): whoever sent it lost the session's lease; nothing ran.

    An instance error (it names the instance and never blames the caller's payload), with
    409 because the session moved on under a newer lease, and never retried elsewhere."""

    code = "stale_epoch"
    status = 409


class StaleSeqError(InstanceError):
    """The instance refused a session message whose position (``X-Session-Seq``) is behind
    the last one it ran (instance protocol v1.2); nothing ran."""

    code = "stale_seq"
    status = 409


ERRORS_BY_CODE: dict[str, type[OrchestratorError]] = {
    cls.code: cls
    for cls in (
        OrchestratorError,
        InvalidRequestError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        SessionExistsError,
        SessionClosedError,
        PayloadTooLargeError,
        NoHealthyInstanceError,
        OverloadedError,
        StorageUnavailableError,
        StorageFullError,
        AggregationError,
        DelegationLoopError,
        ConnectionFailedError,
        InstanceError,
        ReplyTooLargeError,
        AddressNotAllowedError,
        InstanceDownError,
        TimeoutExceededError,
        StaleEpochError,
        StaleSeqError,
    )
}


INSTANCE_ERRORS_BY_CODE: dict[str, type[OrchestratorError]] = {
    InstanceRejectedError.code: InstanceRejectedError,
}
"""Codes that name another class when the envelope names an ``instance`` (a malformed
request never does). ``InstanceProtocolError`` shares ``instance_error`` with its parent
and arrives as that."""


def error_from_body(body: Any, *, status: int) -> OrchestratorError:
    """Rebuild the typed error from an ``{"error": {...}}`` envelope (SDK side)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return OrchestratorError(f"HTTP {status} without an error body", upstream_status=status)
    code = str(err.get("code"))
    by_code = INSTANCE_ERRORS_BY_CODE if err.get("instance") is not None else ERRORS_BY_CODE
    cls = by_code.get(code) or ERRORS_BY_CODE.get(code, OrchestratorError)
    exc = cls(
        str(err.get("message", "")),
        instance=err.get("instance"),
        field=err.get("field"),
        details=err.get("details") if isinstance(err.get("details"), dict) else None,
        retry_after=err.get("retry_after"),
        upstream_status=err.get("upstream_status"),
    )
    return exc
