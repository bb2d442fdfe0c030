"""The Orchestrator: the one core object that the API, CLI and SDK sit on.

It composes the pure domain (targets, balancing, health, backoff, aggregation) with the
drivers that reach instances. The domain *decides* — which instance, whether to retry and
after how long, whether a fanout can stop — and this module *does*: it awaits drivers,
sleeps, records outcomes and logs them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from .domain.addresses import AddressRefused
from .domain.aggregation import (
    Aggregator,
    Entry,
    EntryStatus,
    can_meet,
    entry_counts,
    make_aggregator,
)
from .domain.backoff import RetryBudget, RetryPolicy, compute_backoff, is_retryable
from .domain.balancing import Balancer, Policy, Skip, select_next
from .domain.health import FailureKind, HealthChanged, HealthPolicy
from .drivers.base import InstanceDriver
from .errors import (
    InstanceDownError,
    InstanceError,
    InvalidRequestError,
    NoHealthyInstanceError,
    OrchestratorError,
    OverloadedError,
    TimeoutExceededError,
)
from .instance_url import url_host
from .logs import FrequentEvent, after_this_step, dropped_log_lines, get_logger
from .models import (
    Attempt,
    FanoutEntry,
    FanoutRequest,
    FanoutResult,
    HealthDetail,
    InstanceInfo,
    InstanceSpec,
    RouteRequest,
    RouteResult,
    TargetExpr,
    redact_url,
)
from .models import Skip as SkipModel
from .registry import InstanceRecord, Registry
from .session_service import SessionService
from .settings import Settings
from .stores.base import Store

__all__ = ["Orchestrator", "Reducer"]

Reducer = Callable[[list[dict[str, Any]]], Any]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")
DriverCall = Callable[[InstanceDriver, InstanceSpec, float], Awaitable[T]]
"""``op(driver, spec, seconds_left)``: one call to one instance."""

log = get_logger("orchestrator")
_log_attempt = FrequentEvent("orchestrator", "orchestrator.attempt")
_log_target = FrequentEvent("orchestrator", "orchestrator.fanout_target")

_OUTCOME_BY_CODE = {"instance_down": "down", "timeout": "timeout"}


def _failure_kind(exc: OrchestratorError) -> FailureKind:
    if isinstance(exc, InstanceDownError):
        return FailureKind.REFUSED
    if isinstance(exc, TimeoutExceededError):
        return FailureKind.TIMEOUT
    return FailureKind.ERROR


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Orchestrator:
    """Routes, fans out and health-checks over a registry of instances."""

    def __init__(
        self,
        settings: Settings,
        *,
        drivers: Mapping[str, InstanceDriver],
        reducers: Mapping[str, Reducer] | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._drivers = dict(drivers)
        self._reducers = dict(reducers or {})
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311  # jitter and load spreading, not secrets
        self._sleep = sleep
        h = settings.health
        self._health_policy = HealthPolicy(
            interval=h.interval,
            probe_timeout=h.probe_timeout,
            degraded_latency=h.degraded_latency,
            failure_threshold=h.failure_threshold,
            down_backoff=h.down_backoff,
        )
        r = settings.retry
        self._retry_policy = RetryPolicy(
            max_retries=r.max_retries, base=r.backoff_base, cap=r.backoff_max
        )
        self._budget = RetryBudget(
            ratio=r.budget_ratio, window=r.budget_window, min_retries=r.budget_min_retries
        )
        self._balancer = Balancer(Policy(settings.policy), rng=self._rng)
        self._address_policy = settings.instances.address_policy()
        self.registry = Registry(self._health_policy)
        self._started_at = clock()
        self._prober: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()
        for spec in settings.instances.static:
            self._check_driver(spec)
            self.registry.upsert(spec, "config", self._clock())
        self._store = store
        self._sessions = None if store is None else SessionService(self, store)

    @property
    def sessions(self) -> SessionService:
        """The session service; RuntimeError when the orchestrator was built without a store."""
        if self._sessions is None:
            raise RuntimeError("this Orchestrator has no store, so no sessions")
        return self._sessions

    def clock(self) -> float:
        """Monotonic seconds, from the clock the orchestrator was given."""
        return self._clock()

    def plan(self, names: list[str], policy: Policy | None = None) -> tuple[str, ...]:
        """The balancer's order over ``names`` (down ones left out)."""
        candidates = [self.registry.get(n).candidate() for n in names]
        return self._balancer.plan(candidates, policy=policy).order

    def __repr__(self) -> str:
        counts = self.registry.count_states()
        states = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no instances"
        return f"<Orchestrator [instances: {states}]>"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background prober (health checks and heartbeat expiry) and sweeper."""
        if self._prober is None:
            self._prober = asyncio.create_task(self._probe_loop(), name="orchestrator-prober")
        if self._sessions is not None:
            await self._sessions.start()

    async def aclose(self) -> None:
        """Stop background work; drivers and store are closed by whoever opened them."""
        if self._sessions is not None:
            await self._sessions.aclose()
        tasks = [t for t in (self._prober, *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._prober = None

    async def __aenter__(self) -> Orchestrator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- registry --------------------------------------------------------------------------

    def register(self, spec: InstanceSpec) -> tuple[InstanceInfo, bool]:
        """Add or heartbeat a run-time instance; returns its info and whether it is new.
        A host ``instances.allow``/``deny`` refuses is a 400 naming ``url``; what a name
        resolves to is checked on every connect."""
        self._check_driver(spec)
        try:
            self._address_policy.check_host(url_host(spec.url))
        except AddressRefused as exc:
            raise InvalidRequestError(f"url: {exc}", field="url") from None
        record, created = self.registry.upsert(spec, "registered", self._clock())
        if created:
            log.info(
                "orchestrator.instance_registered", instance=spec.name, url=redact_url(spec.url)
            )
        return record.info(), created

    def unregister(self, name: str) -> None:
        """Remove an instance (config or registered) until the next restart."""
        self.registry.remove(name)
        log.info("orchestrator.instance_removed", instance=name)

    def instances(self) -> list[InstanceInfo]:
        """Every instance, in registry order."""
        return [rec.info() for rec in self.registry]

    def _check_driver(self, spec: InstanceSpec) -> None:
        if spec.driver not in self._drivers:
            known = ", ".join(sorted(self._drivers))
            raise InvalidRequestError(
                f"instance {spec.name}: unknown driver {spec.driver!r}; one of {known}",
                field="driver",
            )

    # -- health ----------------------------------------------------------------------------

    def health(self, targets: TargetExpr | None = None) -> dict[str, str]:
        """``{"A": "healthy", ...}`` for the targeted instances."""
        names = self.registry.resolve(targets, field="instances")
        return {n: self.registry.get(n).health.state.value for n in names}

    def health_detail(self, targets: TargetExpr | None = None) -> dict[str, HealthDetail]:
        """Per-instance state, latency, last check, failures and last error."""
        names = self.registry.resolve(targets, field="instances")
        return {n: self.registry.get(n).detail(self._to_wall) for n in names}

    def liveness(self) -> dict[str, Any]:
        """The orchestrator's own health: it is up, how its fleet looks, and whether its
        store can write. While it cannot, the status is "degraded" with the reason (the
        process is alive and routes and fanouts still work: no reason to restart it)."""
        counts = self.registry.count_states()
        body: dict[str, Any] = {
            "status": "healthy",
            "uptime_s": round(self._clock() - self._started_at, 3),
            "instances": {"total": len(self.registry), **counts},
            "logs": {"dropped": dropped_log_lines()},
        }
        if self._store is not None:
            storage = self._store.status()
            body["storage"] = storage.to_dict()
            if not storage.is_ok:
                body["status"] = "degraded"
                body["reason"] = f"storage {storage.state.value}: {storage.reason}"
        return body

    def _to_wall(self, mono: float) -> datetime:
        return datetime.now(UTC) - timedelta(seconds=self._clock() - mono)

    async def probe_all(self) -> None:
        """Probe every instance now (start-up, tests, ``health --refresh``)."""
        await asyncio.gather(*(self._probe(rec) for rec in self.registry))

    async def _probe_loop(self) -> None:
        policy = self._health_policy
        tick = max(0.02, min(1.0, policy.interval / 4, policy.down_backoff / 2))
        while True:
            now = self._clock()
            for gone in self.registry.expire(now):
                log.warning("orchestrator.instance_expired", instance=gone.name)
            for rec in self.registry:
                if not rec.probing and rec.health.is_due(now):
                    rec.probing = True
                    task = asyncio.create_task(self._probe(rec))
                    self._probes.add(task)
                    task.add_done_callback(self._probes.discard)
            await self._sleep(tick)

    async def _probe(self, rec: InstanceRecord) -> None:
        driver = self._drivers[rec.spec.driver]
        started = self._clock()
        try:
            result = await driver.probe(rec.spec, timeout=self._health_policy.probe_timeout)
        except OverloadedError as exc:  # ours (no fd, no buffer): the instance keeps its state
            rec.health.next_probe_at = self._clock() + self._health_policy.interval
            log.warning("orchestrator.probe_skipped", instance=rec.name, reason=exc.message)
        except OrchestratorError as exc:
            self._log_change(
                rec.health.record_probe_failure(_failure_kind(exc), exc.message, self._clock())
            )
        except Exception as exc:  # a defect, ours or a driver's: a failed probe, not a crash
            reason = f"probe failed: {type(exc).__name__}: {exc}"
            log.warning("orchestrator.probe_failed", instance=rec.name, reason=reason)
            self._log_change(
                rec.health.record_probe_failure(FailureKind.ERROR, reason, self._clock())
            )
        else:
            latency = self._clock() - started
            event = rec.health.record_probe_success(
                latency, self._clock(), degraded=result.degraded, detail=result.detail
            )
            self._log_change(event)
        finally:
            rec.probing = False

    def _log_change(self, event: HealthChanged | None) -> None:
        if event is not None:
            log.info(
                "orchestrator.health_changed",
                instance=event.instance,
                old=event.old.value,
                new=event.new.value,
                reason=event.reason,
            )

    # -- route -----------------------------------------------------------------------------

    def deadline(self, timeout: float | None) -> float:
        """The monotonic instant a request with ``timeout`` (or the default) must end by."""
        budget = timeout if timeout is not None else self.settings.timeout
        if budget > self.settings.max_timeout:
            raise InvalidRequestError(
                f"timeout: {budget:g}s is over the maximum of {self.settings.max_timeout:g}s",
                field="timeout",
            )
        return self._clock() + budget

    def _attempt_timeout(self, requested: float | None) -> float | None:
        """How long one attempt may take: the request's ``attempt_timeout``, else the
        configured one, else None (the whole remaining deadline)."""
        limit = requested if requested is not None else self.settings.retry.attempt_timeout
        if limit is not None and limit > self.settings.max_timeout:
            raise InvalidRequestError(
                f"attempt_timeout: {limit:g}s is over the maximum of "
                f"{self.settings.max_timeout:g}s",
                field="attempt_timeout",
            )
        return limit

    def _attempt_deadline(self, deadline: float, attempt_timeout: float | None) -> float:
        """The end of an attempt starting now: never past the request's ``deadline``."""
        if attempt_timeout is None:
            return deadline
        return min(deadline, self._clock() + attempt_timeout)

    async def route(self, request: RouteRequest, *, request_id: str) -> RouteResult:
        """Deliver the payload to one candidate, failing over within the deadline."""
        started = self._clock()
        deadline = self.deadline(request.timeout)
        attempt_timeout = self._attempt_timeout(request.attempt_timeout)
        names = self.registry.resolve(request.instances, field="instances")
        policy = Policy(request.policy) if request.policy else None
        plan = self._balancer.plan([self.registry.get(n).candidate() for n in names], policy=policy)
        skipped: dict[str, str] = {s.instance: s.reason for s in plan.skipped}
        if not plan.order:
            raise self._nothing_to_route(names, skipped)
        retries = self.settings.retry.max_retries if request.retry is None else request.retry
        self._budget.record_request(started)
        attempts: list[Attempt] = []
        tried: list[str] = []
        name = plan.order[0]
        while True:
            tried.append(name)
            try:
                result = await self._attempt(
                    name,
                    request.payload,
                    self._attempt_deadline(deadline, attempt_timeout),
                    request_id,
                    attempts,
                )
            except OrchestratorError as exc:
                step = self._next_step(exc, plan.order, tried, attempts, retries, deadline)
                next_name, delay, skips = step
                for skip in skips:
                    skipped.setdefault(skip.instance, skip.reason)
                if next_name is None:
                    raise self._route_failed(exc, attempts, skipped, started) from None
                log.info(
                    "orchestrator.retry_scheduled",
                    request_id=request_id,
                    instance=next_name,
                    retry=len(attempts),
                    delay_ms=_ms(delay),
                    after=exc.code,
                )
                await self._sleep(delay)
                name = next_name
                continue
            if skipped:  # the usual route skips nothing: no sets to build
                for skip_name in set(skipped) & set(tried):
                    if skipped[skip_name] != "already_tried":  # tried, so in attempts instead
                        del skipped[skip_name]
            return RouteResult(
                instance=name,
                result=result,
                attempts=attempts,
                skipped=[SkipModel(instance=n, reason=r) for n, r in skipped.items()],  # type: ignore[arg-type]  # reasons come from the domain's SkipReason literal
                total_ms=_ms(self._clock() - started),
                request_id=request_id,
            )

    def _next_step(
        self,
        exc: OrchestratorError,
        order: tuple[str, ...],
        tried: list[str],
        attempts: list[Attempt],
        retries: int,
        deadline: float,
    ) -> tuple[str | None, float, list[Skip]]:
        """Decide whether and where to retry after ``exc``: (next instance, delay, skips)."""
        untried = [n for n in order if n not in tried]
        if not is_retryable(exc):
            return None, 0.0, []
        if len(attempts) > retries:
            exc.details["reason"] = f"gave up after {retries} retries"
            return None, 0.0, []
        next_name, skips = select_next(order, tried, lambda n: self._is_down(n))
        if next_name is None:
            return None, 0.0, skips
        now = self._clock()
        if not self._budget.try_spend(now):
            exc.details["reason"] = "retry budget exhausted"
            return None, 0.0, [*skips, *(Skip(n, "over_budget") for n in untried)]
        retry_after = exc.retry_after if next_name == tried[-1] else None
        delay = compute_backoff(
            len(attempts), self._retry_policy, self._rng, retry_after=retry_after
        )
        if next_name != tried[-1] and isinstance(exc, InstanceDownError | TimeoutExceededError):
            # Refused: nothing was delivered, and another instance is not the one in trouble.
            # Timed out: the attempt already waited its whole attempt_timeout, and the
            # instance is marked down. Either way waiting more only adds latency.
            delay = 0.0

        if now + delay >= deadline:
            exc.details["reason"] = "deadline reached before the next retry"
            return None, 0.0, [*skips, *(Skip(n, "deadline") for n in untried)]
        return next_name, delay, skips

    def _is_down(self, name: str) -> bool:
        return name not in self.registry or self.registry.get(name).health.is_down()

    def _nothing_to_route(self, names: list[str], skipped: dict[str, str]) -> OrchestratorError:
        if len(names) == 1:
            return InstanceDownError(
                f"instance {names[0]} is down", instance=names[0], details={"skipped": skipped}
            )
        return NoHealthyInstanceError(
            f"no healthy instance among {', '.join(names) or 'the registry'}",
            details={"skipped": skipped},
        )

    def _route_failed(
        self,
        exc: OrchestratorError,
        attempts: list[Attempt],
        skipped: dict[str, str],
        started: float,
    ) -> OrchestratorError:
        exc.details = {
            **exc.details,
            "attempts": [a.model_dump(mode="json") for a in attempts],
            "skipped": skipped,
            "total_ms": _ms(self._clock() - started),
        }
        return exc

    async def _attempt(
        self,
        name: str,
        payload: Any,
        deadline: float,
        request_id: str,
        attempts: list[Attempt],
    ) -> Any:
        """One try of one instance, recorded in ``attempts`` and fed to passive health."""
        started = self._clock()
        try:
            result = await self._invoke(self.registry.get(name), payload, deadline, request_id)
        except OrchestratorError as exc:
            latency = self._clock() - started
            outcome = _OUTCOME_BY_CODE.get(exc.code, "error")
            attempts.append(
                Attempt(
                    instance=name,
                    outcome=outcome,  # type: ignore[arg-type]  # one of the Attempt literals
                    latency_ms=_ms(latency),
                    error=exc.to_dict()["error"],
                )
            )
            _log_attempt(
                request_id=request_id,
                instance=name,
                attempt=len(attempts),
                outcome=outcome,
                latency_ms=_ms(latency),
                error=exc.code,
            )
            raise
        latency = self._clock() - started
        attempts.append(Attempt(instance=name, outcome="ok", latency_ms=_ms(latency)))
        after_this_step(  # the request's last line: written after its reply
            _log_attempt,
            request_id=request_id,
            instance=name,
            attempt=len(attempts),
            outcome="ok",
            latency_ms=_ms(latency),
        )
        return result

    async def _invoke(
        self, rec: InstanceRecord, payload: Any, deadline: float, request_id: str
    ) -> Any:
        """Run a task on ``rec`` (see :meth:`call`)."""

        def invoke(driver: InstanceDriver, spec: InstanceSpec, timeout: float) -> Awaitable[Any]:
            return driver.invoke(spec, payload, timeout=timeout, request_id=request_id)

        return await self.call(rec, deadline, invoke)

    async def call(self, rec: InstanceRecord, deadline: float, op: DriverCall[T]) -> T:
        """Call ``op`` with ``rec``'s driver and the time left before ``deadline``, counting
        it as outstanding load and feeding its outcome to passive health detection: only
        an unreachable or timed-out instance counts against it, never a refused payload, a
        reply over its size limit or the orchestrator's own overload."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise TimeoutExceededError("the request's deadline passed", instance=rec.name)
        driver = self._drivers[rec.spec.driver]
        rec.outstanding += 1
        started = self._clock()
        try:
            result = await op(driver, rec.spec, remaining)
        except OrchestratorError as exc:
            if isinstance(exc, InstanceDownError | TimeoutExceededError):
                event = rec.health.record_request_failure(
                    _failure_kind(exc), exc.message, self._clock()
                )
                self._log_change(event)
            raise
        except Exception as exc:  # a driver broke its contract: still that instance's failure
            reason = f"instance {rec.name} failed: {type(exc).__name__}: {exc}"
            log.warning("orchestrator.driver_defect", instance=rec.name, reason=reason)
            raise InstanceError(reason, instance=rec.name) from exc
        finally:
            rec.outstanding -= 1
        self._log_change(rec.health.record_request_success(self._clock() - started, self._clock()))
        return result

    # -- fanout ----------------------------------------------------------------------------

    async def fanout(self, request: FanoutRequest, *, request_id: str) -> FanoutResult:
        """Send to every target at once and aggregate; see :meth:`fanout_events`."""
        async for event in self._fanout(request, request_id=request_id):
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
        async for event in self._fanout(request, request_id=request_id):
            if isinstance(event, FanoutResult):
                yield event
            else:
                for entry in event:
                    yield _wire_entry(entry)

    async def _fanout(
        self, request: FanoutRequest, *, request_id: str
    ) -> AsyncIterator[list[Entry] | FanoutResult]:
        """:meth:`fanout_events` with the entries as domain values, in batches (what
        arrived by one wake-up): the non-streamed fanout never puts them on the wire one by
        one, so it builds no wire model and takes no generator step per entry."""
        started = self._clock()
        deadline = self.deadline(request.timeout)
        attempt_timeout = self._attempt_timeout(request.attempt_timeout)
        names = self.registry.resolve(request.targets, field="targets")
        aggregator = self._aggregator(request, len(names))
        if request.min_success is not None and request.min_success > len(names):
            raise InvalidRequestError(
                f"min_success: {request.min_success} is more than the {len(names)} targets",
                field="min_success",
            )
        retries = request.retry or 0
        tasks = {
            asyncio.create_task(
                self._call_target(
                    i, name, request.payload, deadline, attempt_timeout, retries, request_id
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
        yield self._fanout_result(request, aggregator, arrived, started, request_id)

    def _aggregator(self, request: FanoutRequest, targets: int) -> Aggregator | None:
        return make_aggregator(
            request.aggregate,
            targets=targets,
            quorum=request.quorum,
            top_k=request.top_k,
            reducers=self._reducers,
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
        finished = _Finished(asyncio.get_running_loop())
        for task in tasks:
            task.add_done_callback(finished.add)
        waiting = set(tasks)
        succeeded = 0
        started = self._clock()
        stop_status = "timeout"
        while waiting:
            if not finished.tasks:
                timeout = deadline - self._clock()
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
            unfinished.append(_unfinished(index, name, stop_status, _ms(self._clock() - started)))
        if unfinished:
            arrived.extend(unfinished)
            yield unfinished

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
        started = self._clock()
        attempt = 0
        while True:
            try:
                rec = self.registry.get(name)
                if rec.health.is_down():
                    raise InstanceDownError(f"instance {name} is down", instance=name)
                if attempt == 0:  # the budget counts first attempts; retries spend it
                    self._budget.record_request(self._clock())
                until = self._attempt_deadline(deadline, attempt_timeout)
                result = await self._invoke(rec, payload, until, request_id)
            except OrchestratorError as exc:
                attempt += 1
                delay = self._fanout_retry_delay(exc, attempt, retries, deadline)
                if delay is None:
                    latency = _ms(self._clock() - started)
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
                await self._sleep(delay)
                continue
            latency = _ms(self._clock() - started)
            _log_target(
                request_id=request_id,
                instance=name,
                attempt=attempt + 1,
                outcome="ok",
                latency_ms=latency,
            )
            return Entry(name, "ok", result, None, latency, index)

    def _fanout_retry_delay(
        self, exc: OrchestratorError, attempt: int, retries: int, deadline: float
    ) -> float | None:
        """How long to wait before retrying the same target, or None to give up."""
        if attempt > retries or not is_retryable(exc) or self._is_down(exc.instance or ""):
            return None
        now = self._clock()
        if not self._budget.try_spend(now):
            return None
        delay = compute_backoff(attempt, self._retry_policy, self._rng, retry_after=exc.retry_after)
        return None if now + delay >= deadline else delay

    def _fanout_result(
        self,
        request: FanoutRequest,
        aggregator: Aggregator | None,
        arrived: list[Entry],
        started: float,
        request_id: str,
    ) -> FanoutResult:
        ordered = sorted(arrived, key=lambda e: e.index)
        succeeded, failed, timed_out = entry_counts(ordered)
        total_ms = _ms(self._clock() - started)
        results = [_wire_entry(e) for e in ordered]
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
    """The wire model of a domain entry. (Validated: pydantic's compiled validation of these
    five fields costs less than ``model_construct``'s Python loop.)"""
    return FanoutEntry(
        instance=entry.instance,
        status=entry.status,
        result=entry.result,
        error=entry.error,
        latency_ms=entry.latency_ms,
    )
