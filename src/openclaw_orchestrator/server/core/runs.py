"""Durable runs: a delegation stored before its submit is answered, worked on by whichever
replica claims it, and finished once, by its lease holder (issue 12).

:class:`RunService` does three things. ``submit`` stores the run ``queued`` (and an event)
and wakes this replica's taker. The taker claims runs (:meth:`~..stores.runs.RunStore.claim_runs`:
queued ones and those whose holder's lease ran out) up to ``runs.max_running`` at a time
and works on each in a task: a run taken over from a dead holder is first judged by
:func:`~openclaw_orchestrator.domain.runs.recovery` (dispatched again only when it never
reached an instance or carries an idempotency key; else ``failed`` with the reason
``interrupted``). Before dispatching, the run is marked ``running`` and ``delivered``
(claim, then act: for a queued run, in the claim's own write,
:meth:`~..stores.runs.RunStore.start_runs`); the result or the error, with the route's
attempts, is then written under the lease, fenced by its epoch. The keeper renews the
leases of this replica's runs about once a second, stops the work of any it lost, and acts
on cancels asked on another replica. A cancel on the holder stops its task at once
(instance calls in flight are aborted with it).

The work itself (route, fanout, session send) is a :class:`RunWork` given by the caller,
so that tests drive the service without instances.

With tracing on, a run belongs to the trace of the request that submitted it: ``submit``
keeps that request's span as a W3C carrier in the stored request (:data:`RUN_TRACE_KEY`,
never shown: :func:`public_request`), and whichever replica works on the run does so in a
``run <kind>`` span whose parent it is, so the work's spans (attempts, ...) nest under it.
With tracing off nothing is stored and no span is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...domain.runs import (
    EventType,
    RunEvent,
    RunKind,
    RunRecord,
    RunState,
    cancelled_fanout,
    recovery,
)
from ...errors import ConflictError, NotFoundError, OrchestratorError, TimeoutExceededError
from ...settings import DEFAULT_MAX_HOPS, RunSettings
from ..delegation import RUN_HOPS_KEY, check_hops, current_hops
from ..logs import get_logger
from ..observability.observer import OFF, Observer
from ..stores.runs import MAX_EVENTS_PAGE, NewEvent, RunPage, RunQuery, RunStore, running_event
from .clock import Sleep

__all__ = ["RUN_TRACE_KEY", "Emit", "RunService", "RunWork", "new_run_id", "public_request"]

log = get_logger("orchestrator")

RUN_ID_PREFIX = "run_"
RUN_TRACE_KEY = "_trace"
"""The stored request's key holding the submitting request's span as a W3C carrier
(``traceparent``, ``tracestate``): internal, like :data:`~..delegation.RUN_HOPS_KEY`, but
never shown nor compared (a retry from another trace is the same run)."""
PURGE_EVERY = 60.0
"""Seconds between two purges of finished runs past their retention."""
PURGE_BATCH = 1000
WAIT_FIRST_POLL, WAIT_LAST_POLL = 0.02, 0.25
TRAILING: frozenset[EventType] = frozenset({"attempt"})
"""Events written with the run's end rather than each alone: a route's attempts, which it
emits once it has its result, just before the run ends (one write per run fewer)."""
RESULT_GRACE = 2.0
"""Seconds an event stream keeps looking for a finished run's result event."""

Emit = Callable[[EventType, dict[str, Any]], Awaitable[None]]
"""Record one event of the run being worked on (type, data)."""


class RunWork(Protocol):
    """Does a run's work: ``request`` as submitted, within ``timeout`` seconds; returns the
    result as JSON-ready data; emits events as it goes; raises the endpoint's errors."""

    async def __call__(
        self,
        kind: RunKind,
        request: dict[str, Any],
        *,
        timeout: float,
        run_id: str,
        idempotency_key: str | None,
        emit: Emit,
    ) -> Any: ...


def new_run_id() -> str:
    return RUN_ID_PREFIX + secrets.token_urlsafe(18)


@dataclass(slots=True)
class _Working:
    task: asyncio.Task[None]
    epoch: int
    cancel_asked: bool = False
    dispatched: bool = False
    dispatched_at: float = 0.0
    entries: list[dict[str, Any]] = field(default_factory=list)
    """A fanout's entries recorded so far: what a cancel keeps."""
    trailing: list[NewEvent] = field(default_factory=list)
    """Events recorded with the run's end, in its write (:data:`TRAILING`)."""
    started: RunRecord | None = None
    """The run as its claim started it (:meth:`~..stores.runs.RunStore.start_runs`)."""
    begun: bool = False
    """Whether its task ran at all (one cancelled before it began never did)."""
    span: Any = None
    """The run's span while it is worked on (tracing on), to note how it ended."""


