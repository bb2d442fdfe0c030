"""The instance registry: which instances exist, their health records and live load.

Instances come from the configuration (``source="config"``, permanent) or register at run
time (``source="registered"``); a registration with ``heartbeat_ttl`` must be renewed within
that many seconds or it is dropped by :meth:`Registry.expire`. Replicas sharing a database
feed their registry with :meth:`Registry.adopt` and :meth:`Registry.discard` instead
(:mod:`.shared_fleet`): the database's clock expires those, not this process's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from ...domain.balancing import Candidate
from ...domain.health import HealthPolicy, HealthState, HealthVerdicts, InstanceHealth
from ...domain.targets import AcceptedTargets, parse_targets, plain_names
from ...errors import InvalidRequestError, NotFoundError
from ...models import HealthDetail, InstanceInfo, InstanceSpec, redact_url

__all__ = ["HealthFactory", "InstanceRecord", "Registry", "Source"]

Source = Literal["config", "registered"]
HealthFactory = Callable[[str, HealthPolicy], HealthVerdicts]
"""Makes a new instance's health record (:class:`InstanceHealth` unless replicas share it)."""


@dataclass(slots=True, eq=False)
class InstanceRecord:
    """One instance's live state: its spec, health record and outstanding requests."""

    spec: InstanceSpec
    source: Source
    health: HealthVerdicts
    outstanding: int = 0
    heartbeat_at: float | None = None
    heartbeat_wall: datetime | None = None
    probing: bool = field(default=False)

    @property
    def name(self) -> str:
        """The instance name (unique in the registry)."""
        return self.spec.name

    def is_expired(self, now: float) -> bool:
        """Whether a heartbeating registration has gone silent for longer than its TTL."""
        ttl = self.spec.heartbeat_ttl
        return ttl is not None and self.heartbeat_at is not None and now - self.heartbeat_at > ttl

    def candidate(self) -> Candidate:
        """The balancing view of this instance."""
        return Candidate(self.name, self.spec.weight, self.health.state, self.outstanding)

    def info(self) -> InstanceInfo:
        """The API view: credentials reduced to a flag."""
        spec = self.spec
        return InstanceInfo(
            name=spec.name,
            url=redact_url(spec.url),
            driver=spec.driver,
            weight=spec.weight,
            tags=list(spec.tags),
            has_credentials=spec.credentials is not None,
            health_path=spec.health_path,
            state=self.health.state.value,
            source=self.source,
            heartbeat_ttl=spec.heartbeat_ttl,
            last_heartbeat=self.heartbeat_wall,
            outstanding=self.outstanding,
        )

    def detail(self, to_wall: Callable[[float], datetime]) -> HealthDetail:
        """Health detail for ``GET /health?detail=true``; monotonic times made wall-clock."""
        h = self.health
        return HealthDetail(
            state=h.state.value,
            latency_ms=None if h.last_latency is None else round(h.last_latency * 1000, 3),
            last_check=None if h.last_check is None else to_wall(h.last_check),
            consecutive_failures=h.consecutive_failures,
            last_error=h.last_error,
            last_change=None if h.last_change is None else to_wall(h.last_change),
            url=redact_url(self.spec.url),
        )


