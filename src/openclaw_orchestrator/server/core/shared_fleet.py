"""The fleet shared by replicas on one PostgreSQL database: registrations, heartbeats,
probe ownership and health verdicts agreed by every replica (the other side of
:class:`~.fleet.LocalFleet`).

**Registry.** A registration, heartbeat or unregistration is written to the database first
(:class:`~..stores.fleet.FleetStore`), then to this replica's in-memory registry; the others
learn it from their next poll. Every replica polls "what changed since version V" every
``poll_interval`` (0.1 s): one autocommit statement on one pooled connection, which also
returns the database's *now*. Heartbeat expiry is judged by that clock alone: a
registration leaves every registry once a poll's *now* passes its ``expires_at`` (set by the
database at its last heartbeat), whatever the replicas' clocks say. Config instances stay
each replica's own: a registration of such a name is refused here (400) and ignored on a
replica whose config has the name.

**Probes.** Before probing an instance a replica takes (or renews) the lease
``probe:<instance>`` in the lease store, for ``interval + probe_timeout + LEASE_SLACK``
seconds of the database's clock; the owner renews it with every probe. The others ask again
when it would expire (:meth:`SharedFleet.may_probe`), so a dead owner's instances are
probed again by another replica one lease later, and each instance sees one probe per
interval whatever the number of replicas. Without the database, a replica probes anyway:
one process's behaviour, rather than no probes at all.

**Verdicts.** Each replica's records are :class:`SharedHealth`: the in-memory state machine,
plus every change it decides queued for the database (never awaited on the request path).
A *down* verdict, from a probe or from a failed request on any replica, is written
unconditionally (unless the instance is down already); any other verdict only by the probe
owner, while its lease is live, and only over the verdict it last saw (or its own), so that
recovery is the owner's decision and never undoes a newer down. Each replica adopts the
stored verdict on its next poll: a down verdict reaches every replica within one write and
one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from ...domain.health import FailureKind, HealthChanged, HealthPolicy, HealthState, InstanceHealth
from ...errors import NotFoundError
from ...models import InstanceSpec
from ...settings import Settings
from ..logs import get_logger
from ..stores.base import Store
from ..stores.fleet import FleetStore, InstanceRow, VerdictRow
from ..stores.leases import LEASE_TTL_MAX, LEASE_TTL_MIN, Lease, LeaseStore, holder_id
from ..stores.postgres import PostgresStore
from .clock import Clock, Sleep
from .fleet import ProbeGate
from .health_monitor import report_health_change
from .registry import InstanceRecord, Registry

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "LEASE_SLACK",
    "SharedFleet",
    "SharedHealth",
    "probe_lease",
    "shared_fleet",
    "stored_spec",
]

DEFAULT_POLL_INTERVAL = 0.1
"""Seconds between two polls of the shared tables: how stale a replica's view may be."""
LEASE_SLACK = 2.0
"""Seconds a probe lease outlives ``interval + probe_timeout``: room for the prober's tick
and a round trip, so that the owner renews before it expires."""
CLOSE_TIMEOUT = 2.0
"""Longest :meth:`SharedFleet.aclose` spends handing its leases and last verdicts over."""

log = get_logger("orchestrator")


def shared_fleet(
    store: Store | None, settings: Settings, *, holder: str | None = None
) -> SharedFleet | None:
    """The fleet for ``store``: shared on PostgreSQL (the replicas' database), None for
    anything else (one process: :class:`~.fleet.LocalFleet`, as before); ``holder``: this
    replica's id (the metrics' ``replica`` label), a new one when None."""
    if not isinstance(store, PostgresStore):
        return None
    policy = HealthPolicy(**settings.health.model_dump())
    return SharedFleet(FleetStore(store.engine), store, policy, holder=holder)


def probe_lease(instance: str) -> str:
    """The lease whose holder probes ``instance``."""
    return f"probe:{instance}"


def stored_spec(spec: InstanceSpec) -> dict[str, object]:
    """``spec`` as the shared table keeps it: JSON, credentials in clear (every replica
    calls the instance with them). Never logged, never returned."""
    data: dict[str, object] = spec.model_dump(mode="json")
    if spec.credentials is not None:
        data["credentials"] = spec.credentials.get_secret_value()
    return data


@dataclass(frozen=True, slots=True)
class _Verdict:
    """A verdict this replica decided, waiting to be written: the state, why, and the
    version of the stored verdict it was decided over."""

    state: HealthState
    reason: str
    based_on: int


