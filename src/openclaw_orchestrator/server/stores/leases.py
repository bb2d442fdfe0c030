"""Leases: named, expiring, fenced ownership of work one replica at a time must do (an
instance's probes, the sweeper), held in the database that the replicas share.

A lease is one row of ``orchestrator_leases`` (:mod:`.tables`). :meth:`LeaseStore.acquire_lease`
is one atomic statement, ``INSERT … ON CONFLICT (name) DO UPDATE … WHERE`` (:class:`LeaseSql`):
it takes the lease when it is free, expired, or already the caller's (a renewal). Every
change of hands (and a holder taking back a lease it let expire) bumps ``epoch`` by one: a
fencing token, so that work a former holder started under an older epoch can be told apart
and refused. A renewal keeps the epoch. A holder that dies simply stops renewing; once its
lease expires the next ``acquire_lease`` by anyone takes it over.

**Whose clock.** Expiry is judged by the database's clock, never the caller's: PostgreSQL's
``now()`` (replicas whose clocks disagree still agree on who holds what). A SQLite store
serves one process (:class:`~.sqlite.SqliteFileLock`), so its own process clock
(``time.time()``) is the only clock there is, and it judges.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .tables import LEASE_NAME_MAX, leases

__all__ = [
    "LEASE_TTL_MAX",
    "LEASE_TTL_MIN",
    "Lease",
    "LeaseSql",
    "LeaseStore",
    "check_lease",
    "holder_id",
    "lease_of",
]

LEASE_TTL_MIN = 0.1
"""The shortest lease, in seconds: shorter would expire before a round trip to renew it."""
LEASE_TTL_MAX = 3600.0
"""The longest lease, in seconds: a dead holder's work is never stuck for longer."""
_HOSTNAME_MAX = 64  # room for ":pid:suffix" within LEASE_NAME_MAX


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as the database granted it. ``expires_at`` is in seconds since the epoch (a
    float, like every other time in the stores), by the clock of the database that judged
    it: compare it with that clock, not the caller's. ``epoch`` is the fencing token."""

    name: str
    holder: str
    epoch: int
    expires_at: float


@runtime_checkable
class LeaseStore(Protocol):
    """Leases in the shared database; both stores implement it. Bounds, checked before any
    I/O (``ValueError`` naming the argument): ``name`` and ``holder`` 1 to 200 characters,
    ``ttl`` from 0.1 s to one hour."""

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Take ``name`` for ``ttl`` seconds if it is free, expired or already ``holder``'s
        (a renewal, same epoch); a new holder gets the epoch plus one (1 for a fresh lease).
        None while another holder's lease is live. One atomic statement."""
        ...

    async def release_lease(self, name: str, holder: str, epoch: int) -> bool:
        """Expire ``name`` now if ``holder`` still holds it at ``epoch``, so that a successor
        can take it at once; False when it is not (taken over, or already expired)."""
        ...

    async def get_lease(self, name: str) -> Lease | None:
        """Who holds ``name`` and until when; None when it is free or expired."""
        ...


def holder_id() -> str:
    """A holder id for this process: ``host:pid:random``. The random part keeps two replicas
    apart even where host and pid coincide (containers, a pid reused after a restart)."""
    return f"{socket.gethostname()[:_HOSTNAME_MAX]}:{os.getpid()}:{secrets.token_hex(6)}"


def check_lease(name: str, holder: str | None = None, ttl: float | None = None) -> None:
    """Raise ValueError, naming the argument, for a name or holder outside 1 to 200
    characters or a ttl outside :data:`LEASE_TTL_MIN` to :data:`LEASE_TTL_MAX` seconds."""
    for argument, value in (("name", name), ("holder", holder)):
        if value is not None and not 0 < len(value) <= LEASE_NAME_MAX:
            raise ValueError(
                f"lease {argument} must be 1 to {LEASE_NAME_MAX} characters, not {len(value)}"
            )
    if ttl is not None and not (math.isfinite(ttl) and LEASE_TTL_MIN <= ttl <= LEASE_TTL_MAX):
        raise ValueError(
            f"lease ttl must be {LEASE_TTL_MIN} to {LEASE_TTL_MAX:g} seconds, not {ttl!r}"
        )


_L = leases.name
_COLUMNS = "name, holder, epoch, expires_at"


@dataclass(frozen=True, slots=True)
class LeaseSql:
    """The three lease statements for one database, given how it spells *now* and *now plus
    the ttl* (an SQL expression: ``now()`` on PostgreSQL, a bound parameter on SQLite).
    Named parameters ``:name``, ``:holder`` and ``:epoch``; the same text on both otherwise."""

    acquire: str
    release: str
    get: str

    @classmethod
    def with_clock(cls, now: str, until: str) -> LeaseSql:
        """The statements, judging expiry by ``now`` and granting leases until ``until``."""
        live = f"{_L}.expires_at > {now}"
        return cls(
            acquire=(
                f"INSERT INTO {_L} ({_COLUMNS}) VALUES (:name, :holder, 1, {until}) "  # noqa: S608
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                f"epoch = CASE WHEN {_L}.holder = excluded.holder AND {live} "
                f"THEN {_L}.epoch ELSE {_L}.epoch + 1 END, expires_at = excluded.expires_at "
                f"WHERE {_L}.expires_at <= {now} OR {_L}.holder = excluded.holder "
                f"RETURNING {_COLUMNS}"
            ),
            release=(
                f"UPDATE {_L} SET expires_at = {now} WHERE name = :name "  # noqa: S608
                f"AND holder = :holder AND epoch = :epoch AND {live}"
            ),
            get=f"SELECT {_COLUMNS} FROM {_L} WHERE name = :name AND {live}",  # noqa: S608
        )


def lease_of(row: Sequence[Any], seconds: Callable[[Any], float]) -> Lease:
    """A lease from a row of :class:`LeaseSql`'s columns; ``seconds`` reads the driver's
    value of ``expires_at`` (a ``datetime`` from asyncpg, text from ``sqlite3``)."""
    name, holder, epoch, expires_at = row
    return Lease(name, holder, int(epoch), seconds(expires_at))
