"""An in-memory instance driver and a fake clock: the core with no sockets and no waits.

Like httpx's ``MockTransport``, :class:`FakeDriver` hands every call to one function,
``handler(call) -> result`` (or raise an ``OrchestratorError``: refused, timed out, a 503),
and records the calls. Given ``deltas(call) -> [value, ...]`` it also streams: a call with
``on_delta`` awaits it with each value, in order, before the handler gives the result (or
fails). :class:`FakeClock` is the monotonic clock and a zero-wait sleep in
one: sleeping records the delay and moves the clock on, so retries and deadlines play out
in microseconds and tests can assert on the exact schedule.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.drivers.base import Delta, Fence, History, ProbeResult

__all__ = ["Deltas", "FakeCall", "FakeClock", "FakeDriver", "Handler"]


@dataclass(frozen=True, slots=True)
class FakeCall:
    """One call the core made: which operation, on which instance, with what (a session
    call's ``fence`` too, and whether it asked for a stream)."""

    op: str
    instance: str
    payload: Any = None
    timeout: float = 0.0
    session_id: str | None = None
    fence: Fence | None = None
    streamed: bool = False


Handler = Callable[[FakeCall], Any]
"""Returns the instance's result, or raises the error the call should end with."""
Deltas = Callable[[FakeCall], Iterable[Any]]
"""The deltas a streamed call hands its ``on_delta`` before the result."""


def answer_ok(call: FakeCall) -> Any:
    """The default handler: every call succeeds and echoes the payload."""
    return {"instance": call.instance, "echo": call.payload}


@dataclass
class FakeClock:
    """Monotonic time that only moves when someone sleeps (or a handler advances it)."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        """Zero real wait: record ``delay`` and move the clock past it."""
        self.sleeps.append(delay)
        self.now += delay


class FakeDriver:
    """An ``InstanceDriver`` whose instances are a function, not a server."""

    kind = "worker"
    fences_sessions = False  # its handler runs every delivery

    def __init__(self, handler: Handler = answer_ok, *, deltas: Deltas | None = None) -> None:
        self.handler = handler
        self.deltas = deltas
        self.calls: list[FakeCall] = []

    def __repr__(self) -> str:
        return f"<FakeDriver [{len(self.calls)} calls]>"

    def _run(self, call: FakeCall) -> Any:
        self.calls.append(call)
        return self.handler(call)

    async def _stream(self, call: FakeCall, on_delta: Delta | None) -> Any:
        """:meth:`_run`, first handing ``on_delta`` the call's deltas when both are given."""
        self.calls.append(call)
        if on_delta is not None and self.deltas is not None:
            for delta in self.deltas(call):
                await on_delta(delta)
        return self.handler(call)

    def tried(self, op: str = "invoke") -> list[str]:
        """The instances called with ``op``, in order."""
        return [c.instance for c in self.calls if c.op == op]

    async def invoke(
        self,
        instance: InstanceSpec,
        payload: Any,
        *,
        timeout: float,
        request_id: str,
        on_delta: Delta | None = None,
    ) -> Any:
        streamed = on_delta is not None
        call = FakeCall("invoke", instance.name, payload, timeout, streamed=streamed)
        return await self._stream(call, on_delta)

    async def session_send(
        self,
        instance: InstanceSpec,
        session_id: str,
        payload: Any,
        *,
        timeout: float,
        request_id: str,
        fence: Fence | None = None,
        on_delta: Delta | None = None,
    ) -> Any:
        call = FakeCall(
            "session_send", instance.name, payload, timeout, session_id, fence, on_delta is not None
        )
        return await self._stream(call, on_delta)

    async def session_restore(
        self,
        instance: InstanceSpec,
        session_id: str,
        history: History,
        *,
        timeout: float,
        request_id: str,
        fence: Fence | None = None,
    ) -> None:
        if isinstance(history, AsyncIterable):
            replayed = [pair async for pair in history]
        else:
            replayed = list(history)
        call = FakeCall("session_restore", instance.name, replayed, timeout, session_id, fence)
        self._run(call)

    async def session_close(
        self,
        instance: InstanceSpec,
        session_id: str,
        *,
        timeout: float,
        fence: Fence | None = None,
    ) -> None:
        self._run(FakeCall("session_close", instance.name, None, timeout, session_id, fence))

    async def probe(self, instance: InstanceSpec, *, timeout: float) -> ProbeResult:
        self._run(FakeCall("probe", instance.name, None, timeout))
        return ProbeResult(latency_s=0.0)

    async def aclose(self) -> None:
        """Nothing to release."""