class SharedHealth(InstanceHealth):
    """:class:`InstanceHealth` whose transitions are also handed to ``publish`` (a queue:
    nothing awaited), and which adopts the fleet's stored verdict (:meth:`adopt`).
    ``version`` is the version of the stored verdict this record last agreed with."""

    __slots__ = ("_publish", "version")

    def __init__(
        self,
        instance: str,
        policy: HealthPolicy,
        publish: Callable[[SharedHealth, HealthChanged], None],
    ) -> None:
        super().__init__(instance, policy)
        self._publish = publish
        self.version = 0

    def record_probe_success(
        self, latency: float, now: float, *, degraded: bool = False, detail: str | None = None
    ) -> HealthChanged | None:
        """A probe answered (this replica owns the probes): shared when it changes the state.
        While down, only the re-probe its down verdict scheduled may bring it back: a probe
        already on its way when the verdict arrived is ignored (``down_backoff`` is the
        verdict's to keep, whichever replica reached it)."""
        if self.is_down() and now < self.next_probe_at:
            return None
        event = super().record_probe_success(latency, now, degraded=degraded, detail=detail)
        return self._shared(event)

    def record_probe_failure(
        self, kind: FailureKind, error: str, now: float
    ) -> HealthChanged | None:
        """A probe failed: shared when it changes the state."""
        return self._shared(super().record_probe_failure(kind, error, now))

    def record_request_failure(
        self, kind: FailureKind, error: str, now: float
    ) -> HealthChanged | None:
        """A live request failed: a down verdict is shared with every replica."""
        return self._shared(super().record_request_failure(kind, error, now))

    def adopt(self, state: HealthState, reason: str | None, now: float) -> HealthChanged | None:
        """Take the fleet's verdict; the transition, if the state changes. A down verdict is
        re-probed after ``down_backoff`` (by the owner: recovery is its decision)."""
        if state is self.state:
            return None
        event = HealthChanged(self.instance, self.state, state, f"fleet: {reason}", now)
        self.state, self.last_change = state, now
        if state is HealthState.DOWN:
            self._down_streak = 0
            self.last_error = reason
            self.next_probe_at = now + self.policy.down_backoff
        elif state is HealthState.HEALTHY:
            self.consecutive_failures, self.last_error = 0, None
        elif state is HealthState.DEGRADED:
            self.last_error = reason
        return event

    def _shared(self, event: HealthChanged | None) -> HealthChanged | None:
        if event is not None:
            self._publish(self, event)
        return event


