"""The run service on a real SQLite store with a scripted work function (no instances):
what a replica does with runs it takes, including runs taken over from a holder that died."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openclaw_orchestrator.domain.runs import RunKind, RunRecord
from openclaw_orchestrator.errors import InstanceDownError
from openclaw_orchestrator.server.core.runs import Emit, RunService
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url
from openclaw_orchestrator.settings import RunSettings

SETTINGS = RunSettings(lease_ttl=1.0, poll_interval=0.05)


class Work:
    """Answers ``{"ok": n}``, after ``delay`` seconds; remembers every call."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.calls: list[str] = []
        self.called = asyncio.Event()

    async def __call__(
        self,
        kind: RunKind,
        request: dict[str, Any],
        *,
        timeout: float,
        run_id: str,
        idempotency_key: str | None,
        emit: Emit,
    ) -> Any:
        self.calls.append(run_id)
        self.called.set()
        await emit("attempt", {"instance": "A"})
        await asyncio.sleep(self.delay)
        if self.fail:
            raise InstanceDownError("instance A refused", instance="A")
        return {"ok": len(self.calls)}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(sqlite_url(tmp_path))
    await s.open()
    yield s
    await s.aclose()


async def until_finished(service: RunService, run_id: str) -> RunRecord:
    return await service.wait(run_id, 5.0)


async def orphan(store: SqliteStore, *, delivered: bool, key: str | None = None) -> str:
    """A run a replica took, marked running (and delivered), then died holding."""
    now = time.time()
    record = RunRecord(
        id="run_orphan",
        kind="route",
        state="queued",
        request={},
        created_at=now,
        updated_at=now,
        deadline_at=now + 60,
        idempotency_key=key,
    )
    await store.runs.create_run(record)
    (held,) = await store.runs.claim_runs("dead", 0.1, 1)
    changes = {"state": "running", "delivered": delivered, "attempts": 1}
    assert await store.runs.update_run(held.id, "dead", held.epoch, changes) is not None
    await asyncio.sleep(0.15)  # its lease runs out
    return held.id


async def test_a_submitted_run_is_worked_on_once_and_succeeds(store: SqliteStore) -> None:
    work = Work()
    service = RunService(store.runs, work, SETTINGS, holder="me")
    await service.start()
    try:
        run, created = await service.submit("route", {"payload": 1}, timeout=10)
        assert created
        assert run.state == "queued"
        done = await until_finished(service, run.id)
    finally:
        await service.aclose()
    assert (done.state, done.result, done.attempts, done.delivered) == (
        "succeeded",
        {"ok": 1},
        1,
        True,
    )
    assert work.calls == [run.id]


async def test_a_failure_is_recorded_with_the_endpoints_error(store: SqliteStore) -> None:
    service = RunService(store.runs, Work(fail=True), SETTINGS, holder="me")
    await service.start()
    try:
        run, _ = await service.submit("route", {}, timeout=10)
        done = await until_finished(service, run.id)
    finally:
        await service.aclose()
    assert done.state == "failed"
    assert done.error is not None
    assert (done.error["code"], done.error["instance"]) == ("instance_down", "A")


async def test_a_delivered_run_of_a_dead_holder_is_not_run_again(store: SqliteStore) -> None:
    run_id = await orphan(store, delivered=True)
    work = Work()
    service = RunService(store.runs, work, SETTINGS, holder="me")
    await service.start()
    try:
        done = await until_finished(service, run_id)
    finally:
        await service.aclose()
    assert done.state == "failed"
    assert done.error is not None
    assert done.error["code"] == "interrupted"
    assert work.calls == []


@pytest.mark.parametrize(("delivered", "key"), [(False, None), (True, "k1")])
async def test_a_run_of_a_dead_holder_is_run_again_where_that_is_safe(
    store: SqliteStore, delivered: bool, key: str | None
) -> None:
    """Never reached an instance, or carries an idempotency key: dispatched again."""
    run_id = await orphan(store, delivered=delivered, key=key)
    work = Work()
    service = RunService(store.runs, work, SETTINGS, holder="me")
    await service.start()
    try:
        done = await until_finished(service, run_id)
    finally:
        await service.aclose()
    assert (done.state, done.attempts) == ("succeeded", 2)
    assert work.calls == [run_id]


async def test_cancel_stops_the_work_in_flight(store: SqliteStore) -> None:
    work = Work(delay=30.0)
    service = RunService(store.runs, work, SETTINGS, holder="me")
    await service.start()
    try:
        run, _ = await service.submit("route", {}, timeout=60)
        await work.called.wait()
        await service.cancel(run.id)
        done = await until_finished(service, run.id)
    finally:
        await service.aclose()
    assert done.state == "cancelled"
    events = await store.runs.events(run.id, 0, 100)
    assert [e.data.get("state") for e in events if e.type in ("state", "result")] == [
        "queued",
        "running",
        "cancelled",
    ]


