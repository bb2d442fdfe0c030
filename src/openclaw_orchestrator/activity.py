"""Wire models of the activity feed (``GET /api/orchestrator/activity``, ``…/instances``,
``…/stream``): what the dashboard at ``/ui``, ``openclaw orchestrator top`` and the SDK read.

Kept apart from :mod:`.models` (the request/reply contract of the task endpoints): these
describe what the orchestrator *did* recently, never a task's payload or result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .models import Attempt, Skip

__all__ = [
    "ActivityEntry",
    "ActivityKind",
    "ActivityPage",
    "HealthPoint",
    "InstanceActivity",
    "InstancesActivity",
]

ActivityKind = Literal["route", "fanout", "health"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ActivityEntry(_Wire):
    """One thing the orchestrator did: a route, a fanout, or an instance's health change.

    ``id`` grows by one per entry (the cursor and the SSE event id). ``targets`` are the
    instances considered (a route's tried and skipped candidates, a fanout's targets);
    ``instance`` is the one that served a route, or the one whose health changed.
    ``outcome`` is ``ok``, an error code (``instance_down``, ``timeout``, …), ``partial``
    for a fanout where some targets failed, or a health change's new state."""

    id: int
    kind: ActivityKind
    at: datetime
    request_id: str | None = None
    targets: list[str] = []
    instance: str | None = None
    attempts: list[Attempt] = []
    skipped: list[Skip] = []
    outcome: str
    duration_ms: float | None = None
    statuses: dict[str, str] = {}
    old: str | None = None
    reason: str | None = None
    error: dict[str, Any] | None = None


class ActivityPage(_Wire):
    """Entries newest first; ``next_before`` is the cursor of the next (older) page, None at
    the oldest entry still kept. ``capacity``: how many entries the ring keeps."""

    entries: list[ActivityEntry]
    next_before: int | None = None
    last_id: int
    capacity: int


class HealthPoint(_Wire):
    """One health change of an instance (its timeline)."""

    at: datetime
    state: str
    reason: str


class InstanceActivity(_Wire):
    """An instance as it is now: verdict and why, probe latency, in-flight calls, when a
    down (ejected) instance is next probed, and its recent health changes (oldest first)."""

    name: str
    state: str
    reason: str | None = None
    latency_ms: float | None = None
    in_flight: int
    consecutive_failures: int = 0
    last_change: datetime | None = None
    next_probe_at: datetime | None = None
    ejected_until: datetime | None = None
    timeline: list[HealthPoint] = []


class InstancesActivity(_Wire):
    """``GET /api/orchestrator/activity/instances``: every instance, in registry order."""

    at: datetime
    instances: list[InstanceActivity]
