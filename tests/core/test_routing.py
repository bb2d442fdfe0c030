"""Route failover, backoff and retry budget on the fake driver and the fake clock.

Every test here builds the real core (``Orchestrator`` and its parts) with an in-memory
driver, an injected clock and a zero-wait sleep: the schedules are exact, and nothing
opens a socket or really sleeps.
"""

from __future__ import annotations

import pytest

from openclaw_orchestrator.domain.backoff import FleetCounts, RetryBudget, RetryScheduled
from openclaw_orchestrator.domain.health import HealthPolicy
from openclaw_orchestrator.errors import (
    InstanceDownError,
    InstanceError,
    InstanceRejectedError,
    TimeoutExceededError,
)
from openclaw_orchestrator.models import RouteRequest
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.server.core.registry import InstanceRecord, Registry
from openclaw_orchestrator.server.core.retrier import REGRANT_WAIT
from openclaw_orchestrator.settings import Settings
from tests.core.builder import build
from tests.fakes import FakeCall, FakeDriver, Handler


def refuse(*down: str) -> Handler:
    """A handler under which ``down`` refuse connections and the rest answer."""

    def handler(call: FakeCall) -> object:
        if call.instance in down:
            raise InstanceDownError(f"instance {call.instance} refused", instance=call.instance)
        return {"from": call.instance}

    return handler


def unavailable(call: FakeCall) -> object:
    """Every instance answers 503 with a Retry-After of half a second."""
    raise InstanceError("busy", instance=call.instance, upstream_status=503, retry_after=0.5)


async def test_refused_instance_fails_over_at_once_and_is_marked_down() -> None:
    """A refused candidate costs one attempt and no wait: the next one serves, the refused
    one is marked down by passive detection, and the hook saw one zero-delay retry."""
    core = build(refuse("A"))
    result = await core.orchestrator.route(
        RouteRequest(payload=1, instances=["A", "B"]), request_id="r1"
    )
    assert result.instance == "B"
    assert [(a.instance, a.outcome) for a in result.attempts] == [("A", "down"), ("B", "ok")]
    assert core.clock.sleeps == [0.0]
    assert core.retries == [RetryScheduled("B", 1, 0.0, "instance_down", "r1", "route")]
    assert core.orchestrator.health("A") == {"A": "down"}
    assert core.driver.tried() == ["A", "B"]


async def test_timed_out_instance_fails_over_without_backoff() -> None:
    """A timeout already waited its attempt_timeout: failing over waits nothing more."""

    def hang_a(call: FakeCall) -> object:
        if call.instance == "A":
            core.clock.now += call.timeout  # the attempt used its whole time
            raise TimeoutExceededError("no answer", instance="A")
        return "ok"

    core = build(hang_a)
    result = await core.orchestrator.route(
        RouteRequest(payload=1, instances=["A", "B"], attempt_timeout=0.2), request_id="r1"
    )
    assert result.instance == "B"
    assert core.driver.calls[0].timeout == pytest.approx(0.2)
    assert core.clock.sleeps == [0.0]


async def test_same_instance_retries_follow_the_backoff_schedule() -> None:
    """Retrying the only candidate waits the jittered backoff each time, stretched to the
    reply's Retry-After, and the hooks see exactly the delays slept."""
    core = build(unavailable, names="A", max_retries=3, backoff_base=0.05, backoff_max=2.0)
    with pytest.raises(InstanceError) as caught:
        await core.orchestrator.route(RouteRequest(payload=1, instances="A"), request_id="r1")
    assert core.driver.tried() == ["A"] * 4
    assert core.clock.sleeps == [0.5, 0.5, 0.5]  # Retry-After 0.5 > uniform(0, <= 0.2)
    assert [e.retry for e in core.retries] == [1, 2, 3]
    assert [e.delay for e in core.retries] == core.clock.sleeps
    assert caught.value.details["reason"] == "gave up after 3 retries"


async def test_backoff_without_retry_after_is_full_jitter_under_the_ceiling() -> None:
    """With no Retry-After each wait is uniform(0, min(cap, base * 2 ** (retry - 1)))."""

    def busy(call: FakeCall) -> object:
        raise InstanceError("busy", instance=call.instance, upstream_status=503)

    core = build(busy, names="A", max_retries=4, backoff_base=0.1, backoff_max=0.3)
    with pytest.raises(InstanceError):
        await core.orchestrator.route(RouteRequest(payload=1, instances="A"), request_id="r1")
    ceilings = [0.1, 0.2, 0.3, 0.3]
    assert len(core.clock.sleeps) == 4
    assert all(0.0 <= d <= c for d, c in zip(core.clock.sleeps, ceilings, strict=True))


async def test_retry_budget_stops_retries_once_spent() -> None:
    """With a budget of two retries per window and no share of traffic, the third failing
    route gives up at once: 'retry budget exhausted', the rest skipped as over_budget."""
    core = build(refuse("A", "B"), budget_min_retries=2, budget_ratio=0.0)
    request = RouteRequest(payload=1, instances=["A", "B"])
    for _ in range(2):
        with pytest.raises(InstanceDownError):
            await core.orchestrator.route(request, request_id="r")
        for name in "AB":  # both seen up again, so the next route tries them again
            core.orchestrator.registry.get(name).health.record_probe_success(0.0, core.clock())
    assert len(core.retries) == 2
    with pytest.raises(InstanceDownError) as caught:
        await core.orchestrator.route(request, request_id="r3")
    assert len(core.retries) == 2
    assert caught.value.details["reason"] == "retry budget exhausted"
    untried = {"A", "B"} - {caught.value.details["attempts"][0]["instance"]}
    assert caught.value.details["skipped"][untried.pop()] == "over_budget"