async def test_a_cancel_asked_on_another_replica_reaches_the_holder(store: SqliteStore) -> None:
    work = Work(delay=30.0)
    holder = RunService(store.runs, work, SETTINGS, holder="me")
    other = RunService(store.runs, Work(), SETTINGS, holder="other")  # not started: API only
    await holder.start()
    try:
        run, _ = await holder.submit("route", {}, timeout=60)
        await work.called.wait()
        await other.cancel(run.id)
        done = await until_finished(holder, run.id)
    finally:
        await holder.aclose()
    assert done.state == "cancelled"


async def test_a_released_run_is_taken_at_once_by_the_next_replica(store: SqliteStore) -> None:
    """What a replica stopping before dispatch does (release): no wait for the lease."""
    run, _ = await RunService(store.runs, Work(), SETTINGS, holder="x").submit(
        "route", {}, timeout=60
    )
    (held,) = await store.runs.claim_runs("first", 30.0, 1)
    assert await store.runs.release_run(held.id, "first", held.epoch)
    later = RunService(store.runs, Work(), SETTINGS, holder="second")
    await later.start()
    try:
        done = await until_finished(later, run.id)
    finally:
        await later.aclose()
    assert done.state == "succeeded"


async def test_a_run_its_claim_started_is_queued_again_if_let_go_before_dispatch(
    store: SqliteStore,
) -> None:
    """A claim starts its queued runs (``start_runs``: marked delivered before dispatch). A
    replica that stops before such a run's task began gives it back undelivered, so the
    next replica runs it (once) instead of judging it ``interrupted``."""
    first = RunService(store.runs, Work(), SETTINGS, holder="first")
    run, _ = await first.submit("route", {}, timeout=60)
    (started,), _ = await store.runs.start_runs("first", 30.0, 1, time.time())
    assert (started.state, started.delivered) == ("running", True)
    first._begin(started, started=True)  # its task is created, and cancelled before it runs
    await first.aclose()
    back = await store.runs.get_run(run.id)
    assert back is not None
    assert (back.state, back.delivered, back.attempts, back.holder) == ("queued", False, 0, None)
    work = Work()
    later = RunService(store.runs, work, SETTINGS, holder="second")
    await later.start()
    try:
        done = await until_finished(later, run.id)
    finally:
        await later.aclose()
    assert (done.state, done.attempts, work.calls) == ("succeeded", 1, [run.id])
    states = [e.data.get("state") for e in await store.runs.events(run.id, 0, 10)]
    assert states == ["queued", "running", "queued", "running", None, "succeeded"]


class FanoutWork:
    """Records one entry at once, then waits for targets that never answer."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def __call__(
        self,
        kind: RunKind,
        request: dict[str, Any],
        *,
        timeout: float,
        run_id: str,
        idempotency_key: str | None,
        emit: Emit,
    ) -> Any:
        await emit("entry", {"instance": "A", "status": "ok", "result": 1, "latency_ms": 2.0})
        await emit("entry", {"instance": "B", "status": "error", "latency_ms": 3.0})
        self.entered.set()
        await asyncio.sleep(30)
        raise AssertionError("the cancel should have stopped the fanout")


async def test_a_cancelled_fanout_keeps_the_entries_it_had(store: SqliteStore) -> None:
    work = FanoutWork()
    service = RunService(store.runs, work, SETTINGS, holder="me")
    await service.start()
    try:
        run, _ = await service.submit("fanout", {"targets": "all"}, timeout=60)
        await work.entered.wait()
        await service.cancel(run.id)
        done = await until_finished(service, run.id)
    finally:
        await service.aclose()
    assert done.state == "cancelled"
    assert done.result["partial"] is True
    assert [e["instance"] for e in done.result["results"]] == ["A", "B"]
    assert (done.result["succeeded"], done.result["failed"]) == (1, 1)
    assert done.result["error"]["code"] == "cancelled"
    (last,) = [e for e in await store.runs.events(run.id, 0, 100) if e.type == "result"]
    assert last.data["result"] == done.result


async def test_a_cancelled_route_keeps_no_result(store: SqliteStore) -> None:
    work = Work(delay=30.0)
    service = RunService(store.runs, work, SETTINGS, holder="me")
    await service.start()
    try:
        run, _ = await service.submit("route", {}, timeout=60)
        await work.called.wait()
        await service.cancel(run.id)
        done = await until_finished(service, run.id)
    finally:
        await service.aclose()
    assert (done.state, done.result) == ("cancelled", None)
