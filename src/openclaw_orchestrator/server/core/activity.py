"""The activity feed: a bounded in-memory ring of what the orchestrator did recently.

Routing, fanout and the health verdicts (probes and passive detection) hand their outcomes
to :class:`Activity` with one call each; the dashboard (``/ui``), ``openclaw orchestrator
top`` and ``GET /api/orchestrator/activity`` read it back. The ring keeps the last
:data:`DEFAULT_ACTIVITY_SIZE` entries (routes, fanouts, health changes) and, per instance,
its last :data:`DEFAULT_TIMELINE_SIZE` health changes; older ones are forgotten. Nothing is
stored: a restart starts an empty feed, and each replica keeps its own.

Recording is cheap on purpose (it sits on every route's path): an entry is a tuple of values
the caller already made (the wire model is built only when someone reads it), never holds a
payload or a result, and is pushed to subscribers with ``put_nowait``. A subscriber that
falls :data:`DEFAULT_SUBSCRIBER_BUFFER` entries behind is dropped (its stream ends) rather
than slowing routing down; it resumes from the ring with the last id it saw.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from ...activity import (
    ActivityEntry,
    ActivityKind,
    ActivityPage,
    HealthPoint,
    InstanceActivity,
    InstancesActivity,
)
from ...domain.health import HealthChanged, HealthState
from ...errors import OrchestratorError
from ...models import Attempt, FanoutEntry, RouteResult, Skip
from .clock import Clock
from .registry import InstanceRecord

__all__ = [
    "DEFAULT_ACTIVITY_SIZE",
    "DEFAULT_SUBSCRIBER_BUFFER",
    "DEFAULT_TIMELINE_SIZE",
    "MAX_PAGE",
    "Activity",
]

DEFAULT_ACTIVITY_SIZE = 1000
"""Entries (routes, fanouts, health changes) the ring keeps."""
DEFAULT_TIMELINE_SIZE = 20
"""Health changes kept per instance for its timeline."""
DEFAULT_SUBSCRIBER_BUFFER = 256
"""Entries a live subscriber may fall behind before it is dropped."""
MAX_PAGE = 200
"""The most entries one page of ``GET /api/orchestrator/activity`` returns."""

Wall = Callable[[], float]


class _Record(NamedTuple):
    """One entry as recorded: :class:`~...activity.ActivityEntry`'s fields, ``at`` in Unix
    seconds. A tuple, since a pydantic model (or a frozen dataclass) per route would cost
    more than the rest of the recording; the wire model is built when someone reads it."""

    id: int
    kind: ActivityKind
    at: float
    outcome: str
    targets: Sequence[str] = ()
    request_id: str | None = None
    instance: str | None = None
    attempts: Sequence[Attempt] = ()
    skipped: Sequence[Skip] = ()
    duration_ms: float | None = None
    statuses: Mapping[str, str] | None = None
    old: str | None = None
    reason: str | None = None
    error: dict[str, Any] | None = None

    def wire(self) -> ActivityEntry:
        """The entry as the API shows it."""
        fields = self._asdict()
        fields["at"] = datetime.fromtimestamp(self.at, UTC)
        for name in ("targets", "attempts", "skipped"):
            fields[name] = list(fields[name])
        fields["statuses"] = dict(self.statuses or {})
        return ActivityEntry.model_construct(**fields)


class Activity:
    """The ring, the per-instance health timelines and the live subscribers."""

    def __init__(
        self,
        *,
        size: int = DEFAULT_ACTIVITY_SIZE,
        timeline_size: int = DEFAULT_TIMELINE_SIZE,
        subscriber_buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
        clock: Clock = time.monotonic,
        wall: Wall = time.time,
    ) -> None:
        if size < 1 or timeline_size < 1 or subscriber_buffer < 1:
            raise ValueError("size, timeline_size and subscriber_buffer must be >= 1")
        self.size = size
        self._entries: deque[_Record] = deque(maxlen=size)
        self._timelines: dict[str, deque[HealthPoint]] = {}
        self._timeline_size = timeline_size
        self._buffer = subscriber_buffer
        self._subscribers: set[asyncio.Queue[_Record | None]] = set()
        self._ids = itertools.count(1)
        self.last_id = 0
        self._clock = clock
        self._wall = wall

    def __repr__(self) -> str:
        return (
            f"<Activity [entries: {len(self._entries)}/{self.size} | "
            f"last id: {self.last_id} | subscribers: {len(self._subscribers)}]>"
        )

    # -- recording ---------------------------------------------------------------------------

    def route_done(self, result: RouteResult, targets: list[str]) -> None:
        """A route over ``targets`` that was served (by ``result.instance``, after
        ``result.attempts``)."""
        self._add(
            "route",
            request_id=result.request_id,
            targets=targets,
            instance=result.instance,
            attempts=result.attempts,
            skipped=result.skipped,
            outcome="ok",
            duration_ms=result.total_ms,
        )

    def route_failed(self, exc: OrchestratorError, request_id: str) -> None:
        """A route that failed: its attempts and skips are in ``exc.details``."""
        details = exc.details
        attempts = [Attempt.model_validate(a) for a in details.get("attempts", [])]
        raw_skips = details.get("skipped", {})
        skipped = [Skip.model_construct(instance=n, reason=r) for n, r in raw_skips.items()]
        self._add(
            "route",
            request_id=request_id,
            targets=_targets(attempts, skipped),
            instance=exc.instance,
            attempts=attempts,
            skipped=skipped,
            outcome=exc.code,
            duration_ms=details.get("total_ms"),
            error={"code": exc.code, "message": exc.message},
        )

    def fanout_done(
        self,
        request_id: str,
        entries: list[FanoutEntry],
        duration_ms: float,
        min_success: int | None,
    ) -> None:
        """A fanout's entries (their statuses only; never a result)."""
        statuses = {e.instance: str(e.status) for e in entries}
        succeeded = sum(1 for s in statuses.values() if s == "ok")
        self._add(
            "fanout",
            request_id=request_id,
            targets=list(statuses),
            statuses=statuses,
            outcome=_fanout_outcome(statuses, succeeded, min_success),
            duration_ms=duration_ms,
        )

    def health_changed(self, event: HealthChanged | None) -> None:
        """An instance's verdict changed (probe or passive detection); None: no change."""
        if event is None:
            return
        at = self._wall() - (self._clock() - event.at)
        point = HealthPoint.model_construct(
            at=datetime.fromtimestamp(at, UTC), state=event.new.value, reason=event.reason
        )
        timeline = self._timelines.get(event.instance)
        if timeline is None:
            timeline = self._timelines[event.instance] = deque(maxlen=self._timeline_size)
        timeline.append(point)
        self._add(
            "health",
            at=at,
            targets=[event.instance],
            instance=event.instance,
            outcome=event.new.value,
            old=event.old.value,
            reason=event.reason,
        )

    def reporting(
        self, report: Callable[[HealthChanged | None], None]
    ) -> Callable[[HealthChanged | None], None]:
        """``report`` (the log line of a verdict change) that also records the change here:
        what the health monitor and the dispatcher are given."""

        def report_and_record(event: HealthChanged | None) -> None:
            if event is not None:
                report(event)
                self.health_changed(event)

        return report_and_record

    def _add(self, kind: ActivityKind, *, at: float | None = None, **fields: Any) -> None:
        entry_id = next(self._ids)
        entry = _Record(entry_id, kind, self._wall() if at is None else at, **fields)
        self._entries.append(entry)
        self.last_id = entry_id
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(entry)
            except asyncio.QueueFull:  # too slow: its stream ends, it resumes from the ring
                self._subscribers.discard(queue)
                _close(queue)

    def _to_wall(self, mono: float) -> datetime:
        return datetime.fromtimestamp(self._wall() - (self._clock() - mono), UTC)

    # -- reading -----------------------------------------------------------------------------

    def page(self, *, before: int | None = None, limit: int = 50) -> ActivityPage:
        """Up to ``limit`` entries older than ``before`` (the newest when None), newest
        first, and the cursor of the next page."""
        limit = max(1, min(limit, MAX_PAGE))
        older = [e for e in reversed(self._entries) if before is None or e.id < before]
        chosen = older[:limit]
        more = len(older) > limit
        return ActivityPage.model_construct(
            entries=[e.wire() for e in chosen],
            next_before=chosen[-1].id if more and chosen else None,
            last_id=self.last_id,
            capacity=self.size,
        )

    def since(self, last_id: int) -> list[ActivityEntry]:
        """The entries after ``last_id`` still in the ring, oldest first (an SSE resume)."""
        return [e.wire() for e in self._entries if e.id > last_id]

    def instances(self, records: Iterable[InstanceRecord]) -> InstancesActivity:
        """Every instance now: verdict, reason, latency, in-flight calls, when a down one is
        next probed (the end of its ejection), and its health timeline."""
        return InstancesActivity.model_construct(
            at=datetime.fromtimestamp(self._wall(), UTC),
            instances=[self._instance(rec) for rec in records],
        )

    def _instance(self, rec: InstanceRecord) -> InstanceActivity:
        h = rec.health
        next_probe = self._to_wall(h.next_probe_at) if h.last_check is not None else None
        down = h.state is HealthState.DOWN
        return InstanceActivity.model_construct(
            name=rec.name,
            state=h.state.value,
            reason=h.last_error,
            latency_ms=None if h.last_latency is None else round(h.last_latency * 1000, 3),
            in_flight=rec.outstanding,
            consecutive_failures=h.consecutive_failures,
            last_change=None if h.last_change is None else self._to_wall(h.last_change),
            next_probe_at=next_probe,
            ejected_until=self._to_wall(h.next_probe_at) if down else None,
            timeline=list(self._timelines.get(rec.name, ())),
        )

    # -- live --------------------------------------------------------------------------------

    async def subscribe(self, last_id: int | None = None) -> AsyncGenerator[ActivityEntry]:
        """Every entry after ``last_id`` still in the ring (None: none of the past), then each
        new one as it is recorded. Ends when the subscriber fell too far behind."""
        queue: asyncio.Queue[_Record | None] = asyncio.Queue(self._buffer)
        self._subscribers.add(queue)
        try:
            seen = self.last_id if last_id is None else last_id
            for entry in self.since(seen):
                seen = entry.id
                yield entry
            while True:
                new = await queue.get()
                if new is None:
                    return
                if new.id > seen:
                    seen = new.id
                    yield new.wire()
        finally:
            self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        """How many live subscribers there are."""
        return len(self._subscribers)


def _close(queue: asyncio.Queue[_Record | None]) -> None:
    """Make room for the end marker in a full queue and put it there."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)


def _targets(attempts: list[Attempt], skipped: list[Skip]) -> list[str]:
    """A route's candidates as far as it got: tried ones first (once each), then skipped."""
    seen = dict.fromkeys(a.instance for a in attempts)
    seen.update(dict.fromkeys(s.instance for s in skipped))
    return list(seen)


def _fanout_outcome(statuses: dict[str, str], succeeded: int, min_success: int | None) -> str:
    """``ok`` (no target failed; cancelled ones were not needed), ``partial`` (some failed or
    timed out), or the failure when ``min_success`` is unmet (``timeout`` if a target timed
    out, else ``instance_error``), as the fanout itself answers."""
    if min_success is not None and succeeded < min_success:
        return "timeout" if "timeout" in statuses.values() else "instance_error"
    failed = any(s in ("error", "timeout") for s in statuses.values())
    return "partial" if failed else "ok"
