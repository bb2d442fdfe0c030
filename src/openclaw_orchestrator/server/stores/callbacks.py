"""Run callbacks in the store: the records of :mod:`~openclaw_orchestrator.domain.callbacks`
and their attempts, on the store's engine, shared by every replica on PostgreSQL.

**Claim, then act.** A callback is stored ``pending`` with its run's submit
(:meth:`CallbackStore.add_callback`). A replica takes the ones that are due with
:meth:`CallbackStore.claim_callbacks`: pending, their run finished, ``next_at`` passed,
nobody holding them (or the holder's lease ran out), each with a lease whose ``epoch`` is
bumped, in one transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: never two replicas
at once). Before sending, the holder records the attempt (:meth:`CallbackStore.begin_attempt`,
fenced by holder and epoch); after, its answer and what becomes of the callback
(:meth:`CallbackStore.end_attempt`, which lets the lease go). A replica that dies between
the two leaves an attempt without an answer; once its lease runs out another replica
claims the callback again and makes the next attempt: delivery is at least once, and the
delivery id, the same on every attempt, lets a receiver drop a repeat.

Leases are judged by the store's clock (the database's ``now()`` on PostgreSQL, this
process's on SQLite); ``next_at`` and record times are the caller's wall clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ...domain.callbacks import FINAL, CallbackAttempt, CallbackRecord, CallbackState
from .tables import callback_attempts, run_callbacks

__all__ = [
    "ADD",
    "ANSWER",
    "ATTEMPTS",
    "ATTEMPT_COLUMNS",
    "BEGIN",
    "CALLBACK_COLUMNS",
    "END",
    "GET",
    "START",
    "CallbackStore",
    "answer_params",
    "as_attempt",
    "as_record",
    "end_params",
]

CALLBACK_COLUMNS = (
    "run_id", "url", "secret", "delivery_id", "state", "attempts", "next_at", "created_at",
    "ended_at", "holder", "held_until", "epoch",
)  # fmt: skip
"""The columns of ``orchestrator_run_callbacks``, named and ordered as
:class:`CallbackRecord`'s fields."""
ATTEMPT_COLUMNS = ("run_id", "n", "at", "status", "error", "latency_ms")
"""The columns of ``orchestrator_callback_attempts``, as :class:`CallbackAttempt`'s fields."""

# -- the statements both engines run (named parameters: sqlite3 and SQLAlchemy's text()) --

_CB = run_callbacks.name
_AT = callback_attempts.name
_COLS = ", ".join(CALLBACK_COLUMNS)
GET = f"SELECT {_COLS} FROM {_CB} WHERE run_id = :id"  # noqa: S608  # constants
ADD = (
    f"INSERT INTO {_CB} ({_COLS}) "  # noqa: S608
    f"VALUES ({', '.join(':' + c for c in CALLBACK_COLUMNS)}) ON CONFLICT (run_id) DO NOTHING"
)
ATTEMPTS = f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM {_AT} WHERE run_id = :id ORDER BY n"  # noqa: S608
_FENCE = "run_id = :id AND holder = :holder AND epoch = :epoch AND state = 'pending'"
BEGIN = f"UPDATE {_CB} SET attempts = attempts + 1 WHERE {_FENCE} RETURNING attempts"  # noqa: S608
START = f"INSERT INTO {_AT} (run_id, n, at) VALUES (:id, :n, :at)"  # noqa: S608
ANSWER = (
    f"UPDATE {_AT} SET status = :status, error = :error, latency_ms = :latency "  # noqa: S608
    "WHERE run_id = :id AND n = :n"
)
END = (
    f"UPDATE {_CB} SET state = :state, next_at = :next_at, ended_at = :ended, "  # noqa: S608
    f"holder = NULL, held_until = NULL WHERE {_FENCE}"
)


def as_record(row: Sequence[Any]) -> CallbackRecord:
    """The record of a row selected as :data:`CALLBACK_COLUMNS`."""
    return CallbackRecord(**dict(zip(CALLBACK_COLUMNS, row, strict=True)))


def as_attempt(row: Sequence[Any]) -> CallbackAttempt:
    return CallbackAttempt(**dict(zip(ATTEMPT_COLUMNS, row, strict=True)))


def answer_params(attempt: CallbackAttempt) -> dict[str, Any]:
    """:data:`ANSWER`'s parameters."""
    return {
        "id": attempt.run_id, "n": attempt.n, "status": attempt.status,
        "error": attempt.error, "latency": attempt.latency_ms,
    }  # fmt: skip


def end_params(
    run_id: str, holder: str, epoch: int, state: CallbackState, next_at: float, at: float
) -> dict[str, Any]:
    """:data:`END`'s parameters: ``ended_at`` only for a final state."""
    return {
        "id": run_id, "holder": holder, "epoch": epoch, "state": state,
        "next_at": next_at, "ended": at if state in FINAL else None,
    }  # fmt: skip


@runtime_checkable
class CallbackStore(Protocol):
    """The callbacks' operations (module docstring). Every method is one transaction."""

    async def add_callback(self, record: CallbackRecord) -> CallbackRecord:
        """Store the callback of a stored run; the one already stored for that run, if any,
        is returned unchanged (a replayed submit). NotFoundError for an unknown run."""
        ...

    async def get_callback(self, run_id: str) -> CallbackRecord | None: ...

    async def attempts(self, run_id: str) -> list[CallbackAttempt]:
        """The callback's attempts, oldest first."""
        ...

    async def claim_callbacks(
        self, holder: str, ttl: float, now: float, limit: int
    ) -> list[CallbackRecord]:
        """Take up to ``limit`` due callbacks (pending, run finished, ``next_at <= now``,
        lease free), soonest due first, each held by ``holder`` for ``ttl`` seconds at
        ``epoch + 1``."""
        ...

    async def begin_attempt(self, run_id: str, holder: str, epoch: int, at: float) -> int | None:
        """Record that an attempt begins at ``at``, if ``holder`` still holds the pending
        callback at ``epoch``; its number, or None (nothing recorded: do not send)."""
        ...

    async def end_attempt(
        self,
        run_id: str,
        holder: str,
        epoch: int,
        *,
        attempt: CallbackAttempt | None,
        state: CallbackState,
        next_at: float,
        at: float,
    ) -> bool:
        """Record ``attempt``'s answer (when given: it is this holder's attempt, whatever
        became of the lease since), then, if ``holder`` still holds the callback at
        ``epoch``, move it to ``state`` (due again at ``next_at`` when pending, ended at
        ``at`` otherwise) and let the lease go; whether it was still held."""
        ...
