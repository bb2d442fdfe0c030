"""The seam between the orchestrator and the instances it drives.

One driver per kind of instance implements :class:`InstanceDriver`. Drivers (and the SDK
client) are the only modules that import aiohttp; they translate every transport failure
into the error tree of :mod:`openclaw_orchestrator.errors` in one place,
:func:`map_client_errors`, so the service never sees an aiohttp exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from ..errors import (
    InstanceDownError,
    InstanceError,
    InstanceProtocolError,
    OrchestratorError,
    TimeoutExceededError,
)
from ..models import InstanceSpec

__all__ = ["InstanceDriver", "ProbeResult", "error_fields", "map_client_errors"]

REQUEST_ID_HEADER = "X-Request-ID"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one health probe saw. ``degraded`` means alive but not fully able to serve."""

    latency_s: float
    degraded: bool = False
    detail: str | None = None


class InstanceDriver(Protocol):
    """Talks to one kind of instance. Implementations never raise anything but
    :class:`~openclaw_orchestrator.errors.OrchestratorError` subclasses.

    The ``session_*`` methods drive a conversation the instance remembers between requests;
    they raise what :meth:`invoke` raises, for the same reasons.
    """

    kind: str

    async def invoke(
        self, instance: InstanceSpec, payload: Any, *, timeout: float, request_id: str
    ) -> Any:
        """Run ``payload`` on ``instance`` and return its result (any JSON value)."""
        ...

    async def session_send(
        self,
        instance: InstanceSpec,
        session_id: str,
        payload: Any,
        *,
        timeout: float,
        request_id: str,
    ) -> Any:
        """Send one message of session ``session_id`` (the instance creates the session on its
        first message) and return the result, like :meth:`invoke`."""
        ...

    async def session_restore(
        self,
        instance: InstanceSpec,
        session_id: str,
        history: Sequence[tuple[Any, Any]],
        *,
        timeout: float,
        request_id: str,
    ) -> None:
        """Replace ``instance``'s state of the session with ``history``, ``(payload, result)``
        pairs oldest first, without re-running them (how a session migrates)."""
        ...

    async def session_close(
        self, instance: InstanceSpec, session_id: str, *, timeout: float
    ) -> None:
        """Make ``instance`` forget the session; closing an unknown session succeeds."""
        ...

    async def probe(self, instance: InstanceSpec, *, timeout: float) -> ProbeResult:
        """Check ``instance``'s health; raise ``InstanceDownError``/``TimeoutExceededError``
        /``InstanceError`` when it fails."""
        ...

    async def aclose(self) -> None:
        """Release what the driver owns (not the shared ``aiohttp.ClientSession``)."""
        ...


@contextmanager
def map_client_errors(instance: str) -> Iterator[None]:
    """Translate aiohttp/asyncio failures into the orchestrator's errors, most specific first."""
    try:
        yield
    except OrchestratorError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise TimeoutExceededError(
            f"instance {instance} did not answer in time", instance=instance
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise InstanceDownError(
            f"cannot connect to instance {instance}: {exc.os_error.strerror or exc}",
            instance=instance,
        ) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise InstanceDownError(
            f"connection to instance {instance} failed: {exc}", instance=instance
        ) from exc
    except (aiohttp.ContentTypeError, ValueError) as exc:
        raise InstanceProtocolError(
            f"instance {instance} sent a reply that is not JSON: {exc}", instance=instance
        ) from exc
    except aiohttp.ClientError as exc:
        raise InstanceError(f"instance {instance} failed: {exc}", instance=instance) from exc


def error_fields(raw: bytes, kind_key: str = "code") -> tuple[str | None, str | None]:
    """``(kind, message)`` of an ``{"error": {kind_key: ..., "message": ...}}`` reply body;
    Nones for whatever is missing, not a string, or not JSON at all."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None, None
    kind, message = err.get(kind_key), err.get("message")
    return (kind if isinstance(kind, str) else None, message if isinstance(message, str) else None)
