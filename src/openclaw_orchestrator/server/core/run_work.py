"""The work of a durable run, done by the orchestrator's own route, fanout and session send:
the request as submitted is validated again by the endpoint's model, with what is left of
the run's deadline as its timeout, and the hop count it was submitted with bound as the
call's (:mod:`..delegation`: its deliveries send what the submit's would have). A fanout
records each target's entry as an event as it arrives; a route records its attempts once
it ends. A route or send submitted with ``"stream": true`` records the instance's output
as ``delta`` events as it is produced, coalesced by :class:`DeltaLog`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from ...domain.runs import RunKind
from ...errors import OrchestratorError
from ...models import (
    FanoutEntry,
    FanoutRequest,
    FanoutResult,
    RouteRequest,
    RouteResult,
    SessionSendRequest,
)
from ...settings import Settings
from ..delegation import RUN_HOPS_KEY, bind_hops, reset_hops
from ..logs import get_logger
from .dispatcher import Streaming
from .runs import Emit
from .sessions import SessionService

__all__ = ["DELTA_INTERVAL", "Delegating", "DeltaLog", "OrchestratorWork"]

log = get_logger("runs")

DELTA_INTERVAL = 0.05
"""Seconds between a run's ``delta`` event writes, at least: a token-by-token stream is
recorded in pieces of what arrived meanwhile, not as one store write per token."""


class Delegating(Protocol):
    """What a run's work needs of the orchestrator (which builds it: no import back)."""

    settings: Settings

    def route(
        self, request: RouteRequest, *, request_id: str, stream: Streaming | None = None
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
        bound = bind_hops(body.pop(RUN_HOPS_KEY, 0))
        try:
            return await self._work(kind, body, run_id, idempotency_key, emit)
        finally:
            reset_hops(bound)

    async def _work(
        self,
        kind: RunKind,
        body: dict[str, Any],
        run_id: str,
        idempotency_key: str | None,
        emit: Emit,
    ) -> Any:
        if kind == "route":
            route = RouteRequest.model_validate(body)
            async with _delta_log(emit, route.stream) as stream:
                routed = await self.orchestrator.route(route, request_id=run_id, stream=stream)
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
        async with _delta_log(emit, send.stream) as stream:
            sent = await self.orchestrator.sessions.send(
                send.session_id,
                send.data,
                timeout=send.timeout,
                idempotency_key=idempotency_key,
                request_id=run_id,
                stream=stream,
            )
        return sent.model_dump(mode="json")


@contextlib.asynccontextmanager
async def _delta_log(emit: Emit, wanted: bool) -> AsyncIterator[Streaming | None]:
    """A :class:`DeltaLog`'s stream when the run asked to stream (else None), its last
    deltas written when the work ends, before anything else the run records."""
    if not wanted:
        yield None
        return
    deltas = DeltaLog(emit)
    try:
        yield Streaming(deltas)
    except Exception:
        await deltas.flush()  # what the instance sent before it failed, then the failure
        raise
    else:
        await deltas.flush()
    finally:
        deltas.close()


class DeltaLog:
    """Records a run's streamed output as ``delta`` events, in order, at most one write per
    ``interval`` seconds: deltas arriving in between wait (a timer writes them if no other
    delta comes), consecutive ``{"text": ...}`` pieces joined into one. Each event is
    ``{"instance": name, "deltas": [...]}``."""

    def __init__(
        self,
        emit: Emit,
        *,
        interval: float = DELTA_INTERVAL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._emit = emit
        self._interval = interval
        self._clock = clock or asyncio.get_running_loop().time
        self._pending: list[Any] = []
        self._instance = ""
        self._written = float("-inf")
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<DeltaLog pending={len(self._pending)}>"

    async def __call__(self, instance: str, delta: Any) -> None:
        """Take one delta: written now when the last write is ``interval`` old, else soon."""
        if self._pending and instance != self._instance:
            await self.flush()
        self._instance = instance
        _add(self._pending, delta)
        wait = self._written + self._interval - self._clock()
        if wait <= 0:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_after(wait))

    async def _flush_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._timer = None
        try:
            await self.flush()
        except OrchestratorError as exc:  # the store failed: so will the run's own writes
            log.warning("runs.delta_write_failed", error=exc.code)

    async def flush(self) -> None:
        """Write what is pending as one event (nothing when nothing is)."""
        async with self._lock:  # a timer's write and a delta's never pass each other
            if not self._pending:
                return
            deltas, self._pending = self._pending, []
            self._written = self._clock()
            await self._emit("delta", {"instance": self._instance, "deltas": deltas})

    def close(self) -> None:
        """Stop the timer (after a last :meth:`flush`, or when abandoning the rest)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _add(pending: list[Any], delta: Any) -> None:
    """Append ``delta``, joined to the last one when both are ``{"text": ...}`` alone."""
    text = _text(delta)
    if text is not None and pending and (last := _text(pending[-1])) is not None:
        pending[-1] = {"text": last + text}
    else:
        pending.append(delta)


def _text(delta: Any) -> str | None:
    if isinstance(delta, dict) and len(delta) == 1:
        text = delta.get("text")
        if isinstance(text, str):
            return text
    return None