class SharedFleet:
    """Registry, heartbeats, probe ownership and verdicts shared through PostgreSQL (see
    the module docstring); one per replica, between :meth:`start` and :meth:`aclose`."""

    def __init__(
        self,
        store: FleetStore,
        leases: LeaseStore,
        policy: HealthPolicy,
        *,
        holder: str | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, not {poll_interval!r}")
        self.holder = holder or holder_id()
        self._store, self._leases, self._policy = store, leases, policy
        self._clock, self._sleep, self._poll_interval = clock, sleep, poll_interval
        ttl = policy.interval + policy.probe_timeout + LEASE_SLACK
        self.lease_ttl = min(LEASE_TTL_MAX, max(LEASE_TTL_MIN, ttl))
        self._registry = Registry(policy, new_health=self._new_health)
        self._version = 0  # the newest version applied
        self._applied: dict[str, int] = {}  # instance -> version of its registration applied
        self._expires: dict[str, float] = {}  # instance -> expiry, database clock
        self._offset: float | None = None  # database now - self._clock(), as last polled
        self._pending: dict[str, _Verdict] = {}  # verdicts to write, the newest per instance
        self._wake = asyncio.Event()
        self._owned: dict[str, int] = {}  # instance -> epoch of the probe lease held
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False
        self._unwritten: set[str] = set()  # instances whose verdict failed to be written
        self.polls = 0  # polls applied: how tests and reprs count staleness

    def __repr__(self) -> str:
        return (
            f"<SharedFleet v{self._version} [{len(self._registry)} instances | "
            f"probing {len(self._owned)} | {len(self._pending)} verdicts to write]>"
        )

    @property
    def registry(self) -> Registry:
        """The in-memory registry every part reads (fed by the polls)."""
        return self._registry

    @property
    def probe_gate(self) -> ProbeGate:
        """:meth:`may_probe`."""
        return self.may_probe

    @property
    def version(self) -> int:
        """The newest change of the shared tables this replica has applied."""
        return self._version

    def owns_probes(self, instance: str) -> bool:
        """Whether this replica took ``probe:<instance>`` at its last probe time."""
        return instance in self._owned

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the fleet as it is (the first poll), then keep polling and writing."""
        if self._tasks:
            return
        await self._poll_once()
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="orchestrator-fleet-poll"),
            asyncio.create_task(self._write_loop(), name="orchestrator-fleet-write"),
        ]

    async def aclose(self) -> None:
        """Stop polling; write the verdicts still queued and release the probe leases held
        (another replica takes them at its next attempt, not at their expiry), within
        ``CLOSE_TIMEOUT``; whatever is left expires."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._write_pending()
                for instance, epoch in list(self._owned.items()):
                    await self._leases.release_lease(probe_lease(instance), self.holder, epoch)
        self._owned.clear()

    # -- registry --------------------------------------------------------------------------

    async def register(self, spec: InstanceSpec, now: float) -> tuple[InstanceRecord, bool]:
        """Write the registration (or heartbeat), then hold it here; new to the fleet when
        no replica had a live registration of the name. 400 for a config instance here."""
        self._registry.check_registrable(spec.name)
        written = await self._store.register(
            spec.name, stored_spec(spec), spec.heartbeat_ttl, self.holder
        )
        self._offset = written.now - self._clock()
        record = self._apply_instance(written.row, written.now, spec)
        if record is None:  # a newer unregistration was applied first: this one is history
            return InstanceRecord(
                spec, "registered", self._new_health(spec.name, self._policy)
            ), written.created
        if written.fresh and isinstance(record.health, SharedHealth):
            record.health.version = written.row.version  # the verdict was reset with it
        return record, written.created

    async def unregister(self, name: str) -> None:
        """A config instance leaves this replica only; a registration leaves the fleet
        (written first). NotFoundError when neither is known."""
        if name in self._registry and self._registry.get(name).source == "config":
            self._registry.remove(name)
            return
        row = await self._store.unregister(name)
        if row is None:
            raise NotFoundError(f"no instance named {name!r}", instance=name)
        self._applied[name] = row.version
        self._drop(name)

    # -- probes ----------------------------------------------------------------------------

    async def may_probe(self, record: InstanceRecord) -> bool:
        """Take or renew ``probe:<instance>``: True when this replica holds it. Otherwise
        set the next attempt to when the holder's lease expires, and say no. Without the
        database, yes (a probe per replica beats none)."""
        instance = record.name
        lease_name = probe_lease(instance)
        try:
            lease = await self._leases.acquire_lease(lease_name, self.holder, self.lease_ttl)
            if lease is not None:
                self._owned[instance] = lease.epoch
                return True
            self._owned.pop(instance, None)
            current = await self._leases.get_lease(lease_name)
        except Exception as exc:  # the database, unreachable or failing: probe locally
            log.warning("orchestrator.probe_lease_failed", instance=instance, reason=str(exc))
            return True
        record.health.next_probe_at = self._clock() + max(self._poll_interval, self._left(current))
        return False

    def _left(self, lease: Lease | None) -> float:
        """Seconds until ``lease`` expires, by the database's clock as last polled: none when
        it has just expired, a whole lease when the offset is not known yet."""
        if lease is None:
            return 0.0
        if self._offset is None:
            return self.lease_ttl
        return lease.expires_at - self._offset - self._clock()

    # -- polling ---------------------------------------------------------------------------

    async def sync(self) -> None:
        """Apply everything written since the last poll, then expire by the database's now."""
        changes = await self._store.changes(self._version)
        self._offset = changes.now - self._clock()
        for row in changes.instances:
            self._apply_instance(row, changes.now)
        for verdict in changes.verdicts:
            self._apply_verdict(verdict)
        self._version = max(self._version, changes.version)
        self._expire(changes.now)
        self.polls += 1

    async def _poll_loop(self) -> None:
        while True:
            await self._sleep(self._poll_interval)
            await self._poll_once()

    async def _poll_once(self) -> None:
        try:
            await self.sync()
        except Exception as exc:  # the database away: keep the last view, say so once
            if not self._failing:
                log.warning("orchestrator.fleet_poll_failed", reason=f"{exc!s:.300}")
            self._failing = True
        else:
            if self._failing:
                log.info("orchestrator.fleet_poll_recovered", version=self._version)
            self._failing = False

    def _apply_instance(
        self, row: InstanceRow, now: float, spec: InstanceSpec | None = None
    ) -> InstanceRecord | None:
        """Hold, refresh or drop ``row``'s instance; rows older than one applied are old news."""
        name = row.name
        if self._applied.get(name, 0) >= row.version:
            return self._registry.get(name) if name in self._registry else None
        self._applied[name] = row.version
        if not row.is_live(now):
            self._drop(name)
            return None
        if spec is None:
            try:
                spec = InstanceSpec.model_validate(row.spec)
            except ValidationError as exc:  # written by another version: skip it, say why
                log.warning(
                    "orchestrator.fleet_spec_invalid", instance=name, errors=exc.error_count()
                )
                return None
        wall = None if row.heartbeat_at is None else datetime.fromtimestamp(row.heartbeat_at, UTC)
        record = self._registry.adopt(spec, heartbeat_wall=wall)
        if record is None:
            return None
        if row.expires_at is None:
            self._expires.pop(name, None)
        else:
            self._expires[name] = row.expires_at
        return record

    def _apply_verdict(self, row: VerdictRow, *, force: bool = False) -> None:
        """Adopt the stored verdict on an instance this replica holds, unless it already
        agreed with that version (or a newer one)."""
        if row.instance not in self._registry:
            return
        health = self._registry.get(row.instance).health
        if not isinstance(health, SharedHealth) or (row.version <= health.version and not force):
            return
        health.version = max(health.version, row.version)
        try:
            state = HealthState(row.state)
        except ValueError:
            return
        report_health_change(health.adopt(state, row.reason, self._clock()))

    def _expire(self, now: float) -> None:
        for name, expires_at in list(self._expires.items()):
            if expires_at <= now:
                self._expires.pop(name)
                if self._registry.discard(name) is not None:
                    log.warning("orchestrator.instance_expired", instance=name)

    def _drop(self, name: str) -> None:
        self._expires.pop(name, None)
        if self._registry.discard(name) is not None:
            log.info("orchestrator.instance_removed", instance=name)

    # -- verdicts --------------------------------------------------------------------------

    def _new_health(self, instance: str, policy: HealthPolicy) -> SharedHealth:
        return SharedHealth(instance, policy, self._publish)

    def _publish(self, health: SharedHealth, event: HealthChanged) -> None:
        """Queue a verdict decided here (the newest per instance wins); never awaits."""
        self._pending[health.instance] = _Verdict(event.new, event.reason, health.version)
        self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._write_pending()
            if self._pending:  # the database refused or is away: try again shortly
                await self._sleep(self._poll_interval)
                self._wake.set()

    async def _write_pending(self) -> None:
        batch, self._pending = self._pending, {}
        for instance, verdict in batch.items():
            try:
                await self._write(instance, verdict)
            except Exception as exc:  # kept unless a newer verdict replaced it
                self._pending.setdefault(instance, verdict)
                if instance not in self._unwritten:  # said once, not at every retry
                    reason = f"{exc!s:.300}"
                    log.warning(
                        "orchestrator.verdict_write_failed", instance=instance, reason=reason
                    )
                self._unwritten.add(instance)
            else:
                self._unwritten.discard(instance)

    async def _write(self, instance: str, verdict: _Verdict) -> None:
        """Down: anyone, at once. Otherwise only the probe owner, over what it saw; when
        refused, take the stored verdict instead of the one decided here."""
        store = self._store
        if verdict.state is HealthState.DOWN:
            row = await store.mark_down(instance, verdict.reason, self.holder)
            if row is not None:
                self._settle(row)
            return
        row = await store.decide(
            instance,
            verdict.state.value,
            verdict.reason,
            origin=self.holder,
            lease=probe_lease(instance),
            based_on=verdict.based_on,
        )
        if row is not None:
            self._settle(row)
            return
        stored = await store.verdict(instance)
        if stored is not None:
            self._apply_verdict(stored, force=True)

    def _settle(self, row: VerdictRow) -> None:
        """This replica's verdict is the stored one at ``row.version``."""
        if row.instance in self._registry:
            health = self._registry.get(row.instance).health
            if isinstance(health, SharedHealth):
                health.version = max(health.version, row.version)
