"""The Orchestrator: the composition the API, CLI and SDK sit on.

It builds the core's parts from the settings and holds them; each does one job (see
:mod:`openclaw_orchestrator.server.core`): the :class:`~.core.dispatcher.Dispatcher` calls one
instance, the :class:`~.core.health_monitor.HealthMonitor` keeps the verdicts,
:class:`~.core.routing.Routing` chooses and fails over, :class:`~.core.fanout.Fanout`
gathers and aggregates, and :class:`~.session_service.SessionService` keeps sessions. The
domain *decides* (which instance, whether to retry and after how long, whether a fanout
can stop) and the parts *do*: await drivers, sleep, record outcomes and log them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...activity import InstancesActivity
from ...domain.addresses import AddressRefused
from ...domain.backoff import RetryBudget, RetryPolicy, RetryRules
from ...domain.balancing import Balancer, Policy
from ...domain.health import HealthPolicy
from ...errors import InvalidRequestError
from ...instance_url import url_host
from ...models import redact_url
from ...settings import Settings
from ..drivers.base import InstanceDriver
from ..drivers.callback_sender import CallbackSender
from ..logs import dropped_log_lines, get_logger
from ..observability.metrics import HeldLeases
from ..observability.observer import OFF, Observer
from ..stores.base import Store
from ..stores.leases import holder_id
from .activity import Activity
from .callbacks import CallbackDeliverer
from .clock import Clock, Sleep
from .dispatcher import Dispatcher, Streaming
from .fanout import Fanout, Reducer
from .fleet import Fleet, LocalFleet
from .health_monitor import HealthMonitor, report_health_change
from .interfaces import InstanceRegistry
from .registry import Registry
from .retrier import DEFAULT_RETRY_HOOKS, Retrier, RetryHook
from .routing import Routing
from .run_work import OrchestratorWork
from .runs import RunService
from .sessions import SessionService

if TYPE_CHECKING:  # the wire models only annotate the calls here; the parts build them
    from ... import models
    from .idempotency import IdempotencyKeys

__all__ = ["Orchestrator", "Reducer"]

log = get_logger("orchestrator")


def _health_policy(settings: Settings) -> HealthPolicy:
    """The health verdicts' policy from ``settings.health``, whose fields are exactly the
    policy's (a field added to one and not the other fails here, at start-up)."""
    return HealthPolicy(**settings.health.model_dump())


def _retry_rules(settings: Settings, rng: random.Random) -> RetryRules:
    """The one retry decision from ``settings.retry``."""
    r = settings.retry
    policy = RetryPolicy(max_retries=r.max_retries, base=r.backoff_base, cap=r.backoff_max)
    budget = RetryBudget(
        ratio=r.budget_ratio, window=r.budget_window, min_retries=r.budget_min_retries
    )
    return RetryRules(policy, budget, rng)