class RunService:
    """Submits, works on and answers for durable runs (module docstring). ``clock`` is
    wall-clock epoch seconds (runs outlive the process)."""

    def __init__(
        self,
        store: RunStore,
        work: RunWork,
        settings: RunSettings,
        *,
        holder: str,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        on_finish: Callable[[RunRecord], None] | None = None,
        max_hops: int = DEFAULT_MAX_HOPS,
        on_state: Callable[[str], None] | None = None,
        observer: Observer = OFF,
    ) -> None:
        self._store, self._work, self._settings = store, work, settings
        self._max_hops = max_hops
        self._on_finish = on_finish
        self._on_state = on_state  # every state a run enters here (orchestrator_runs_total)
        self._observer = observer  # its tracing: a run's span joins its submit's trace
        self.holder = holder
        self._clock, self._sleep = clock, sleep
        self._working: dict[str, _Working] = {}
        self._wake = asyncio.Event()
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._loops: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<RunService holder={self.holder} working={len(self._working)}>"

    @property
    def leases_held(self) -> int:
        """Runs this replica holds the lease of and works on now (claimed, not yet let go):
        what a metrics scrape reads."""
        return len(self._working)

    # -- the API's side --------------------------------------------------------------------

    async def submit(
        self,
        kind: RunKind,
        request: dict[str, Any],
        *,
        timeout: float,
        idempotency_key: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """Store the run ``queued``; (the run, whether it is new). A key used before
        answers with that run if the request is the same, else a ``ConflictError``. A call
        at ``delegation.max_hops`` is refused (``delegation_loop``); a delegated one keeps
        its hop count in the request (:data:`~..delegation.RUN_HOPS_KEY`) for its work, and
        with tracing on the submitting request's span (:data:`RUN_TRACE_KEY`)."""
        check_hops(self._max_hops)
        if hops := current_hops():
            request = {**request, RUN_HOPS_KEY: hops}
        if (carrier := self._observer.trace_carrier()) is not None:
            request = {**request, RUN_TRACE_KEY: carrier}
        now = self._clock()
        record = RunRecord(
            id=new_run_id(),
            kind=kind,
            state="queued",
            request=request,
            created_at=now,
            updated_at=now,
            deadline_at=now + timeout,
            idempotency_key=idempotency_key,
        )
        queued: NewEvent = ("state", {"state": "queued"}, now)
        stored = await self._store.create_run(record, event=queued)
        if stored.id != record.id:
            if (stored.kind, _asked(stored.request)) != (kind, _asked(request)):
                raise ConflictError(
                    "Idempotency-Key was used for a different run",
                    field="Idempotency-Key",
                    details={"run_id": stored.id},
                )
            return stored, False
        self._wake.set()
        self._entered("queued")
        return stored, True

    async def get(self, run_id: str) -> RunRecord:
        found = await self._store.get_run(run_id)
        if found is None:
            raise NotFoundError(f"run {run_id!r} not found", field="run_id")
        return found

    async def wait(self, run_id: str, wait: float) -> RunRecord:
        """The run once finished, or as it is after ``wait`` seconds."""
        until = self._clock() + wait
        delay = WAIT_FIRST_POLL
        with self._watching(run_id) as changed:
            while True:
                changed.clear()
                run = await self.get(run_id)
                left = until - self._clock()
                if run.finished or left <= 0:
                    return run
                await self._pause(changed, min(delay, left))
                delay = min(delay * 2, WAIT_LAST_POLL)

    async def page(self, query: RunQuery) -> RunPage:
        return await self._store.list_runs(query)

    async def events(self, run_id: str, after: int, limit: int = MAX_EVENTS_PAGE) -> list[RunEvent]:
        await self.get(run_id)  # a 404 for an unknown run, not an empty list
        return await self._store.events(run_id, after, limit)

    async def follow(self, run_id: str, after: int = 0) -> AsyncIterator[RunEvent]:
        """The run's events numbered above ``after``, as they are recorded, until its final
        ``result`` event — written with the run's end, except for a queued run cancelled
        (just after), so looked for a while longer (:data:`RESULT_GRACE`) once it ended. A
        404 for an unknown run comes before the first event."""
        await self.get(run_id)
        delay = WAIT_FIRST_POLL
        ended_at: float | None = None
        with self._watching(run_id) as changed:
            while True:
                changed.clear()
                batch = await self._store.events(run_id, after, MAX_EVENTS_PAGE)
                for event in batch:
                    yield event
                    after = event.seq
                    if event.type == "result":
                        return
                if batch:
                    delay = WAIT_FIRST_POLL
                    continue
                if ended_at is None:
                    run = await self._store.get_run(run_id)
                    if run is None or run.finished:
                        ended_at = self._clock()
                elif self._clock() - ended_at > RESULT_GRACE:
                    return
                await self._pause(changed, delay)
                delay = min(delay * 2, WAIT_LAST_POLL)

    @contextlib.contextmanager
    def _watching(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever this replica records an event of ``run_id``: a waiter on
        the replica working on the run hears of it at once; others poll the store (another
        replica's runs), at most every :data:`WAIT_LAST_POLL` seconds."""
        changed = asyncio.Event()
        watchers = self._watchers.setdefault(run_id, set())
        watchers.add(changed)
        try:
            yield changed
        finally:
            watchers.discard(changed)
            if not watchers:
                self._watchers.pop(run_id, None)

    @staticmethod
    async def _pause(changed: asyncio.Event, most: float) -> None:
        """Until ``changed`` is set, or ``most`` seconds (the poll for other replicas)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(most):
                await changed.wait()

    async def cancel(self, run_id: str) -> RunRecord:
        """Ask for the run's cancel: a queued run nobody holds ends at once, one this replica
        works on is stopped now, another replica's within about a second."""
        at = self._clock()
        run = await self._store.request_cancel(run_id, at)
        if run is None:
            raise NotFoundError(f"run {run_id!r} not found", field="run_id")
        if run.state == "cancelled" and run.finished_at == at:  # ended by this very call
            await self._event(run_id, "result", {"state": "cancelled"})
            self._finished(run)
        self._stop_if_working(run_id)
        return run

    # -- background ------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._loops:
            self._loops = [
                asyncio.create_task(self._take_loop(), name="runs-taker"),
                asyncio.create_task(self._keep_loop(), name="runs-keeper"),
            ]

    async def aclose(self) -> None:
        """Stop taking runs and stop the work in flight: runs not yet dispatched are let go
        at once; a dispatched one is left to recovery (its lease runs out)."""
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        working = list(self._working.values())
        for item in working:
            item.task.cancel()
        for item in working:
            with contextlib.suppress(asyncio.CancelledError):
                await item.task
        for item in working:  # a task cancelled before it began did not let its run go
            if item.started is not None and not item.begun:
                await self._let_go(item.started, item)

    async def _take_loop(self) -> None:
        last_purge = 0.0
        while True:
            try:
                free = self._settings.max_running - len(self._working)
                if free > 0:
                    ttl = self._settings.lease_ttl
                    now = self._clock()
                    started, claimed = await self._store.start_runs(self.holder, ttl, free, now)
                    for run in started:
                        self._begin(run, started=True)
                    for run in claimed:
                        self._begin(run)
                if self._clock() - last_purge >= PURGE_EVERY:
                    last_purge = self._clock()
                    await self._store.purge_runs(
                        self._clock() - self._settings.retention, PURGE_BATCH
                    )
            except OrchestratorError as exc:  # the store is away: try again later
                log.warning("runs.take_failed", error=exc.code)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_interval):
                    await self._wake.wait()

    async def _keep_loop(self) -> None:
        every = min(1.0, self._settings.lease_ttl / 3)
        while True:
            await self._sleep(every)
            held = {run_id: item.epoch for run_id, item in self._working.items()}
            if not held:
                continue
            try:
                kept = await self._store.keep_runs(self.holder, held, self._settings.lease_ttl)
                for run_id in held.keys() - kept.keys():  # lost: whoever has it now decides
                    log.warning("runs.lease_lost", run_id=run_id)
                    self._stop_if_working(run_id, asked=False)
                for run_id, cancel_asked in kept.items():
                    if cancel_asked:
                        self._stop_if_working(run_id)
            except OrchestratorError as exc:
                log.warning("runs.renew_failed", error=exc.code)

    def _begin(self, run: RunRecord, *, started: bool = False) -> None:
        task = asyncio.create_task(self._run(run), name=f"run-{run.id}")
        self._working[run.id] = _Working(task, run.epoch, started=run if started else None)
        task.add_done_callback(lambda _t: self._done(run.id, task))

    def _done(self, run_id: str, task: asyncio.Task[None]) -> None:
        item = self._working.get(run_id)
        if item is not None and item.task is task:
            del self._working[run_id]
            self._wake.set()  # room for another run

    def _stop_if_working(self, run_id: str, *, asked: bool = True) -> None:
        item = self._working.get(run_id)
        if item is not None and not item.task.done():
            item.cancel_asked = asked
            item.task.cancel()

    # -- one run ---------------------------------------------------------------------------

    async def _run(self, run: RunRecord) -> None:
        item = self._working.get(run.id)
        if item is not None:
            item.begun = True
        with self._traced(run) as span:
            if item is not None:
                item.span = span
            try:
                await self._work_on(run, item)
            except asyncio.CancelledError:
                if item is not None and item.cancel_asked:
                    kept = self._kept(run, item)
                    await asyncio.shield(self._finish(run, "cancelled", kept, None))
                elif item is not None and not item.dispatched:  # shutting down: let it go now
                    await asyncio.shield(self._let_go(run, item))
                raise
            except OrchestratorError as exc:  # the store failed: the lease runs out, recovery
                log.warning("runs.write_failed", run_id=run.id, error=exc.code)
            except Exception:
                log.exception("runs.work_crashed", run_id=run.id)

    def _traced(self, run: RunRecord) -> contextlib.AbstractContextManager[Any]:
        """The run's span on this replica, a child of its submit's (:data:`RUN_TRACE_KEY`;
        a new trace for a run stored with tracing off); the shared no-op when off."""
        if self._observer.tracing is None:
            return self._observer.span("")
        carrier = run.request.get(RUN_TRACE_KEY)
        return self._observer.span(
            f"run {run.kind}",
            {"run.id": run.id, "run.kind": run.kind},
            carrier=carrier if isinstance(carrier, dict) else {},  # {}: a root, whatever is current
        )

    async def _let_go(self, run: RunRecord, item: _Working) -> None:
        """Give a run not yet dispatched back (shutting down): claimable at once, and one
        its claim started is ``queued`` again (not ``delivered``: it never reached an
        instance, so whoever takes it runs it)."""
        with contextlib.suppress(OrchestratorError):
            if item.started is not None:
                now = self._clock()
                back = {
                    "state": "queued",
                    "delivered": False,
                    "attempts": run.attempts - 1,
                    "started_at": None,
                    "updated_at": now,
                }
                queued: NewEvent = ("state", {"state": "queued"}, now)
                await self._store.update_run(run.id, self.holder, run.epoch, back, events=[queued])
            await self._store.release_run(run.id, self.holder, run.epoch)

    async def _start(self, run: RunRecord) -> RunRecord | None:
        """Decide what becomes of a claimed run its claim did not start, and start it if it
        is to run (marked ``running`` and ``delivered`` before it is dispatched): the run as
        started, or None when it ended here or the lease moved on."""
        now = self._clock()
        if run.cancel_requested:
            await self._finish(run, "cancelled", None, None)
            return None
        if now >= run.deadline_at:
            await self._finish(run, "timed_out", None, _timed_out(run))
            return None
        if run.state == "running":  # taken over from a holder that is gone
            decided = recovery(run, now)
            if decided == "interrupt":
                await self._finish(run, "failed", None, _interrupted(run))
                return None
        return await self._store.update_run(
            run.id,
            self.holder,
            run.epoch,
            {
                "state": "running",
                "delivered": True,
                "attempts": run.attempts + 1,
                "started_at": run.started_at or now,
                "updated_at": now,
            },
            events=(running_event(run.attempts + 1, now),),
        )

    async def _work_on(self, run: RunRecord, item: _Working | None) -> None:
        started = item.started if item is not None else None
        if started is None:
            started = await self._start(run)
            if started is None:
                return  # ended here, or the lease moved on between the claim and now
        self._entered("running")
        self._changed(run.id)
        if item is not None:
            item.dispatched, item.dispatched_at = True, self._clock()

        async def emit(kind: EventType, data: dict[str, Any]) -> None:
            if item is not None and kind in TRAILING:
                item.trailing.append((kind, data, self._clock()))
                return
            if kind == "entry" and item is not None:
                item.entries.append(data)
            await self._event(run.id, kind, data)

        try:
            result = await self._work(
                run.kind,
                public_request(run.request),
                timeout=max(run.deadline_at - self._clock(), 0.001),
                run_id=run.id,
                idempotency_key=run.idempotency_key,
                emit=emit,
            )
        except TimeoutExceededError as exc:
            await self._finish(started, "timed_out", None, exc.to_dict()["error"])
            return
        except OrchestratorError as exc:
            await self._finish(started, "failed", None, exc.to_dict()["error"])
            return
        await self._finish(started, "succeeded", result, None)

    def _kept(self, run: RunRecord, item: _Working) -> dict[str, Any] | None:
        """The result a cancelled run keeps: a fanout's entries so far, nothing else."""
        if run.kind != "fanout" or not item.dispatched:
            return None
        took = (self._clock() - item.dispatched_at) * 1000
        return cancelled_fanout(list(item.entries), total_ms=took, run_id=run.id)

    async def _finish(
        self, run: RunRecord, state: RunState, result: Any, error: dict[str, Any] | None
    ) -> None:
        now = self._clock()
        changes: dict[str, Any] = {"state": state, "finished_at": now, "updated_at": now}
        if result is not None:
            changes["result"] = result
            served_by = result.get("instance") if isinstance(result, dict) else None
            if isinstance(served_by, str):  # a route's or a send's instance
                changes["instance"] = served_by
        if error is not None:
            changes["error"] = error
        data: dict[str, Any] = {"state": state}
        if error is not None:
            data["error"] = error
        if result is not None:
            data["result"] = result
        item = self._working.get(run.id)
        before = () if item is None else item.trailing
        if item is not None and item.span is not None:
            item.span.set_attribute("run.state", state)
        done = await self._store.update_run(
            run.id, self.holder, run.epoch, changes, events=(*before, ("result", data, now))
        )
        if done is None:
            log.warning("runs.finish_refused", run_id=run.id, state=state)
            return
        self._changed(run.id)
        log.info("runs.finished", run_id=run.id, kind=run.kind, state=state)
        self._finished(done)

    def _finished(self, run: RunRecord) -> None:
        """Tell ``on_finish`` (the callbacks' deliverer: deliver now, not at its next poll)."""
        self._entered(run.state)
        if self._on_finish is not None:
            self._on_finish(run)

    def _entered(self, state: str) -> None:
        if self._on_state is not None:
            self._on_state(state)

    async def _event(self, run_id: str, kind: EventType, data: dict[str, Any]) -> None:
        await self._store.add_event(run_id, kind, data, self._clock())
        self._changed(run_id)

    def _changed(self, run_id: str) -> None:
        """Wake this replica's waiters on ``run_id`` (:meth:`_watching`)."""
        for changed in self._watchers.get(run_id, ()):
            changed.set()


def _asked(request: dict[str, Any]) -> dict[str, Any]:
    """A stored request without its hop count nor trace: the same key and body from another
    depth of a delegation chain, or another trace (a retry), is the same run."""
    if RUN_HOPS_KEY not in request and RUN_TRACE_KEY not in request:
        return request
    return {k: v for k, v in request.items() if k not in (RUN_HOPS_KEY, RUN_TRACE_KEY)}


def public_request(request: dict[str, Any]) -> dict[str, Any]:
    """A run's request as shown (API, MCP, callbacks) and as its work is given: without its
    trace carrier, which names the submitter's spans and is this service's bookkeeping, not
    the caller's body (the run's span carries it)."""
    if RUN_TRACE_KEY not in request:
        return request
    return {k: v for k, v in request.items() if k != RUN_TRACE_KEY}


def _timed_out(run: RunRecord) -> dict[str, Any]:
    error = TimeoutExceededError(f"run {run.id} reached its deadline before it finished")
    body: dict[str, Any] = error.to_dict()["error"]
    return body


def _interrupted(run: RunRecord) -> dict[str, Any]:
    return {
        "code": "interrupted",
        "message": f"the replica working on run {run.id} stopped after dispatching it; it "
        "may have run on an instance, so it is not run again (submit with an "
        "Idempotency-Key to allow that)",
        "details": {"attempts": run.attempts, "instance": run.instance},
    }
