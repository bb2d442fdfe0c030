"""The work of a durable run, done by the orchestrator's own route, fanout and session send:
the request as submitted is validated again by the endpoint's model, with what is left of
the run's deadline as its timeout. A fanout records each target's entry as an event as it
arrives; a route records its attempts once it ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from ...domain.runs import RunKind
from ...models import (
    FanoutEntry,
    FanoutRequest,
    FanoutResult,
    RouteRequest,
    RouteResult,
    SessionSendRequest,
)
from ...settings import Settings
from .runs import Emit
from .sessions import SessionService

__all__ = ["Delegating", "OrchestratorWork"]


class Delegating(Protocol):
    """What a run's work needs of the orchestrator (which builds it: no import back)."""

    settings: Settings

    def route(
        self, request: RouteRequest, *, request_id: str
    ) -> Coroutine[Any, Any, RouteResult]: ...

    def fanout_events(
        self, request: FanoutRequest, *, request_id: str
    ) -> AsyncIterator[FanoutEntry | FanoutResult]: ...

    @property
    def sessions(self) -> SessionService: ...


@dataclass(frozen=True, slots=True)
class OrchestratorWork:
    """:class:`~.runs.RunWork` on ``orchestrator``."""

    orchestrator: Delegating

    async def __call__(
        self,
        kind: RunKind,
        request: dict[str, Any],
        *,
        timeout: float,
        run_id: str,
        idempotency_key: str | None,
        emit: Emit,
    ) -> Any:
        # a run stored under a larger max_timeout (since lowered) gets the current one
        body = {**request, "timeout": min(timeout, self.orchestrator.settings.max_timeout)}
        if kind == "route":
            routed = await self.orchestrator.route(
                RouteRequest.model_validate(body), request_id=run_id
            )
            for attempt in routed.attempts:
                await emit("attempt", attempt.model_dump(mode="json"))
            return routed.model_dump(mode="json")
        if kind == "fanout":
            events = self.orchestrator.fanout_events(
                FanoutRequest.model_validate(body), request_id=run_id
            )
            async for item in events:
                if isinstance(item, FanoutEntry):
                    await emit("entry", item.model_dump(mode="json"))
                else:
                    return item.model_dump(mode="json")
            raise RuntimeError("a fanout's events ended without its result")
        send = SessionSendRequest.model_validate(body)
        sent = await self.orchestrator.sessions.send(
            send.session_id,
            send.data,
            timeout=send.timeout,
            idempotency_key=idempotency_key,
            request_id=run_id,
        )
        return sent.model_dump(mode="json")
