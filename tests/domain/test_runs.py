"""The pure rules of durable runs (:mod:`openclaw_orchestrator.domain.runs`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from openclaw_orchestrator.domain.runs import (
    RUN_STATES,
    TERMINAL,
    RunRecord,
    can_move,
    cancelled_fanout,
    recovery,
)


def run(**kw: object) -> RunRecord:
    base: dict[str, object] = {
        "id": "r1", "kind": "route", "state": "running", "request": {},
        "created_at": 1000.0, "updated_at": 1000.0, "deadline_at": 2000.0,
    }  # fmt: skip
    return RunRecord(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_a_finished_run_never_changes(state: str) -> None:
    assert not any(can_move(state, to) for to in RUN_STATES)  # type: ignore[arg-type]


def test_a_queued_run_starts_ends_early_or_is_cancelled_but_never_succeeds_unstarted() -> None:
    assert can_move("queued", "running")
    assert can_move("queued", "cancelled")
    assert can_move("queued", "timed_out")
    assert not can_move("queued", "succeeded")
    assert not can_move("queued", "queued")


def test_a_running_run_may_go_back_to_the_queue_or_end_any_way() -> None:
    assert all(can_move("running", to) for to in ("queued", *sorted(TERMINAL)))
    assert not can_move("running", "running")


def test_recovery_redispatches_what_never_reached_an_instance() -> None:
    assert recovery(run(delivered=False), 1500.0) == "redispatch"


def test_recovery_redispatches_a_delivered_run_only_with_an_idempotency_key() -> None:
    assert recovery(run(delivered=True), 1500.0) == "interrupt"
    assert recovery(run(delivered=True, idempotency_key="k"), 1500.0) == "redispatch"


def test_recovery_times_out_a_run_past_its_deadline_whatever_else() -> None:
    for delivered in (False, True):
        assert recovery(run(delivered=delivered), 2000.0) == "time_out"


def test_finished_follows_the_state() -> None:
    assert not run().finished
    assert replace(run(), state="cancelled").finished


def test_a_cancelled_fanout_keeps_its_entries_and_counts_them() -> None:
    entries = [
        {"instance": "A", "status": "ok", "result": 1},
        {"instance": "B", "status": "timeout"},
        {"instance": "C", "status": "ok", "result": 2},
        {"instance": "D", "status": "error"},
    ]
    kept = cancelled_fanout(entries, total_ms=12.3456, run_id="run_x")
    assert kept["results"] == entries
    assert (kept["succeeded"], kept["failed"], kept["timed_out"]) == (2, 1, 1)
    assert (kept["partial"], kept["value"], kept["aggregate"]) == (True, None, None)
    assert (kept["total_ms"], kept["request_id"]) == (12.346, "run_x")
    assert kept["error"]["code"] == "cancelled"
    assert "4 target(s)" in kept["error"]["message"]
