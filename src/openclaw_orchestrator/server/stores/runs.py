"""Durable runs in the store: the records of :mod:`~openclaw_orchestrator.domain.runs` and
their events, shared by every replica on PostgreSQL, on one process's file on SQLite.

**Claim, then act.** A run is stored ``queued`` before its submit is answered
(:meth:`RunStore.create_run`). A replica takes runs to work on with
:meth:`RunStore.claim_runs`: queued ones, and running ones whose holder's lease ran out,
each taken with a lease whose ``epoch`` is bumped, in one transaction per call (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL, so replicas never take the same run). Every later write of the
holder (:meth:`RunStore.update_run`, :meth:`RunStore.keep_runs`) is conditional on
``holder`` and ``epoch`` and returns None / drops the run when they moved on: a holder that
lost its lease can change nothing. Whoever takes over a run decides with
:func:`~openclaw_orchestrator.domain.runs.recovery` what becomes of it.

Leases are judged by the store's clock (the database's ``now()`` on PostgreSQL, this
process's on SQLite), record times (``created_at``, ``updated_at``, …) are the caller's
wall clock. Events are numbered per run from 1, gap-free, in the order they were added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ...domain.runs import EventType, RunEvent, RunKind, RunRecord, RunState

__all__ = [
    "MAX_EVENTS_PAGE",
    "MAX_RUNS_PAGE",
    "UPDATABLE",
    "NewEvent",
    "RunPage",
    "RunQuery",
    "RunStore",
    "running_event",
]

MAX_RUNS_PAGE = 500
MAX_EVENTS_PAGE = 1000

UPDATABLE = frozenset(
    {
        "state",
        "updated_at",
        "started_at",
        "finished_at",
        "attempts",
        "delivered",
        "instance",
        "result",
        "error",
        "deadline_at",
    }
)
"""The fields a holder may change with :meth:`RunStore.update_run`."""


NewEvent = tuple[EventType, dict[str, Any], float]
"""An event to append with a write of its run: type, data, time."""


def running_event(attempt: int, at: float) -> NewEvent:
    """The event of a run's start: its state and which attempt this is."""
    return ("state", {"state": "running", "attempt": attempt}, at)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunQuery:
    """A page of runs, newest first: optionally of one ``state`` / ``kind``, created before
    the run ``(before_created_at, before_id)`` (the previous page's last), at most ``limit``."""

    state: RunState | None = None
    kind: RunKind | None = None
    before: tuple[float, str] | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: list[RunRecord]
    more: bool
    """Whether older runs match too (ask again with ``before`` = the last run's)."""


@runtime_checkable
class RunStore(Protocol):
    """The runs' operations (module docstring). Every method is one transaction."""

    async def create_run(self, run: RunRecord, *, event: NewEvent | None = None) -> RunRecord:
        """Store a new run (its state ``queued``). With an ``idempotency_key`` already used
        by a run: that run, unchanged (the caller compares the request). A taken ``id``:
        :class:`~openclaw_orchestrator.errors.ConflictError`. With ``event``: the new run's
        first event too (number 1), in the same transaction: one write per submit."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def list_runs(self, query: RunQuery) -> RunPage: ...

    async def claim_runs(self, holder: str, ttl: float, limit: int) -> list[RunRecord]:
        """Take up to ``limit`` runs, oldest first: queued ones, and unfinished ones whose
        lease ran out; each now held by ``holder`` for ``ttl`` seconds at ``epoch + 1``
        (returned as stored after the claim, state unchanged)."""
        ...

    async def start_runs(
        self, holder: str, ttl: float, limit: int, at: float
    ) -> tuple[list[RunRecord], list[RunRecord]]:
        """:meth:`claim_runs`, and in the same transaction start the claimed runs that need
        no decision — queued, no cancel asked, deadline after ``at`` — as
        :meth:`update_run` would (claim, then act: ``running``, ``delivered``, ``attempts +
        1``, ``started_at`` and ``updated_at`` ``at``, and :func:`running_event`), so a
        run's start costs no write of its own. (started, claimed only: the holder decides
        what becomes of those), each oldest first."""
        ...

    async def keep_runs(self, holder: str, held: Mapping[str, int], ttl: float) -> dict[str, bool]:
        """Extend the leases of ``held`` (run id -> epoch) still ``holder``'s at that epoch
        and unfinished; for each run renewed, whether its cancel was asked (a keeper of
        thousands of runs learns of cancels asked on other replicas from the renewal
        itself, instead of reading every run again each time)."""
        ...

    async def update_run(
        self,
        run_id: str,
        holder: str,
        epoch: int,
        changes: Mapping[str, Any],
        *,
        events: Sequence[NewEvent] = (),
    ) -> RunRecord | None:
        """Apply ``changes`` (fields of :data:`UPDATABLE`) if ``holder`` still holds the run
        at ``epoch``; a change of ``state`` to a finished one also releases the lease. The
        run as stored after, or None when the lease moved on (nothing changed). With
        ``events``: appended in order in the same transaction, if the update was (a route's
        attempts and its result are one write)."""
        ...

    async def release_run(self, run_id: str, holder: str, epoch: int) -> bool:
        """Let the lease go now (another replica may claim the run at once), if still
        ``holder``'s at ``epoch``."""
        ...

    async def request_cancel(self, run_id: str, at: float) -> RunRecord | None:
        """Mark the run's cancel as asked (kept until its holder acts on it); a queued run
        nobody holds is ``cancelled`` at once. The run after, or None when unknown; a
        finished run is returned unchanged."""
        ...

    async def add_event(self, run_id: str, type: EventType, data: dict[str, Any], at: float) -> int:
        """Append an event; its number."""
        ...

    async def events(self, run_id: str, after: int, limit: int) -> list[RunEvent]:
        """Events numbered above ``after``, in order, at most ``limit``."""
        ...

    async def purge_runs(self, finished_before: float, limit: int) -> int:
        """Delete up to ``limit`` runs finished before ``finished_before``, with their events;
        how many went."""
        ...
