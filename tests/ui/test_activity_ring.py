"""The activity ring on its own (no sockets): bounded, paged by cursor, health timelines
bounded per instance, live subscribers resumed and dropped when too slow."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from openclaw_orchestrator.domain.health import HealthChanged, HealthPolicy, HealthState
from openclaw_orchestrator.errors import InstanceDownError
from openclaw_orchestrator.models import Attempt, FanoutEntry, InstanceSpec, RouteResult
from openclaw_orchestrator.server.core.activity import Activity
from openclaw_orchestrator.server.core.registry import Registry


def routed(request_id: str, instance: str = "A") -> RouteResult:
    return RouteResult(
        instance=instance,
        result={"secret": "payload"},
        attempts=[Attempt(instance=instance, outcome="ok", latency_ms=1.0)],
        skipped=[],
        total_ms=1.5,
        request_id=request_id,
    )


def fake_activity(**knobs: int) -> Activity:
    """An activity on a fixed clock: monotonic 100 s is wall 1,000,000 s."""
    return Activity(clock=lambda: 100.0, wall=lambda: 1_000_000.0, **knobs)


def test_the_ring_keeps_the_newest_entries_and_says_so_in_its_repr() -> None:
    """Past its size the oldest entries go; ids keep growing."""
    activity = fake_activity(size=3)
    for n in range(5):
        activity.route_done(routed(f"r{n}"), ["A"])
    page = activity.page(limit=10)
    assert [e.request_id for e in page.entries] == ["r4", "r3", "r2"]
    assert [e.id for e in page.entries] == [5, 4, 3]
    assert page.next_before is None
    assert repr(activity) == "<Activity [entries: 3/3 | last id: 5 | subscribers: 0]>"


def test_pages_follow_before_until_the_oldest() -> None:
    """``next_before`` leads to the next older page; the last page has none."""
    activity = fake_activity()
    for n in range(5):
        activity.route_done(routed(f"r{n}"), ["A"])
    first = activity.page(limit=2)
    second = activity.page(before=first.next_before, limit=2)
    third = activity.page(before=second.next_before, limit=2)
    ids = [e.id for p in (first, second, third) for e in p.entries]
    assert ids == [5, 4, 3, 2, 1]
    assert third.next_before is None


def test_an_entry_never_holds_the_result() -> None:
    """Outcomes only: the route's result (a payload) is not kept."""
    activity = fake_activity()
    activity.route_done(routed("r"), ["A", "B"])
    [entry] = activity.page().entries
    assert "payload" not in entry.model_dump_json()
    assert entry.targets == ["A", "B"]
    assert entry.instance == "A"


def test_a_failed_route_keeps_its_attempts_and_skips() -> None:
    """A failure is recorded with the code, attempts and skipped candidates in its details."""
    activity = fake_activity()
    exc = InstanceDownError("instance A is down", instance="A")
    exc.details = {
        "attempts": [{"instance": "A", "outcome": "down", "latency_ms": 0.5}],
        "skipped": {"B": "down"},
        "total_ms": 2.0,
    }
    activity.route_failed(exc, "r1")
    [entry] = activity.page().entries
    assert entry.outcome == "instance_down"
    assert entry.targets == ["A", "B"]
    assert [(s.instance, s.reason) for s in entry.skipped] == [("B", "down")]
    assert entry.duration_ms == 2.0


@pytest.mark.parametrize(
    ("statuses", "min_success", "outcome"),
    [
        (["ok", "ok"], None, "ok"),
        (["ok", "cancelled"], None, "ok"),
        (["ok", "error"], None, "partial"),
        (["ok", "timeout"], 2, "timeout"),
        (["error", "error"], 1, "instance_error"),
    ],
)
def test_a_fanouts_outcome(statuses: list[str], min_success: int | None, outcome: str) -> None:
    """ok, partial, or the error the fanout answered when min_success was unmet."""
    activity = fake_activity()
    entries = [
        FanoutEntry(instance=name, status=status, latency_ms=1.0)  # type: ignore[arg-type]
        for name, status in zip("AB", statuses, strict=True)
    ]
    activity.fanout_done("f", entries, 3.0, min_success)
    [entry] = activity.page().entries
    assert entry.outcome == outcome
    assert entry.statuses == dict(zip("AB", statuses, strict=True))


def test_health_changes_make_a_bounded_timeline_in_wall_time() -> None:
    """Each change is an entry and a point on the instance's timeline (the last N kept),
    its monotonic time turned into wall time."""
    activity = fake_activity(timeline_size=2)
    states = [HealthState.UNKNOWN, HealthState.HEALTHY, HealthState.DOWN, HealthState.HEALTHY]
    for at, (old, new) in enumerate(itertools.pairwise(states)):
        activity.health_changed(HealthChanged("A", old, new, f"step {at}", 90.0 + at))
    activity.health_changed(None)  # no change: nothing
    page = activity.page()
    assert [e.outcome for e in page.entries] == ["healthy", "down", "healthy"]
    assert page.entries[0].old == "down"
    assert page.entries[-1].at.timestamp() == 1_000_000.0 - 10.0
    registry = Registry(HealthPolicy())
    registry.upsert(InstanceSpec(name="A", url="http://127.0.0.1:9"), "config", 0.0)
    [view] = activity.instances(registry).instances
    assert [p.state for p in view.timeline] == ["down", "healthy"]  # the last two
    assert view.in_flight == 0


async def test_a_subscriber_gets_new_entries_and_resumes_from_an_id() -> None:
    """Entries after the given id first, then each new one as it is recorded."""
    activity = fake_activity()
    activity.route_done(routed("old"), ["A"])
    stream = activity.subscribe(0)
    assert (await anext(stream)).request_id == "old"
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    activity.route_done(routed("new"), ["A"])
    assert (await waiting).request_id == "new"
    assert activity.subscribers == 1
    await stream.aclose()
    assert activity.subscribers == 0


async def test_a_slow_subscriber_is_dropped_not_waited_for() -> None:
    """Past its buffer a subscriber's stream ends; recording never blocks."""
    activity = fake_activity(subscriber_buffer=2)
    stream = activity.subscribe()
    waiting = asyncio.ensure_future(anext(stream, None))
    await asyncio.sleep(0)
    for n in range(5):
        activity.route_done(routed(f"r{n}"), ["A"])
    assert await waiting is None  # dropped: the end marker replaced its backlog
    assert activity.subscribers == 0
