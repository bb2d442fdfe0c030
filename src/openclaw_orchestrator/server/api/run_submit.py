"""Answering with a durable run: what the API shows of one, and storing an endpoint's request
as one (``POST /api/orchestrator/runs``, and ``"async": true`` or ``Prefer:
respond-async`` on route, fanout and session send)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.responses import Response

from ...domain.runs import RunKind
from ...models import CallbackSpec, RunInfo
from ..core.callbacks import run_info
from ..core.orchestrator import Orchestrator
from .responses import json_response

__all__ = [
    "ASYNC_REPLY",
    "NOT_STORED",
    "asks_async",
    "prefers_async",
    "run_info",
    "store_run",
    "stored_headers",
    "submit_run",
]

ASYNC_REPLY: dict[int | str, dict[str, Any]] = {
    202: {
        "model": RunInfo,
        "description": 'With `"async": true` or `Prefer: respond-async`: the durable run, '
        "stored (GET /api/orchestrator/runs/{run_id} for its result).",
    }
}
"""The OpenAPI reply of an endpoint that can answer with a durable run."""


NOT_STORED = frozenset({"kind", "timeout", "run_async", "session_id", "callback"})
"""Fields of a submitted body that are not its request: the kind is the run's, the timeout
its deadline, it is a run anyway, a send's session id is given as ``sessionId``, and
the callback (with its secret) is stored apart (:mod:`..core.callbacks`)."""
_EXCLUDED = set(NOT_STORED)  # pydantic's ``exclude`` takes a set, not a frozenset


def prefers_async(request: Request) -> bool:
    """Whether the caller sent ``Prefer: respond-async`` (RFC 7240)."""
    return asks_async(request.headers.get("prefer", ""))


def asks_async(prefer: str) -> bool:
    """Whether a ``Prefer`` header's value holds the ``respond-async`` preference."""
    return any(p.strip().lower() == "respond-async" for p in prefer.split(","))


async def submit_run(
    request: Request,
    kind: RunKind,
    body: BaseModel,
    key: str | None,
    extra: dict[str, Any] | None = None,
    *,
    replayed_status: int = 200,
) -> Response:
    """Store ``body`` (an endpoint's request, ``extra`` fields added) as a run of ``kind``:
    202 with the run, or ``replayed_status`` with the run an Idempotency-Key already named
    (202 from the synchronous endpoints, whose 200 is their own result)."""
    info, created = await store_run(request.app.state.orchestrator, kind, body, key, extra)
    headers = stored_headers(info.run_id, created=created, preferred=prefers_async(request))
    return json_response(info, status=202 if created else replayed_status, headers=headers)


async def store_run(
    orchestrator: Orchestrator,
    kind: RunKind,
    body: BaseModel,
    key: str | None,
    extra: dict[str, Any] | None = None,
) -> tuple[RunInfo, bool]:
    """What :func:`submit_run` answers with (the run as shown, whether it is new), apart
    from the HTTP reply, so the fast path (:mod:`.fastpath`) stores a run the same way."""
    asked: float | None = getattr(body, "timeout", None)
    timeout = asked if asked is not None else orchestrator.settings.timeout
    orchestrator.deadline(timeout)  # a 400 naming timeout when over max_timeout
    stored = {
        **(extra or {}),
        **body.model_dump(mode="json", by_alias=True, exclude=_EXCLUDED),
    }
    callback: CallbackSpec | None = getattr(body, "callback", None)
    if callback is not None:
        orchestrator.callbacks.check_url(callback.url)  # a 400 naming callback.url
    run, created = await orchestrator.runs.submit(
        kind, stored, timeout=timeout, idempotency_key=key
    )
    shown = None if callback is None else await orchestrator.callbacks.register(run, callback)
    return run_info(run, shown), created


def stored_headers(run_id: str, *, created: bool, preferred: bool) -> dict[str, str]:
    """The headers of a stored run's reply: where to look at it, whether ``Prefer:
    respond-async`` was honoured (``preferred``), whether an Idempotency-Key replayed it."""
    headers = {"Location": f"/api/orchestrator/runs/{run_id}"}
    if preferred:
        headers["Preference-Applied"] = "respond-async"
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return headers
