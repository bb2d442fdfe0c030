"""What the core parts read and feed, as interfaces: the instance registry (here) and the
health verdicts (:class:`~openclaw_orchestrator.domain.health.HealthVerdicts`).

The first implementation of each is in memory (:class:`~openclaw_orchestrator.server.core.registry.
Registry`, :class:`~openclaw_orchestrator.domain.health.InstanceHealth`); a shared one
(PostgreSQL, for replicas) implements the same Protocols and is passed to the parts, so
routing, fanout, the monitor and sessions do not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ...models import InstanceSpec
from .registry import InstanceRecord, Source

__all__ = ["InstanceRegistry"]


class InstanceRegistry(Protocol):
    """Instances by name, in registration order, each with its verdict and live load."""

    def __len__(self) -> int:
        """How many instances there are."""
        ...

    def __iter__(self) -> Iterator[InstanceRecord]:
        """Every instance, in registration order (a snapshot: safe to mutate while iterating)."""
        ...

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered."""
        ...

    def get(self, name: str) -> InstanceRecord:
        """The record for ``name``; NotFoundError when there is none."""
        ...

    def upsert(self, spec: InstanceSpec, source: Source, now: float) -> tuple[InstanceRecord, bool]:
        """Add or refresh ``spec``; the record and whether it is new."""
        ...

    def remove(self, name: str) -> InstanceRecord:
        """Drop ``name``; NotFoundError when unknown."""
        ...

    def expire(self, now: float) -> list[InstanceRecord]:
        """Drop and return the registrations whose heartbeats stopped."""
        ...

    def resolve(self, expr: str | list[str] | None, *, field: str) -> list[str]:
        """A target expression to known names (``field`` names it in a 400)."""
        ...

    def count_states(self) -> dict[str, int]:
        """How many instances are in each health state."""
        ...
