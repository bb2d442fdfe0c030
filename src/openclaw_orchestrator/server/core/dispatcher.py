"""The dispatcher: one call to one instance, within a deadline, counted as outstanding load,
its outcome fed to passive health detection. Routing, fanout and sessions all reach
instances through it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from ...domain.health import HealthChanged
from ...errors import (
    InstanceDownError,
    InstanceError,
    InvalidRequestError,
    OrchestratorError,
    TimeoutExceededError,
)
from ...models import InstanceSpec
from ...settings import Settings
from ..delegation import check_hops
from ..drivers.base import Delta, InstanceDriver
from ..logs import get_logger
from ..observability.observer import OFF, Observer
from .clock import Clock
from .health_monitor import failure_kind, report_health_change
from .registry import InstanceRecord

__all__ = ["Dispatcher", "DriverCall", "Relay", "RelayMany", "RelayNow", "Streaming"]

T = TypeVar("T")
DriverCall = Callable[[InstanceDriver, InstanceSpec, float], Awaitable[T]]
"""``op(driver, spec, seconds_left)``: one call to one instance."""

Relay = Callable[[str, Any], Awaitable[None]]
"""Receives ``(instance, delta)``: one piece of an instance's streamed output, in order."""
RelayMany = Callable[[str, list[Any]], Awaitable[None]]
"""Receives ``(instance, deltas)``: several pieces that arrived together, in order."""
RelayNow = Callable[[str, list[Any]], bool]
"""Takes ``(instance, deltas)`` at once and returns True, or takes none and returns False
(the caller then awaits the :data:`RelayMany`): a relay writing from the instance
connection's own callback (:class:`~..drivers.event_tap.EventTap`)."""

log = get_logger("orchestrator")


class Streaming:
    """One streaming request's deltas on their way to the caller's ``sink``, each tagged with
    the instance it came from.

    :meth:`to` gives the driver's :data:`~..drivers.base.Delta` for an attempt at an
    instance (called just before the attempt starts: ``on_begin`` runs then, once);
    :attr:`started` turns true as the first delta is handed on. From then on the caller has
    part of an attempt's output, so the request's failure is final: no retry, no failover,
    no migration (it would run the work a second time behind output already shown).

    ``sink_many`` takes the pieces one read brought together; ``sink_now`` (with
    ``sink_many``) takes them without an await when it can (:data:`RelayNow`)."""

    __slots__ = ("_on_begin", "_sink", "_sink_many", "_sink_now", "started")

    def __init__(
        self,
        sink: Relay,
        on_begin: Callable[[], None] | None = None,
        sink_many: RelayMany | None = None,
        sink_now: RelayNow | None = None,
    ) -> None:
        self._sink = sink
        self._on_begin = on_begin
        self._sink_many = sink_many
        self._sink_now = sink_now
        self.started = False

    def __repr__(self) -> str:
        return f"<Streaming started={self.started}>"

    def to(self, instance: str) -> Delta:
        """The delta callback of one attempt at ``instance`` (a
        :class:`~..drivers.base.DeltaBatch` when ``sink_many`` was given, a
        :class:`~..drivers.base.DeltaNow` with ``sink_now`` too)."""
        begin, self._on_begin = self._on_begin, None
        if begin is not None:
            begin()
        if self._sink_many is None:
            return _relay(self, instance)
        if self._sink_now is None:
            return _Attempt(self, instance)
        return _AttemptNow(self, instance)


def _relay(stream: Streaming, instance: str) -> Delta:
    sink = stream._sink

    async def relay(delta: Any) -> None:
        stream.started = True
        await sink(instance, delta)

    return relay


class _Attempt:
    """:meth:`Streaming.to`'s callback when the sink takes batches too."""

    __slots__ = ("_instance", "_stream")

    def __init__(self, stream: Streaming, instance: str) -> None:
        self._stream = stream
        self._instance = instance

    async def __call__(self, delta: Any) -> None:
        self._stream.started = True
        await self._stream._sink(self._instance, delta)

    async def many(self, deltas: list[Any]) -> None:
        stream = self._stream
        stream.started = True
        if stream._sink_many is not None:
            await stream._sink_many(self._instance, deltas)


class _AttemptNow(_Attempt):
    """:class:`_Attempt` when the sink takes pieces at once too (``sink_now``)."""

    __slots__ = ()

    def now(self, deltas: list[Any]) -> bool:
        """Hand ``deltas`` on at once if the sink can (:data:`RelayNow`)."""
        stream = self._stream
        if stream._sink_now is None or not stream._sink_now(self._instance, deltas):
            return False
        stream.started = True
        return True


