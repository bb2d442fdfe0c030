"""Idempotency keys in PostgreSQL: the statements behind
:class:`~..core.shared_idempotency.SharedIdempotency`, one row of ``orchestrator_idempotency``
per key (:mod:`.tables`).

Every method is one statement in its own transaction, judged by the server's ``now()``, with
nothing kept on the connection between statements (no advisory locks, no temporary tables),
so it works through PgBouncer in transaction mode. A claim is ``INSERT … ON CONFLICT DO
UPDATE … WHERE expires_at <= now()``: it takes a key that is new, whose claim ran out (a dead
replica's) or whose kept result outlived its retention; every other caller reads the row in
the same statement. Renewing, finishing and releasing name the claim's holder, so a replica
whose claim was taken over changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .postgres import storage_error
from .tables import idempotency

__all__ = ["Claim", "IdempotencySql", "guarded"]

_T = idempotency.name
_UNTIL = "now() + make_interval(secs => :seconds)"
_CLAIM = text(
    f"WITH claim AS (INSERT INTO {_T} AS t "  # noqa: S608  # table name, not input
    "(scope, key, fingerprint, holder, status, result, expires_at) "
    f"VALUES (:scope, :key, :fingerprint, :holder, 'running', NULL, {_UNTIL}) "
    "ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, "
    "holder = excluded.holder, status = 'running', result = NULL, "
    "expires_at = excluded.expires_at WHERE t.expires_at <= now() "
    "RETURNING 'claimed'::text AS status, t.fingerprint, NULL::bytea AS result) "
    "SELECT status, fingerprint, result FROM claim UNION ALL "
    f"SELECT status, fingerprint, result FROM {_T} "
    "WHERE scope = :scope AND key = :key AND expires_at > now() "
    "AND NOT EXISTS (SELECT 1 FROM claim)"
)
_PEEK = text(
    f"SELECT status, fingerprint, result FROM {_T} "  # noqa: S608
    "WHERE scope = :scope AND key = :key AND expires_at > now()"
)
_MINE = "scope = :scope AND key = :key AND holder = :holder AND status = 'running'"
_RENEW = text(f"UPDATE {_T} SET expires_at = {_UNTIL} WHERE {_MINE}")  # noqa: S608
_FINISH = text(
    f"UPDATE {_T} SET status = 'done', result = :result, expires_at = {_UNTIL} "  # noqa: S608
    f"WHERE {_MINE}"
)
_RELEASE = text(f"DELETE FROM {_T} WHERE {_MINE}")  # noqa: S608
_SWEEP = text(
    f"DELETE FROM {_T} WHERE (scope, key) IN (SELECT scope, key FROM {_T} "  # noqa: S608
    "WHERE expires_at <= now() LIMIT :limit FOR UPDATE SKIP LOCKED)"
)


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim found: ``claimed`` (the caller now holds the key), ``running`` (another
    holder works on it) or ``done`` (``result`` is its JSON); ``fingerprint`` is the
    request's the row belongs to."""

    status: Literal["claimed", "running", "done"]
    fingerprint: str
    result: bytes | None = None


@contextlib.asynccontextmanager
async def guarded(engine: AsyncEngine, *, write: bool) -> AsyncIterator[AsyncConnection]:
    """A connection (in a transaction when ``write``) whose driver failures are raised as
    the store's ``StorageUnavailableError`` (503) / ``StorageFullError`` (507)."""
    try:
        async with engine.begin() if write else engine.connect() as conn:
            yield conn
    except Exception as exc:
        error = storage_error(exc)
        if error is None:
            raise
        raise error from exc


def _claim(row: Sequence[Any] | None) -> Claim | None:
    if row is None:
        return None
    status, fingerprint, result = row
    return Claim(status, fingerprint, None if result is None else bytes(result))


@dataclass(frozen=True, slots=True)
class IdempotencySql:
    """The key statements on ``engine`` (a PostgreSQL pool, the store's)."""

    engine: AsyncEngine

    async def claim(
        self, scope: str, key: str, fingerprint: str, holder: str, lease: float
    ) -> Claim | None:
        """Take the key for ``lease`` seconds, or what holds it; None when a concurrent
        claim is not visible yet (ask again)."""
        params = {"scope": scope, "key": key, "fingerprint": fingerprint, "holder": holder}
        async with guarded(self.engine, write=True) as conn:
            row = (await conn.execute(_CLAIM, {**params, "seconds": float(lease)})).first()
        return _claim(row)

    async def peek(self, scope: str, key: str) -> Claim | None:
        """The key's live row (running or done), or None when it is free to claim."""
        async with guarded(self.engine, write=False) as conn:
            row = (await conn.execute(_PEEK, {"scope": scope, "key": key})).first()
        return _claim(row)

    async def renew(self, scope: str, key: str, holder: str, lease: float) -> bool:
        """Extend ``holder``'s claim by ``lease`` seconds; False when it is not theirs now."""
        params = {"scope": scope, "key": key, "holder": holder, "seconds": float(lease)}
        async with guarded(self.engine, write=True) as conn:
            return bool((await conn.execute(_RENEW, params)).rowcount)

    async def finish(self, scope: str, key: str, holder: str, result: bytes, ttl: float) -> bool:
        """Keep ``result`` for ``ttl`` seconds; False when the claim was taken over."""
        params = {"scope": scope, "key": key, "holder": holder, "result": result}
        async with guarded(self.engine, write=True) as conn:
            return bool((await conn.execute(_FINISH, {**params, "seconds": float(ttl)})).rowcount)

    async def release(self, scope: str, key: str, holder: str) -> bool:
        """Forget ``holder``'s claim (the work failed): the next claim runs the key again."""
        params = {"scope": scope, "key": key, "holder": holder}
        async with guarded(self.engine, write=True) as conn:
            return bool((await conn.execute(_RELEASE, params)).rowcount)

    async def sweep(self, limit: int) -> int:
        """Delete up to ``limit`` rows past their expiry (rows other sweepers hold are
        skipped); how many went."""
        async with guarded(self.engine, write=True) as conn:
            return int((await conn.execute(_SWEEP, {"limit": limit})).rowcount)
