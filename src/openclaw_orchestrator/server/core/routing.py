"""Routing: the candidates of a request, the balancing policy's order over them, and the
failover loop that obeys the one retry decision (a failover goes to the next candidate)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any

from ...domain.backoff import AttemptState, GiveUp, RetryAfter, RetryScheduled
from ...domain.balancing import Balancer, Policy, Skip, select_next
from ...errors import InstanceDownError, NoHealthyInstanceError, OrchestratorError
from ...models import Attempt, RouteRequest, RouteResult
from ...models import Skip as SkipModel
from ..drivers.base import Delta
from ..logs import FrequentEvent, after_this_step
from .activity import Activity
from .clock import ms
from .dispatcher import Dispatcher, Streaming
from .interfaces import InstanceRegistry
from .retrier import Retrier

__all__ = ["STREAMED", "Routing"]

STREAMED = "not retried: part of the instance's output had already been streamed"
"""An error's ``details.reason`` when a streaming route failed after its first delta."""

_log_attempt = FrequentEvent("orchestrator", "orchestrator.attempt")

_OUTCOME_BY_CODE = {"instance_down": "down", "timeout": "timeout"}


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Routing:
    """Delivers a payload to one candidate, failing over within the deadline.

    Its parts are wired once and never change (frozen); ``max_retries`` is the default a
    request's ``retry`` overrides."""

    registry: InstanceRegistry
    dispatcher: Dispatcher
    retrier: Retrier
    balancer: Balancer
    _: KW_ONLY
    max_retries: int
    activity: Activity | None = None  # the dashboard's feed (.activity): every route's outcome

    def __repr__(self) -> str:
        return f"<Routing {self.balancer!r} max_retries={self.max_retries}>"

    def plan(self, names: list[str], policy: Policy | None = None) -> tuple[str, ...]:
        """The balancer's order over ``names`` (down ones left out)."""
        candidates = [self.registry.get(n).candidate() for n in names]
        return self.balancer.plan(candidates, policy=policy).order

    async def route(
        self, request: RouteRequest, *, request_id: str, stream: Streaming | None = None
    ) -> RouteResult:
        """Deliver the payload to one candidate, failing over within the deadline; with
        ``stream``, the instance streams its output there as it goes, and once part of it
        has reached the caller a failure is final (see :class:`~.dispatcher.Streaming`)."""
        dispatcher, registry = self.dispatcher, self.registry
        dispatcher.check_hops()
        started = dispatcher.clock()
        deadline = dispatcher.deadline(request.timeout)
        attempt_timeout = dispatcher.attempt_timeout(request.attempt_timeout)
        names = registry.resolve(request.instances, field="instances")
        policy = Policy(request.policy) if request.policy else None
        plan = self.balancer.plan([registry.get(n).candidate() for n in names], policy=policy)
        skipped: dict[str, str] = {s.instance: s.reason for s in plan.skipped}
        if not plan.order:
            raise self._noted(_nothing_to_route(names, skipped), request_id)
        retries = self.max_retries if request.retry is None else request.retry
        self.retrier.rules.record_request(started)
        attempts: list[Attempt] = []
        tried: list[str] = []
        name = plan.order[0]
        while True:
            tried.append(name)
            try:
                result = await self._attempt(
                    name,
                    request.payload,
                    dispatcher.attempt_deadline(deadline, attempt_timeout),
                    request_id,
                    attempts,
                    None if stream is None else stream.to(name),
                )
            except OrchestratorError as exc:
                if stream is not None and stream.started:
                    exc.details["reason"] = STREAMED
                    raise self._route_failed(exc, attempts, skipped, started, request_id) from None
                decision, skips = await self._next_step(
                    exc, plan.order, tried, len(attempts), retries, deadline
                )
                for skip in skips:
                    skipped.setdefault(skip.instance, skip.reason)
                if isinstance(decision, GiveUp):
                    if decision.reason is not None:
                        exc.details["reason"] = decision.reason
                    raise self._route_failed(exc, attempts, skipped, started, request_id) from None
                event = RetryScheduled(
                    decision.target, len(attempts), decision.delay, exc.code, request_id
                )
                await self.retrier.wait(event)
                if decision.target != name:
                    dispatcher.observer.failover(name)
                name = decision.target
                continue
            if skipped:  # the usual route skips nothing: no sets to build
                for skip_name in set(skipped) & set(tried):
                    if skipped[skip_name] != "already_tried":  # tried, so in attempts instead
                        del skipped[skip_name]
            routed = RouteResult(
                instance=name,
                result=result,
                attempts=attempts,
                skipped=[SkipModel(instance=n, reason=r) for n, r in skipped.items()],  # type: ignore[arg-type]  # reasons come from the domain's SkipReason literal
                total_ms=ms(dispatcher.clock() - started),
                request_id=request_id,
            )
            if self.activity is not None:
                self.activity.route_done(routed, names)
            return routed

    async def _next_step(
        self,
        exc: OrchestratorError,
        order: tuple[str, ...],
        tried: list[str],
        retry: int,
        retries: int,
        deadline: float,
    ) -> tuple[RetryAfter | GiveUp, list[Skip]]:
        """The retry decision after ``exc`` and the instances it passed over: the next
        candidate is the first untried live one, else the first live one again."""
        next_name, skips = select_next(order, tried, self._is_down)
        state = AttemptState(
            retry=retry,
            max_retries=retries,
            deadline=deadline,
            failed_target=tried[-1],
            next_target=next_name,
        )
        decision = await self.retrier.decide(state, exc)
        if isinstance(decision, RetryAfter) or decision.cause == "no_target":
            return decision, skips
        untried = [n for n in order if n not in tried]
        if decision.cause == "over_budget":
            return decision, [*skips, *(Skip(n, "over_budget") for n in untried)]
        if decision.cause == "deadline":
            return decision, [*skips, *(Skip(n, "deadline") for n in untried)]
        return decision, []  # final or exhausted: nothing was passed over

    def _is_down(self, name: str) -> bool:
        registry = self.registry
        return name not in registry or registry.get(name).health.is_down()

    def _route_failed(
        self,
        exc: OrchestratorError,
        attempts: list[Attempt],
        skipped: dict[str, str],
        started: float,
        request_id: str,
    ) -> OrchestratorError:
        exc.details = {
            **exc.details,
            "attempts": [a.model_dump(mode="json") for a in attempts],
            "skipped": skipped,
            "total_ms": ms(self.dispatcher.clock() - started),
        }
        return self._noted(exc, request_id)

    def _noted(self, exc: OrchestratorError, request_id: str) -> OrchestratorError:
        """``exc``, a failed route, recorded in the activity feed."""
        if self.activity is not None:
            self.activity.route_failed(exc, request_id)
        return exc

    async def _attempt(
        self,
        name: str,
        payload: Any,
        deadline: float,
        request_id: str,
        attempts: list[Attempt],
        on_delta: Delta | None,
    ) -> Any:
        """One try of one instance, recorded in ``attempts`` and fed to passive health."""
        clock = self.dispatcher.clock
        started = clock()
        try:
            result = await self.dispatcher.invoke(
                self.registry.get(name), payload, deadline, request_id, on_delta
            )
        except OrchestratorError as exc:
            latency = clock() - started
            outcome = _OUTCOME_BY_CODE.get(exc.code, "error")
            attempts.append(
                Attempt(
                    instance=name,
                    outcome=outcome,  # type: ignore[arg-type]  # one of the Attempt literals
                    latency_ms=ms(latency),
                    error=exc.to_dict()["error"],
                )
            )
            _log_attempt(
                request_id=request_id,
                instance=name,
                attempt=len(attempts),
                outcome=outcome,
                latency_ms=ms(latency),
                error=exc.code,
            )
            raise
        latency = clock() - started
        attempts.append(Attempt(instance=name, outcome="ok", latency_ms=ms(latency)))
        after_this_step(  # the request's last line: written after its reply
            _log_attempt,
            request_id=request_id,
            instance=name,
            attempt=len(attempts),
            outcome="ok",
            latency_ms=ms(latency),
        )
        return result


def _nothing_to_route(names: list[str], skipped: dict[str, str]) -> OrchestratorError:
    """Every candidate is down before the first attempt."""
    if len(names) == 1:
        return InstanceDownError(
            f"instance {names[0]} is down", instance=names[0], details={"skipped": skipped}
        )
    return NoHealthyInstanceError(
        f"no healthy instance among {', '.join(names) or 'the registry'}",
        details={"skipped": skipped},
    )