class Dispatcher:
    """Calls instances through their drivers; owns the request deadlines' arithmetic."""

    def __init__(
        self,
        settings: Settings,
        drivers: Mapping[str, InstanceDriver],
        *,
        clock: Clock,
        observer: Observer = OFF,
    ) -> None:
        self._settings = settings
        self.observer = observer  # every part that reaches instances observes through it
        self._drivers = drivers
        self.clock = clock
        self._max_hops = settings.delegation.max_hops
        self.report_health: Callable[[HealthChanged | None], None] = report_health_change

    def __repr__(self) -> str:
        return f"<Dispatcher [drivers: {', '.join(sorted(self._drivers)) or 'none'}]>"

    def check_driver(self, spec: InstanceSpec) -> None:
        """400 naming ``driver`` when no driver of that kind was given."""
        if spec.driver not in self._drivers:
            known = ", ".join(sorted(self._drivers))
            raise InvalidRequestError(
                f"instance {spec.name}: unknown driver {spec.driver!r}; one of {known}",
                field="driver",
            )

    def check_hops(self) -> None:
        """Refuse the call being served (``delegation_loop``) when it came through
        ``delegation.max_hops`` deliveries already: before anything is delivered."""
        check_hops(self._max_hops)

    def fences(self, spec: InstanceSpec) -> bool:
        """Whether ``spec``'s driver enforces session fencing (``fences_sessions``)."""
        return self._drivers[spec.driver].fences_sessions

    def deadline(self, timeout: float | None) -> float:
        """The monotonic instant a request with ``timeout`` (or the default) must end by."""
        settings = self._settings
        budget = timeout if timeout is not None else settings.timeout
        if budget > settings.max_timeout:
            raise InvalidRequestError(
                f"timeout: {budget:g}s is over the maximum of {settings.max_timeout:g}s",
                field="timeout",
            )
        return self.clock() + budget

    def attempt_timeout(self, requested: float | None) -> float | None:
        """How long one attempt may take: the request's ``attempt_timeout``, else the
        configured one, else None (the whole remaining deadline)."""
        settings = self._settings
        limit = requested if requested is not None else settings.retry.attempt_timeout
        if limit is not None and limit > settings.max_timeout:
            raise InvalidRequestError(
                f"attempt_timeout: {limit:g}s is over the maximum of {settings.max_timeout:g}s",
                field="attempt_timeout",
            )
        return limit

    def attempt_deadline(self, deadline: float, attempt_timeout: float | None) -> float:
        """The end of an attempt starting now: never past the request's ``deadline``."""
        if attempt_timeout is None:
            return deadline
        return min(deadline, self.clock() + attempt_timeout)

    async def invoke(
        self,
        rec: InstanceRecord,
        payload: Any,
        deadline: float,
        request_id: str,
        on_delta: Delta | None = None,
    ) -> Any:
        """Run a task on ``rec`` (see :meth:`call`), streamed to ``on_delta`` when given."""
        if on_delta is not None:

            def streamed(
                driver: InstanceDriver, spec: InstanceSpec, timeout: float
            ) -> Awaitable[Any]:
                return driver.invoke(
                    spec, payload, timeout=timeout, request_id=request_id, on_delta=on_delta
                )

            return await self.call(rec, deadline, streamed)

        def invoke(driver: InstanceDriver, spec: InstanceSpec, timeout: float) -> Awaitable[Any]:
            return driver.invoke(spec, payload, timeout=timeout, request_id=request_id)

        return await self.call(rec, deadline, invoke)

    async def call(self, rec: InstanceRecord, deadline: float, op: DriverCall[T]) -> T:
        """:meth:`_call`, observed: an ``instance.attempt`` span (current while the driver
        sends, so the instance gets its ``traceparent``) and ``orchestrator_attempts``."""
        observer = self.observer
        if not observer.is_on:
            return await self._call(rec, deadline, op)
        if observer.tracing is None:  # metrics only (the default): no span to enter
            return await self._counted(rec, deadline, op)
        with observer.span("instance.attempt", {"instance": rec.name}):
            return await self._counted(rec, deadline, op)

    async def _counted(self, rec: InstanceRecord, deadline: float, op: DriverCall[T]) -> T:
        """:meth:`_call`, its outcome and duration counted (``orchestrator_attempts``)."""
        outcome = "ok"
        started = time.perf_counter()
        try:
            return await self._call(rec, deadline, op)
        except OrchestratorError as exc:
            outcome = exc.code
            raise
        except BaseException:  # cancelled (a fanout that stopped waiting), or a defect
            outcome = "cancelled"
            raise
        finally:
            self.observer.attempt(rec.name, outcome, time.perf_counter() - started)

    async def _call(self, rec: InstanceRecord, deadline: float, op: DriverCall[T]) -> T:
        """Call ``op`` with ``rec``'s driver and the time left before ``deadline``, counting
        it as outstanding load and feeding its outcome to passive health detection: only
        an unreachable or timed-out instance counts against it, never a refused payload, a
        reply over its size limit or the orchestrator's own overload."""
        clock = self.clock
        remaining = deadline - clock()
        if remaining <= 0:
            raise TimeoutExceededError("the request's deadline passed", instance=rec.name)
        driver = self._drivers[rec.spec.driver]
        rec.outstanding += 1
        started = clock()
        try:
            result = await op(driver, rec.spec, remaining)
        except OrchestratorError as exc:
            if isinstance(exc, InstanceDownError | TimeoutExceededError):
                event = rec.health.record_request_failure(failure_kind(exc), exc.message, clock())
                self.report_health(event)
            raise
        except Exception as exc:  # a driver broke its contract: still that instance's failure
            reason = f"instance {rec.name} failed: {type(exc).__name__}: {exc}"
            log.warning("orchestrator.driver_defect", instance=rec.name, reason=reason)
            raise InstanceError(reason, instance=rec.name) from exc
        finally:
            rec.outstanding -= 1
        self.report_health(rec.health.record_request_success(clock() - started, clock()))
        return result
