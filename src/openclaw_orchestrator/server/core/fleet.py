"""The fleet: who the instances are and who probes them, as one seam with two sides.

:class:`LocalFleet` is one process (SQLite, the embedded default): its in-memory
:class:`~.registry.Registry` is the whole truth and every replica-less rule stays as it
was. :class:`~.shared_fleet.SharedFleet` is several replicas on one PostgreSQL database:
registrations and verdicts are written there first and every replica's registry follows
them. Either way the parts (routing, fanout, sessions, the monitor) read the same
in-memory :class:`~.interfaces.InstanceRegistry`, so their hot paths never wait on a
database; only :meth:`Fleet.register`, :meth:`Fleet.unregister` and the probe gate do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from ...models import InstanceSpec
from .interfaces import InstanceRegistry
from .registry import InstanceRecord

__all__ = ["Fleet", "LocalFleet", "ProbeGate"]

ProbeGate = Callable[[InstanceRecord], Awaitable[bool]]
"""Asked before each probe: whether this process probes ``record`` now (it owns its
probes). Saying no, it sets ``record.health.next_probe_at`` to when to ask again."""


class Fleet(Protocol):
    """The registry the parts read, and the writes and probe ownership behind it."""

    @property
    def registry(self) -> InstanceRegistry:
        """The in-memory registry every part reads."""
        ...

    @property
    def probe_gate(self) -> ProbeGate | None:
        """Asked before each probe; None: this process probes everything."""
        ...

    async def start(self) -> None:
        """Start following the fleet (nothing for one process)."""
        ...

    async def aclose(self) -> None:
        """Stop following it and hand over what this process held."""
        ...

    async def register(self, spec: InstanceSpec, now: float) -> tuple[InstanceRecord, bool]:
        """Register or heartbeat ``spec``; the record and whether the fleet had no live
        registration of that name (a 201, not a 200). 400 for a config instance's name."""
        ...

    async def unregister(self, name: str) -> None:
        """Remove ``name``; NotFoundError when there is no such instance."""
        ...


class LocalFleet:
    """One process: the registry in memory, heartbeats expired by this process's clock."""

    def __init__(self, registry: InstanceRegistry) -> None:
        self._registry = registry

    def __repr__(self) -> str:
        return f"<LocalFleet {self._registry!r}>"

    @property
    def registry(self) -> InstanceRegistry:
        """The in-memory registry every part reads."""
        return self._registry

    @property
    def probe_gate(self) -> ProbeGate | None:
        """None: this process probes every instance."""
        return None

    async def start(self) -> None:
        """Nothing to follow."""

    async def aclose(self) -> None:
        """Nothing to hand over."""

    async def register(self, spec: InstanceSpec, now: float) -> tuple[InstanceRecord, bool]:
        """:meth:`~.registry.Registry.upsert` as a registration at ``now``."""
        return self._registry.upsert(spec, "registered", now)

    async def unregister(self, name: str) -> None:
        """:meth:`~.registry.Registry.remove`: config or registered, until the next restart."""
        self._registry.remove(name)
