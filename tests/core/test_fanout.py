"""Fanout retries of the same target, on the fake driver and the fake clock."""

from __future__ import annotations

from collections import Counter

from openclaw_orchestrator.domain.backoff import RetryScheduled
from openclaw_orchestrator.errors import InstanceDownError, InstanceError
from openclaw_orchestrator.models import FanoutRequest
from tests.core.builder import build
from tests.fakes import FakeCall


async def test_a_target_retries_itself_after_the_backoff() -> None:
    """A target answering 503 twice is retried on the same instance after each backoff (the
    Retry-After here), and its entry is ok on the third attempt; the others are untouched."""
    failures: Counter[str] = Counter()

    def flaky_a(call: FakeCall) -> object:
        if call.instance == "A" and failures["A"] < 2:
            failures["A"] += 1
            raise InstanceError("busy", instance="A", upstream_status=503, retry_after=0.25)
        return call.instance

    core = build(flaky_a, names="ABC")
    result = await core.orchestrator.fanout(
        FanoutRequest(payload=1, targets="A-C", retry=2), request_id="f1"
    )
    assert [(e.instance, e.status) for e in result.results] == [
        ("A", "ok"),
        ("B", "ok"),
        ("C", "ok"),
    ]
    assert Counter(core.driver.tried()) == {"A": 3, "B": 1, "C": 1}
    assert core.clock.sleeps == [0.25, 0.25]
    assert core.retries == [
        RetryScheduled("A", 1, 0.25, "instance_error", "f1", "fanout"),
        RetryScheduled("A", 2, 0.25, "instance_error", "f1", "fanout"),
    ]


async def test_fanout_gives_up_when_retries_run_out() -> None:
    """With retry=1 a target failing every time is tried twice and ends as an error entry."""

    def busy(call: FakeCall) -> object:
        raise InstanceError("busy", instance=call.instance, upstream_status=503)

    core = build(busy, names="A")
    result = await core.orchestrator.fanout(
        FanoutRequest(payload=1, targets="A", retry=1), request_id="f1"
    )
    assert result.results[0].status == "error"
    assert core.driver.tried() == ["A", "A"]
    assert len(core.clock.sleeps) == 1


async def test_a_refused_target_is_not_retried_once_down() -> None:
    """A refusal marks the instance down, and a down target has nowhere to retry."""

    def refuse(call: FakeCall) -> object:
        raise InstanceDownError("refused", instance=call.instance)

    core = build(refuse, names="A")
    result = await core.orchestrator.fanout(
        FanoutRequest(payload=1, targets="A", retry=3), request_id="f1"
    )
    assert result.results[0].status == "error"
    assert core.driver.tried() == ["A"]
    assert core.retries == []
