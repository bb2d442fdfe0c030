"""Durable runs: a delegation stored before it starts, so that it outlives the caller's
connection and the process that runs it.

A run is submitted ``queued``; a replica claims it (a lease with a fencing ``epoch``, as for
sessions), turns it ``running`` and dispatches it; it ends ``succeeded``, ``failed``,
``timed_out`` or ``cancelled``. Everything here is pure: the store keeps the records and
applies these rules, the service does the work.

Recovery (:func:`recovery`) decides what becomes of a run whose holder died: one that never
reached an instance, or that carries an idempotency key, is dispatched again; one that may
have run on an instance is ``failed`` with the reason ``interrupted``, never run twice; one
past its deadline is ``timed_out``. Times are wall-clock epoch seconds, always passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

__all__ = [
    "EVENT_TYPES",
    "MAX_RUN_ID",
    "RUN_KINDS",
    "RUN_STATES",
    "TERMINAL",
    "EventType",
    "Recovery",
    "RunEvent",
    "RunKind",
    "RunRecord",
    "RunState",
    "can_move",
    "cancelled_fanout",
    "recovery",
]

RunState = Literal["queued", "running", "succeeded", "failed", "timed_out", "cancelled"]
RunKind = Literal["route", "fanout", "session_send"]
EventType = Literal["state", "attempt", "entry", "delta", "result"]
"""What a run's event tells: a change of state, an attempt on an instance, one target's
entry of a fanout, a piece of the agent's output as it streams, the final result."""
Recovery = Literal["redispatch", "interrupt", "time_out"]

RUN_STATES: tuple[RunState, ...] = get_args(RunState)
RUN_KINDS: tuple[RunKind, ...] = get_args(RunKind)
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
TERMINAL: frozenset[RunState] = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
MAX_RUN_ID = 64

_MOVES: dict[RunState, frozenset[RunState]] = {
    "queued": frozenset({"running", "cancelled", "failed", "timed_out"}),
    # back to queued: its holder died before it reached an instance (or it has a key)
    "running": frozenset({"queued", "succeeded", "failed", "timed_out", "cancelled"}),
}


def can_move(state: RunState, to: RunState) -> bool:
    """Whether a run in ``state`` may become ``to`` (a finished run never changes)."""
    return to in _MOVES.get(state, frozenset())


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """A run as stored.

    ``request`` is the submitted body (the same as the synchronous endpoint's). ``attempts``
    counts dispatches; ``delivered`` is set, durably, before the first call to an instance
    (so a run that has it may have run). ``holder``/``held_until``/``epoch`` are the lease
    (``held_until`` by the store's clock); every write of a holder is fenced by the epoch.
    ``result`` is the endpoint's result; ``error`` its JSON error body (``code``,
    ``message``, ``details``)."""

    id: str
    kind: RunKind
    state: RunState
    request: dict[str, Any]
    created_at: float
    updated_at: float
    deadline_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    delivered: bool = False
    idempotency_key: str | None = None
    instance: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    cancel_requested: bool = False
    holder: str | None = None
    held_until: float | None = None
    epoch: int = 0
    callback: dict[str, Any] | None = field(default=None, repr=False)  # holds a secret

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One event of a run, numbered from 1 in the order it was recorded."""

    run_id: str
    seq: int
    type: EventType
    data: dict[str, Any]
    at: float


def recovery(run: RunRecord, now: float) -> Recovery:
    """What to do with ``run`` once its holder's lease ran out (see the module docstring)."""
    if now >= run.deadline_at:
        return "time_out"
    if not run.delivered or run.idempotency_key is not None:
        return "redispatch"
    return "interrupt"


def cancelled_fanout(
    entries: list[dict[str, Any]], *, total_ms: float, run_id: str
) -> dict[str, Any]:
    """What a fanout run cancelled midway keeps: the entries of the targets that had
    answered (as the fanout's result, ``partial``), with an ``error`` that says why the
    aggregate is missing: it is not computed over an arbitrary part of the targets."""
    counts = {"ok": 0, "error": 0, "timeout": 0}
    for entry in entries:
        status = entry.get("status")
        if status in counts:
            counts[status] += 1
    return {
        "aggregate": None,
        "value": None,
        "results": entries,
        "succeeded": counts["ok"],
        "failed": counts["error"],
        "timed_out": counts["timeout"],
        "total_ms": round(total_ms, 3),
        "request_id": run_id,
        "partial": True,
        "error": {
            "code": "cancelled",
            "message": f"run {run_id} was cancelled before its fanout finished; results holds "
            f"the {len(entries)} target(s) that had answered",
        },
    }