class Orchestrator:
    """Routes, fans out and health-checks over a registry of instances.

    ``clock`` and ``sleep`` are the whole core's time: a fake clock and a zero-wait sleep
    make retries and probes run instantly in tests. ``retry_hooks`` see every retry.
    ``registry`` replaces the in-memory one: every part reads instances and verdicts through
    its interface. ``fleet`` (:class:`~.shared_fleet.SharedFleet` for replicas on PostgreSQL)
    brings its own registry, writes registrations first, and owns probes one replica at a time.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        drivers: Mapping[str, InstanceDriver],
        reducers: Mapping[str, Reducer] | None = None,
        store: Store | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        retry_hooks: Sequence[RetryHook] = DEFAULT_RETRY_HOOKS,
        registry: InstanceRegistry | None = None,
        fleet: Fleet | None = None,
        observer: Observer = OFF,
    ) -> None:
        self.settings = settings
        self.observer = observer  # metrics and traces (..observability): every part's hooks
        drivers = dict(drivers)
        rng = rng or random.Random()  # noqa: S311  # jitter and load spreading, not secrets
        self._clock = clock
        policy = _health_policy(settings)
        if fleet is None:  # one process: the registry in memory is the whole truth
            fleet = LocalFleet(Registry(policy) if registry is None else registry)
        self._fleet = fleet
        self.registry: InstanceRegistry = fleet.registry
        self._dispatcher = Dispatcher(settings, drivers, clock=clock, observer=observer)
        self.activity = Activity(clock=clock)  # recent routes, fanouts, health: the dashboard's
        report = self._dispatcher.report_health = self.activity.reporting(report_health_change)
        self._monitor = HealthMonitor(
            self.registry,
            drivers,
            policy,
            clock=clock,
            sleep=sleep,
            gate=fleet.probe_gate,
            report=report,
            observer=observer,
        )
        if observer.metrics is not None:
            retry_hooks = (*retry_hooks, observer.retry)
        retrier = Retrier(
            _retry_rules(settings, rng),
            clock=clock,
            sleep=sleep,
            hooks=tuple(retry_hooks),
            observer=observer,
        )
        self.retrier = retrier  # its grants come from the fleet's syncer on PostgreSQL
        self.retry_budget: RetryBudget = retrier.rules.budget  # fleet-synced on PostgreSQL
        balancer = Balancer(Policy(settings.policy), rng=rng)
        self._routing = Routing(
            self.registry,
            self._dispatcher,
            retrier,
            balancer,
            max_retries=settings.retry.max_retries,
            activity=self.activity,
        )
        self._fanout = Fanout(
            self.registry,
            self._dispatcher,
            retrier,
            reducers=dict(reducers or {}),
            activity=self.activity,
        )
        self._address_policy = settings.instances.address_policy()
        self._started_at = clock()
        for spec in settings.instances.static:
            self._dispatcher.check_driver(spec)
            self.registry.upsert(spec, "config", clock())
        self._store = store
        self.idempotency: IdempotencyKeys[Any] | None = None  # set when replicas share keys
        self._sessions = (
            None
            if store is None
            else SessionService(
                self._dispatcher, self.registry, store, settings, place=self._routing.plan
            )
        )
        self._callbacks: CallbackDeliverer | None = None
        self._runs: RunService | None = None
        if store is not None:
            self._callbacks = CallbackDeliverer(
                store.callbacks,
                store.runs,
                CallbackSender(self._address_policy),
                settings.runs,
                self._address_policy,
                holder=holder_id(),
            )
            self._runs = RunService(
                store.runs,
                OrchestratorWork(self),
                settings.runs,
                holder=holder_id(),
                on_finish=self._callbacks.on_finish,
                max_hops=settings.delegation.max_hops,
                on_state=observer.run_state if observer.metrics is not None else None,
                observer=observer,
            )
        if observer.metrics is not None:
            observer.metrics.watch(self)

    @property
    def runs(self) -> RunService:
        """The durable runs; RuntimeError when the orchestrator was built without a store."""
        if self._runs is None:
            raise RuntimeError("this Orchestrator has no store, so no runs")
        return self._runs

    @property
    def callbacks(self) -> CallbackDeliverer:
        """The runs' callbacks; RuntimeError when the orchestrator was built without a store."""
        if self._callbacks is None:
            raise RuntimeError("this Orchestrator has no store, so no callbacks")
        return self._callbacks

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
        return self._routing.plan(names, policy)

    def deadline(self, timeout: float | None) -> float:
        """The monotonic instant a request with ``timeout`` (or the default) must end by."""
        return self._dispatcher.deadline(timeout)

    def __repr__(self) -> str:
        counts = self.registry.count_states()
        states = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no instances"
        return f"<Orchestrator [instances: {states}]>"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background prober (health checks and heartbeat expiry) and sweeper."""
        await self._fleet.start()  # the shared fleet's registrations and verdicts first
        await self._monitor.start()
        if self._sessions is not None:
            await self._sessions.start()
        if self._runs is not None:
            await self._runs.start()
        if self._callbacks is not None:
            await self._callbacks.start()

    async def aclose(self) -> None:
        """Stop background work; drivers and store are closed by whoever opened them."""
        if self._callbacks is not None:
            await self._callbacks.aclose()
        if self._runs is not None:
            await self._runs.aclose()
        if self._sessions is not None:
            await self._sessions.aclose()
        await self._monitor.aclose()
        await self._fleet.aclose()

    async def __aenter__(self) -> Orchestrator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- registry --------------------------------------------------------------------------

    async def register(self, spec: models.InstanceSpec) -> tuple[models.InstanceInfo, bool]:
        """Add or heartbeat a run-time instance; returns its info and whether it is new.
        A host ``instances.allow``/``deny`` refuses is a 400 naming ``url``; what a name
        resolves to is checked on every connect."""
        self._dispatcher.check_driver(spec)
        try:
            self._address_policy.check_host(url_host(spec.url))
        except AddressRefused as exc:
            raise InvalidRequestError(f"url: {exc}", field="url") from None
        record, created = await self._fleet.register(spec, self._clock())
        if created:
            log.info(
                "orchestrator.instance_registered", instance=spec.name, url=redact_url(spec.url)
            )
        return record.info(), created

    async def unregister(self, name: str) -> None:
        """Remove an instance (config or registered) until the next restart."""
        await self._fleet.unregister(name)
        log.info("orchestrator.instance_removed", instance=name)

    def instances(self) -> list[models.InstanceInfo]:
        """Every instance, in registry order."""
        return [rec.info() for rec in self.registry]

    # -- health ----------------------------------------------------------------------------

    def health(self, targets: models.TargetExpr | None = None) -> dict[str, str]:
        """``{"A": "healthy", ...}`` for the targeted instances."""
        return self._monitor.health(targets)

    def health_detail(
        self, targets: models.TargetExpr | None = None
    ) -> dict[str, models.HealthDetail]:
        """Per-instance state, latency, last check, failures and last error."""
        return self._monitor.health_detail(targets)

    def instances_activity(self) -> InstancesActivity:
        """Every instance now, for the dashboard and ``top``: verdict, reason, latency,
        in-flight calls, ejection expiry and health timeline (:mod:`.activity`)."""
        return self.activity.instances(self.registry)

    def fleet_rows(self) -> list[tuple[str, str, int, bool]]:
        """``(instance, health state, in-flight calls, probed here)`` per instance: what
        a metrics scrape reads (:class:`~..observability.metrics.FleetCollector`)."""
        owns = getattr(self._fleet, "owns_probes", None)  # SharedFleet; one process: all
        return [
            (rec.name, rec.health.state.value, rec.outstanding, owns is None or owns(rec.name))
            for rec in self.registry
        ]

    def held_leases(self) -> HeldLeases:
        """The leader roles, session leases and runs this replica holds now: what a metrics
        scrape reads (:class:`~..observability.metrics.FleetCollector`)."""
        sessions, runs = self._sessions, self._runs
        return HeldLeases(
            sessions.leading() if sessions is not None else {},
            sessions.leases_held if sessions is not None else None,
            runs.leases_held if runs is not None else None,
        )

    def probe_all(self) -> Coroutine[Any, Any, None]:
        """Probe every instance now (start-up, tests, ``health --refresh``)."""
        return self._monitor.probe_all()

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

    # -- requests (the parts' coroutines, returned as they are: no extra frame per request) --

    def route(
        self, request: models.RouteRequest, *, request_id: str, stream: Streaming | None = None
    ) -> Coroutine[Any, Any, models.RouteResult]:
        """Deliver the payload to one candidate, failing over within the deadline (its
        output streamed to ``stream`` as it is produced, when given)."""
        return self._routing.route(request, request_id=request_id, stream=stream)

    def fanout(
        self, request: models.FanoutRequest, *, request_id: str
    ) -> Coroutine[Any, Any, models.FanoutResult]:
        """Send to every target at once and aggregate; see :meth:`fanout_events`."""
        return self._fanout.fanout(request, request_id=request_id)

    def fanout_events(
        self, request: models.FanoutRequest, *, request_id: str
    ) -> AsyncIterator[models.FanoutEntry | models.FanoutResult]:
        """Yield each target's entry as it arrives, then the aggregated result (see
        :meth:`~.core.fanout.Fanout.fanout_events`)."""
        return self._fanout.fanout_events(request, request_id=request_id)
