"""The run words without a server: the fast path leaves them to Typer, the views and exit
codes of runs, and the SDK's pure pieces they stand on (run ids, wait slices)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from rich.console import Console

from openclaw_orchestrator.cli.exits import ExitCode, run_exit
from openclaw_orchestrator.cli.fastpath import _parse
from openclaw_orchestrator.cli.render import run_event_json, run_event_line, run_view, runs_view
from openclaw_orchestrator.errors import InvalidRequestError
from openclaw_orchestrator.models import RunInfo, RunList
from openclaw_orchestrator.sdk import calls
from openclaw_orchestrator.sdk.events import RunEvent

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def info(**changes: object) -> RunInfo:
    fields: dict[str, object] = {
        "run_id": "run_abc",
        "kind": "route",
        "state": "succeeded",
        "request": {"instances": ["A"]},
        "created_at": NOW,
        "updated_at": NOW,
        "deadline_at": NOW,
        "attempts": 1,
        "result": {"instance": "A", "answer": 42},
    }
    return RunInfo.model_validate(fields | changes)


def shown(renderable: object) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize(
    "argv",
    [
        ["route", "--instances", "A", "--async"],
        ["fanout", "--async"],
        ["sessions_send", "--id", "s1", "--async"],
        ["runs", "list"],
        ["runs", "events", "run_abc"],
    ],
)
def test_the_fast_path_leaves_run_words_to_typer(argv: list[str]) -> None:
    assert _parse(argv) is None


def test_runs_wait_exit_codes() -> None:
    assert [run_exit(s) for s in ("succeeded", "failed", "timed_out", "cancelled")] == [
        ExitCode.OK,
        ExitCode.TASK_FAILED,
        ExitCode.TASK_FAILED,
        ExitCode.TASK_FAILED,
    ]
    assert run_exit("running") == run_exit("queued") == ExitCode.UNREACHABLE


def test_run_view_shows_the_result_or_the_error() -> None:
    text = shown(run_view(info()))
    assert "run_abc" in text
    assert "succeeded" in text
    assert '"answer": 42' in text
    failed = info(
        state="failed",
        result=None,
        error={"code": "instance_down", "message": "A is down", "instance": "A"},
    )
    assert "error: instance_down: A is down (instance A)" in shown(run_view(failed))


def test_runs_view_rows_and_next_page() -> None:
    page = RunList(runs=[info(), info(run_id="run_def", state="queued", result=None)], next="c1")
    text = shown(runs_view(page))
    assert text.index("run_abc") < text.index("run_def")
    assert "next page: --cursor c1" in text
    assert shown(runs_view(RunList(runs=[]))).rstrip().endswith("end")


def test_run_event_lines() -> None:
    event = RunEvent(3, "state", {"state": "running"})
    assert run_event_json(event) == '{"id":3,"type":"state","data":{"state":"running"}}'
    assert run_event_line(event).plain == '#3 state {"state":"running"}'


def test_run_ids_are_checked_before_any_request() -> None:
    assert calls.run_path("run_abc", "cancel") == "/api/orchestrator/runs/run_abc/cancel"
    for bad in ("", "a/b", "x" * 65, "../x"):
        with pytest.raises(InvalidRequestError) as caught:
            calls.get_run(bad)
        assert caught.value.field == "run_id"


def test_submit_body_and_events_call() -> None:
    call = calls.submit_run(
        "session_send", session_id="s1", data={"k": 1}, timeout="2m", idempotency_key="k1"
    )
    assert call.body == {
        "kind": "session_send",
        "sessionId": "s1",
        "data": {"k": 1},
        "timeout": 120.0,
    }
    assert call.headers() == {"Idempotency-Key": "k1"}
    events = calls.run_events("run_abc", after=4)
    assert (events.params, events.open_ended) == ({"after": "4"}, True)
    assert events.headers() == {"Accept": "text/event-stream"}


def test_wait_slices_cut_the_last_poll_to_the_time_left() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    def polls(timeout: float | str | None) -> list[float]:
        seen = []
        for wait in calls.wait_slices(timeout, clock):
            seen.append(wait)
            now[0] += wait
        return seen

    assert polls(70) == [30.0, 30.0, 10.0]
    assert polls("45s") == [30.0, 15.0]
    assert polls(0) == [0.0]
    assert next(calls.wait_slices(None, clock)) == calls.RUN_WAIT_SLICE
