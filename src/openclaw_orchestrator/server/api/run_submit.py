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

__all__ = ["ASYNC_REPLY", "NOT_STORED", "prefers_async", "run_info", "submit_run"]

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


def prefers_async(request: Request) -> bool:
    """Whether the caller sent ``Prefer: respond-async`` (RFC 7240)."""
    prefer = request.headers.get("prefer", "")
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
    orchestrator: Orchestrator = request.app.state.orchestrator
    asked: float | None = getattr(body, "timeout", None)
    timeout = asked if asked is not None else orchestrator.settings.timeout
    orchestrator.deadline(timeout)  # a 400 naming timeout when over max_timeout
    stored = {
        **(extra or {}),
        **body.model_dump(mode="json", by_alias=True, exclude=set(NOT_STORED)),
    }
    callback: CallbackSpec | None = getattr(body, "callback", None)
    if callback is not None:
        orchestrator.callbacks.check_url(callback.url)  # a 400 naming callback.url
    run, created = await orchestrator.runs.submit(
        kind, stored, timeout=timeout, idempotency_key=key
    )
    shown = None if callback is None else await orchestrator.callbacks.register(run, callback)
    headers = {"Location": f"/api/orchestrator/runs/{run.id}"}
    if prefers_async(request):
        headers["Preference-Applied"] = "respond-async"
    if created:
        return json_response(run_info(run, shown), status=202, headers=headers)
    headers["Idempotent-Replayed"] = "true"
    return json_response(run_info(run, shown), status=replayed_status, headers=headers)