class Registry:
    """Instances by name, in registration order (the order ``all`` and ranges follow): the
    in-memory :class:`~openclaw_orchestrator.server.core.interfaces.InstanceRegistry`."""

    def __init__(self, policy: HealthPolicy, *, new_health: HealthFactory = InstanceHealth) -> None:
        self._policy = policy
        self._new_health = new_health
        self._records: dict[str, InstanceRecord] = {}
        self._accepted = AcceptedTargets()

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[InstanceRecord]:
        return iter(list(self._records.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for rec in self._records.values():
            counts[rec.health.state.value] = counts.get(rec.health.state.value, 0) + 1
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "empty"
        return f"<Registry [{states}]>"

    def get(self, name: str) -> InstanceRecord:
        """The record for ``name``; NotFoundError when there is none."""
        try:
            return self._records[name]
        except KeyError:
            raise NotFoundError(f"no instance named {name!r}", instance=name) from None

    def upsert(self, spec: InstanceSpec, source: Source, now: float) -> tuple[InstanceRecord, bool]:
        """Add ``spec`` or refresh it (a heartbeat); returns the record and whether it is new.

        A re-registration that changes the URL or driver starts a fresh health record: it
        is a different process now. A config instance cannot be replaced by a registration.
        """
        old = self._records.get(spec.name)
        if source == "registered":
            self.check_registrable(spec.name)
        record = self._put(spec, source)
        if source == "registered":
            record.heartbeat_at = now
            record.heartbeat_wall = datetime.now(UTC)
        return record, old is None

    def check_registrable(self, name: str) -> None:
        """400 naming ``name`` when it is a config instance: a registration cannot replace it."""
        old = self._records.get(name)
        if old is not None and old.source == "config":
            raise InvalidRequestError(
                f"instance {name!r} comes from the configuration and cannot be re-registered",
                field="name",
            )

    def adopt(
        self, spec: InstanceSpec, *, heartbeat_wall: datetime | None
    ) -> InstanceRecord | None:
        """Hold a registration the replicas share, as :meth:`upsert` would, except that its
        heartbeat is judged by the shared database's clock, not here (``heartbeat_at`` stays
        None); None, and nothing changed, when ``spec.name`` is a config instance here."""
        old = self._records.get(spec.name)
        if old is not None and old.source == "config":
            return None
        record = self._put(spec, "registered")
        record.heartbeat_wall = heartbeat_wall
        return record

    def discard(self, name: str) -> InstanceRecord | None:
        """Drop a registration the replicas no longer share; a config instance (or an
        unknown name) stays as it is, and None is returned."""
        record = self._records.get(name)
        if record is None or record.source != "registered":
            return None
        del self._records[name]
        return record

    def _put(self, spec: InstanceSpec, source: Source) -> InstanceRecord:
        """Refresh the record of the same process (URL and driver), else start a new one."""
        old = self._records.get(spec.name)
        if old is not None and (old.spec.url, old.spec.driver) == (spec.url, spec.driver):
            old.spec = spec
            return old
        record = InstanceRecord(spec, source, self._new_health(spec.name, self._policy))
        self._records[spec.name] = record
        return record

    def remove(self, name: str) -> InstanceRecord:
        """Drop ``name``; NotFoundError when unknown."""
        record = self.get(name)
        del self._records[name]
        return record

    def expire(self, now: float) -> list[InstanceRecord]:
        """Drop and return the registrations whose heartbeats stopped."""
        gone = [rec for rec in self._records.values() if rec.is_expired(now)]
        for rec in gone:
            del self._records[rec.name]
        return gone

    def resolve(self, expr: str | list[str] | None, *, field: str) -> list[str]:
        """Target syntax (``A-H``, ``A,C``, ``all``, ``tag:x``) to known names; no expression
        means every instance, which may be none."""
        if expr is None:
            return list(self._records)
        remembered = self._accepted.get(expr)
        if remembered is not None and self._are_registered(remembered):
            return list(remembered)
        names = plain_names(expr)
        if names is not None and self._are_registered(names):
            self._accepted.remember(expr, names)  # accepted only: a failed input is not kept
            return list(names)
        registry = [(rec.name, rec.spec.tags) for rec in self._records.values()]
        return parse_targets(expr, registry, field=field)

    def _are_registered(self, names: list[str]) -> bool:
        return all(name in self._records for name in names)

    def count_states(self) -> dict[str, int]:
        """How many instances are in each health state (every state listed)."""
        counts = {state.value: 0 for state in HealthState}
        for rec in self._records.values():
            counts[rec.health.state.value] += 1
        return counts
