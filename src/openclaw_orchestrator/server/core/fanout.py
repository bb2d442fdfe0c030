"""Fanout: send to every target at once, gather the entries as they arrive (streamed or
batched), stop at the deadline or once the aggregate is settled, and aggregate. Each
target retries the same instance as the one retry decision allows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from ...domain.aggregation import (
    Aggregator,
    Entry,
    EntryStatus,
    can_meet,
    entry_counts,
    make_aggregator,
)
from ...domain.backoff import AttemptState, GiveUp, RetryAfter, RetryScheduled
from ...errors import (
    InstanceDownError,
    InstanceError,
    InvalidRequestError,
    OrchestratorError,
    TimeoutExceededError,
)
from ...models import FanoutEntry, FanoutRequest, FanoutResult
from ..logs import FrequentEvent
from .activity import Activity
from .clock import ms
from .dispatcher import Dispatcher
from .interfaces import InstanceRegistry
from .retrier import Retrier

__all__ = ["Fanout", "Reducer"]

Reducer = Callable[[list[dict[str, Any]]], Any]

_log_target = FrequentEvent("orchestrator", "orchestrator.fanout_target")


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Fanout:
    """Gathers one request's targets concurrently and aggregates their entries.

    Its parts are wired once and never change (frozen); ``reducers`` are the custom
    aggregates by name (a built-in name wins), kept as given: pass a copy."""

    registry: InstanceRegistry
    dispatcher: Dispatcher
    retrier: Retrier
    _: KW_ONLY
    reducers: Mapping[str, Reducer]
    activity: Activity | None = None  # the dashboard's feed (.activity): every fanout's outcome

    def __repr__(self) -> str:
        return f"<Fanout [reducers: {', '.join(sorted(self.reducers)) or 'none'}]>"

    async def fanout(self, request: FanoutRequest, *, request_id: str) -> FanoutResult:
        """Send to every target at once and aggregate; see :meth:`fanout_events`."""
        async for event in self.batches(request, request_id=request_id):
            if isinstance(event, FanoutResult):
                return event
        raise RuntimeError("fanout ended without a result")  # pragma: no cover

    async def fanout_events(
        self, request: FanoutRequest, *, request_id: str
    ) -> AsyncIterator[FanoutEntry | FanoutResult]:
        """Yield each target's entry as it arrives, then the aggregated result.

        Stops waiting at the deadline (the rest become ``timeout`` entries), as soon as the
        aggregate is settled (``first``, ``quorum``: the rest become ``cancelled``), or as
        soon as ``min_success`` can no longer be met. Raises when ``min_success`` is unmet,
        after every entry was yielded.
        """
        async for event in self.batches(request, request_id=request_id):
            if isinstance(event, FanoutResult):
                yield event
            else:
                for entry in event:
                    yield _wire_entry(entry)

    async def batches(
        self, request: FanoutRequest, *, request_id: str
    ) -> AsyncIterator[list[Entry] | FanoutResult]:
        """:meth:`fanout_events` with the entries as domain values, in batches (what
        arrived by one wake-up): the non-streamed fanout never puts them on the wire one by
        one, so it builds no wire model and takes no generator step per entry."""
        dispatcher = self.dispatcher
        dispatcher.check_hops()
        started = dispatcher.clock()
        deadline = dispatcher.deadline(request.timeout)
        attempt_timeout = dispatcher.attempt_timeout(request.attempt_timeout)
        names = self.registry.resolve(request.targets, field="targets")
        aggregator = self._aggregator(request, len(names))
        if request.min_success is not None and request.min_success > len(names):
            raise InvalidRequestError(
                f"min_success: {request.min_success} is more than the {len(names)} targets",
                field="min_success",
            )
        retries = request.retry or 0
        observer = dispatcher.observer
        observer.fanout(len(names))
        tasks = {
            asyncio.create_task(
                self._traced(
                    name,
                    self._call_target(
                        i, name, request.payload, deadline, attempt_timeout, retries, request_id
                    ),
                )
            ): (i, name)
            for i, name in enumerate(names)
        }
        arrived: list[Entry] = []
        try:
            async for batch in self._gather(tasks, arrived, aggregator, request, deadline):
                yield batch
        finally:
            for task in tasks:
                task.cancel()
        yield self._result(request, aggregator, arrived, started, request_id)

    def _aggregator(self, request: FanoutRequest, targets: int) -> Aggregator | None:
        return make_aggregator(
            request.aggregate,
            targets=targets,
            quorum=request.quorum,
            top_k=request.top_k,
            reducers=self.reducers,
        )

    async def _gather(
        self,
        tasks: dict[asyncio.Task[Entry], tuple[int, str]],
        arrived: list[Entry],
        aggregator: Aggregator | None,
        request: FanoutRequest,
        deadline: float,
    ) -> AsyncIterator[list[Entry]]:
        """Yield entries as their tasks finish, a batch per wake-up in target order, until
        all are in, the deadline passes or the aggregate/min_success settles it.

        Each task reports itself through a done callback, so a wake-up costs what finished,
        not what is pending (``asyncio.wait`` re-arms every pending task on each call,
        quadratic in the number of targets).
        """
        clock = self.dispatcher.clock
        finished = _Finished(asyncio.get_running_loop())
        for task in tasks:
            task.add_done_callback(finished.add)
        waiting = set(tasks)
        succeeded = 0
        started = clock()
        stop_status = "timeout"
        while waiting:
            if not finished.tasks:
                timeout = deadline - clock()
                if timeout <= 0:
                    break
                await finished.wait(timeout)
                continue
            done = finished.take()
            waiting.difference_update(done)
            batch = sorted((task.result() for task in done), key=_by_index)
            succeeded += sum(entry.status == "ok" for entry in batch)
            arrived.extend(batch)
            yield batch
            if aggregator is not None and aggregator.is_settled(arrived, len(waiting)):
                stop_status = "cancelled"
                break
            if not can_meet(request.min_success, succeeded, len(waiting)):
                stop_status = "cancelled"
                break
        unfinished = []
        for task in sorted(waiting, key=lambda t: tasks[t][0]):
            task.cancel()
            index, name = tasks[task]
            unfinished.append(_unfinished(index, name, stop_status, ms(clock() - started)))
        if unfinished:
            arrived.extend(unfinished)
            yield unfinished

    def _traced(self, name: str, target: Coroutine[Any, Any, Entry]) -> Coroutine[Any, Any, Entry]:
        """``target`` inside a ``fanout.target`` span when tracing is on; as it is when
        off (no span, no extra frame)."""
        observer = self.dispatcher.observer
        if observer.tracing is None:
            return target

        async def traced() -> Entry:
            with observer.span("fanout.target", {"instance": name}) as span:
                entry = await target
                span.set_attribute("fanout.status", entry.status)
                return entry

        return traced()

    async def _call_target(
        self,
        index: int,
        name: str,
        payload: Any,
        deadline: float,
        attempt_timeout: float | None,
        retries: int,
        request_id: str,
    ) -> Entry:
        """One fanout target to completion: never raises, the outcome is the entry."""
        dispatcher = self.dispatcher
        clock = dispatcher.clock
        started = clock()
        attempt = 0
        while True:
            try:
                rec = self.registry.get(name)
                if rec.health.is_down():
                    raise InstanceDownError(f"instance {name} is down", instance=name)
                if attempt == 0:  # the budget counts first attempts; retries spend it
                    self.retrier.rules.record_request(clock())
                until = dispatcher.attempt_deadline(deadline, attempt_timeout)
                result = await dispatcher.invoke(rec, payload, until, request_id)
            except OrchestratorError as exc:
                attempt += 1
                decision = await self._retry_decision(exc, name, attempt, retries, deadline)
                if isinstance(decision, GiveUp):
                    latency = ms(clock() - started)
                    status: EntryStatus = (
                        "timeout" if isinstance(exc, TimeoutExceededError) else "error"
                    )
                    _log_target(
                        request_id=request_id,
                        instance=name,
                        attempt=attempt,
                        outcome=status,
                        latency_ms=latency,
                        error=exc.code,
                    )
                    return Entry(name, status, None, exc.to_dict()["error"], latency, index)
                event = RetryScheduled(
                    name, attempt, decision.delay, exc.code, request_id, "fanout"
                )
                await self.retrier.wait(event)
                continue
            latency = ms(clock() - started)
            _log_target(
                request_id=request_id,
                instance=name,
                attempt=attempt + 1,
                outcome="ok",
                latency_ms=latency,
            )
            return Entry(name, "ok", result, None, latency, index)

    async def _retry_decision(
        self, exc: OrchestratorError, name: str, retry: int, retries: int, deadline: float
    ) -> RetryAfter | GiveUp:
        """Whether and when to retry the same target; nowhere to retry once its instance
        is down (or gone)."""
        failed = exc.instance or ""
        registry = self.registry
        is_down = failed not in registry or registry.get(failed).health.is_down()
        state = AttemptState(
            retry=retry,
            max_retries=retries,
            deadline=deadline,
            failed_target=name,
            next_target=None if is_down else name,
        )
        return await self.retrier.decide(state, exc)

    def _result(
        self,
        request: FanoutRequest,
        aggregator: Aggregator | None,
        arrived: list[Entry],
        started: float,
        request_id: str,
    ) -> FanoutResult:
        ordered = sorted(arrived, key=lambda e: e.index)
        succeeded, failed, timed_out = entry_counts(ordered)
        total_ms = ms(self.dispatcher.clock() - started)
        results = [_wire_entry(e) for e in ordered]
        observer = self.dispatcher.observer
        if observer.metrics is not None:
            for entry in ordered:
                observer.fanout_target(entry.instance, entry.status)
        if self.activity is not None:
            self.activity.fanout_done(request_id, results, total_ms, request.min_success)
        if request.min_success is not None and succeeded < request.min_success:
            cls = TimeoutExceededError if timed_out else InstanceError
            raise cls(
                f"min_success not met: {succeeded} of {request.min_success} required succeeded",
                details={
                    "results": [r.model_dump(mode="json") for r in results],
                    "succeeded": succeeded,
                    "failed": failed,
                    "timed_out": timed_out,
                    "total_ms": total_ms,
                },
            )
        value: Any = None
        error: dict[str, Any] | None = None
        if aggregator is not None:
            try:
                value = aggregator.reduce(arrived)
            except OrchestratorError as exc:
                error = exc.to_dict()["error"]
        return FanoutResult(
            aggregate=None if aggregator is None else aggregator.name,
            value=value,
            results=results,
            succeeded=succeeded,
            failed=failed,
            timed_out=timed_out,
            total_ms=total_ms,
            request_id=request_id,
            error=error,
        )


class _Finished:
    """Tasks that finished since the last :meth:`take`, and a wake-up for whoever waits."""

    __slots__ = ("_loop", "_waiter", "tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self.tasks: list[asyncio.Task[Entry]] = []

    def add(self, task: asyncio.Task[Entry]) -> None:
        """The done callback of every target's task."""
        self.tasks.append(task)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take(self) -> list[asyncio.Task[Entry]]:
        """Every task finished so far, once."""
        batch, self.tasks = self.tasks, []
        return batch

    async def wait(self, timeout: float) -> None:
        """Until a task finishes or ``timeout`` seconds pass, whichever is first."""
        self._waiter = waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _by_index(entry: Entry) -> int:
    return entry.index


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _unfinished(index: int, name: str, status: str, latency_ms: float) -> Entry:
    """The entry of a target the fanout stopped waiting for."""
    if status == "timeout":
        error = {"code": "timeout", "message": f"instance {name} did not answer in time"}
    else:
        error = {"code": "cancelled", "message": "not needed: the fanout had already settled"}
    return Entry(name, status, None, {**error, "instance": name}, latency_ms, index)  # type: ignore[arg-type]  # status is one of the two literals above


def _wire_entry(entry: Entry) -> FanoutEntry:
    """The wire model of a domain entry, read from its attributes of the same names.
    (Validated: pydantic's compiled ``from_attributes`` read of the five fields costs no
    more than keyword arguments, and much less than ``model_construct``'s Python loop.)"""
    return FanoutEntry.model_validate(entry, from_attributes=True)