async def test_deadline_ends_retries_before_a_wait_that_would_pass_it() -> None:
    """A retry whose wait would end past the request's deadline is not made."""
    core = build(unavailable, names="A", max_retries=3)
    with pytest.raises(InstanceError) as caught:
        await core.orchestrator.route(
            RouteRequest(payload=1, instances="A", timeout=0.8), request_id="r1"
        )
    assert core.clock.sleeps == [0.5]  # the second 0.5 s wait would end at 1.0 > 0.8
    assert caught.value.details["reason"] == "deadline reached before the next retry"


async def test_refused_payload_is_final() -> None:
    """A 4xx from the instance is the caller's problem: no retry, no failover."""

    def reject(call: FakeCall) -> object:
        raise InstanceRejectedError("bad payload", instance=call.instance, upstream_status=400)

    core = build(reject)
    with pytest.raises(InstanceRejectedError) as caught:
        await core.orchestrator.route(
            RouteRequest(payload=1, instances=["A", "B"]), request_id="r1"
        )
    assert len(core.driver.tried()) == 1
    assert core.retries == []
    assert "reason" not in caught.value.details


async def test_outstanding_load_returns_to_zero() -> None:
    """The dispatcher counts a call as outstanding only while it runs, failed or not."""
    core = build(refuse("A"))
    await core.orchestrator.route(RouteRequest(payload=1, instances=["A", "B"]), request_id="r")
    assert [i.outstanding for i in core.orchestrator.instances()] == [0, 0]


async def test_the_parts_read_the_registry_they_are_given() -> None:
    """A registry passed in (as a shared one would be) is the one routing and health read."""

    class CountingRegistry(Registry):
        def __init__(self) -> None:
            super().__init__(HealthPolicy())
            self.lookups = 0

        def get(self, name: str) -> InstanceRecord:
            self.lookups += 1
            return super().get(name)

    registry = CountingRegistry()
    settings = Settings.model_validate({"instances": [{"name": "A", "url": "http://127.0.0.1:9"}]})
    orchestrator = Orchestrator(settings, drivers={"worker": FakeDriver()}, registry=registry)
    result = await orchestrator.route(RouteRequest(payload=1, instances="A"), request_id="r")
    assert result.instance == "A"
    assert "A" in registry
    assert registry.lookups > 0
    assert orchestrator.health("A") == {"A": "healthy"}


class FleetGrants:
    """A fleet syncer stand-in: the fleet has headroom the budget may not spend until a
    new grant comes; ``regrant`` deals it (``units``), or times out when ``units`` is None."""

    def __init__(self, core_budget: RetryBudget, now: float, units: int | None) -> None:
        self.budget, self.now, self.units = core_budget, now, units
        self.waits: list[float] = []

    async def regrant(self, timeout: float) -> bool:
        self.waits.append(timeout)
        if self.units is None:
            return False
        self.budget.observe_fleet(
            FleetCounts(requests=0, retries=0, replicas=3), self.now, granted=self.units
        )
        return True


def granted_nothing(core_budget: RetryBudget, now: float) -> None:
    """Three replicas, the fleet with all its headroom, this replica granted none of it."""
    core_budget.observe_fleet(FleetCounts(requests=0, retries=0, replicas=3), now, granted=0)


async def test_a_retry_refused_only_by_the_grant_waits_for_a_new_grant() -> None:
    """The fleet has headroom but this replica's grant is spent: the retry waits for the
    syncer's next exchange and goes ahead with the new grant."""
    core = build(refuse("A"), names="AB")
    grants = FleetGrants(core.orchestrator.retry_budget, core.clock(), units=2)
    core.orchestrator.retrier.grants = grants
    granted_nothing(core.orchestrator.retry_budget, core.clock())
    result = await core.orchestrator.route(
        RouteRequest(payload=1, instances=["A", "B"]), request_id="r"
    )
    assert result.instance == "B"
    assert len(grants.waits) == 1
    assert 0 < grants.waits[0] <= REGRANT_WAIT


async def test_no_new_grant_in_time_gives_up_as_over_budget() -> None:
    core = build(refuse("A"), names="AB")
    grants = FleetGrants(core.orchestrator.retry_budget, core.clock(), units=None)
    core.orchestrator.retrier.grants = grants
    granted_nothing(core.orchestrator.retry_budget, core.clock())
    with pytest.raises(InstanceDownError) as caught:
        await core.orchestrator.route(RouteRequest(payload=1, instances=["A", "B"]), request_id="r")
    assert caught.value.details["reason"] == "retry budget exhausted"
    assert len(grants.waits) == 1


async def test_a_fleet_without_headroom_refuses_without_waiting() -> None:
    """Refused by the fleet's total, not by the grant: no wait, the same answer at once."""
    core = build(refuse("A"), names="AB", budget_min_retries=0, budget_ratio=0.0)
    grants = FleetGrants(core.orchestrator.retry_budget, core.clock(), units=2)
    core.orchestrator.retrier.grants = grants
    granted_nothing(core.orchestrator.retry_budget, core.clock())
    with pytest.raises(InstanceDownError):
        await core.orchestrator.route(RouteRequest(payload=1, instances=["A", "B"]), request_id="r")
    assert grants.waits == []
