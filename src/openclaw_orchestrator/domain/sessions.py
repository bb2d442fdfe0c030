"""Session rules: records, placement, tokens, and when a session may take a send.

Times are wall-clock epoch seconds (sessions outlive the process, so a monotonic clock would
not do), always passed in. Tokens are random bytes made by the caller; only their SHA-256
is ever stored, and checks compare digests in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..errors import (
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    SessionClosedError,
    UnauthorizedError,
)

__all__ = [
    "MAX_TTL",
    "TOKEN_PREFIX",
    "MessageRecord",
    "SessionRecord",
    "as_of",
    "check_sendable",
    "check_token",
    "hash_token",
    "is_idle_expired",
    "make_token",
    "rendezvous_order",
    "token_matches",
]

TOKEN_PREFIX = "ocs_"  # noqa: S105  # a public prefix that marks session tokens, not a secret
MIN_TOKEN_BYTES = 16
MAX_TTL = 30 * 86400.0
"""The longest idle TTL a session may ask for: 30 days."""

State = Literal["open", "closed", "expired"]
Failover = Literal["none", "migrate"]
Kind = Literal["message", "migration", "interrupted"]
"""A history entry: a message and its reply, a move to another instance, or a message whose
outcome cannot be known (its sender died before recording it, and its instance cannot
answer a redelivery from memory): kept with no reply."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as stored. ``messages`` counts its history entries."""

    id: str
    instance: str
    token_hash: str
    ttl: float
    failover: Failover = "none"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    state: State = "open"
    created_at: float = 0.0
    last_active_at: float = 0.0
    closed_at: float | None = None
    messages: int = 0

    @property
    def expires_at(self) -> float | None:
        """When an idle open session expires; None once it is closed."""
        return self.last_active_at + self.ttl if self.state == "open" else None

    def moved_to(self, instance: str) -> SessionRecord:
        """The same session pinned elsewhere (migration)."""
        return replace(self, instance=instance)


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One history entry: a message and its reply, a migration note, or an interrupted
    message (see :data:`Kind`)."""

    session_id: str
    seq: int
    kind: Kind
    instance: str
    data: Any = None
    reply: Any = None
    latency_ms: float | None = None
    request_id: str | None = None
    idempotency_key: str | None = None
    created_at: float = 0.0


def make_token(random_bytes: bytes) -> str:
    """A session token from fresh randomness: ``ocs_`` + URL-safe base64."""
    if len(random_bytes) < MIN_TOKEN_BYTES:
        raise ValueError(f"a token needs at least {MIN_TOKEN_BYTES} random bytes")
    return TOKEN_PREFIX + base64.urlsafe_b64encode(random_bytes).rstrip(b"=").decode()


def hash_token(token: str) -> str:
    """What is stored instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, record: SessionRecord) -> bool:
    """Whether ``token`` is ``record``'s token, compared in constant time."""
    return hmac.compare_digest(hash_token(token), record.token_hash)


def is_idle_expired(record: SessionRecord, now: float) -> bool:
    """An open session idle for longer than its TTL."""
    expires = record.expires_at
    return expires is not None and now > expires


def as_of(record: SessionRecord, now: float) -> SessionRecord:
    """``record`` as a reader must see it at ``now``: an open session idle past its TTL is
    ``expired`` already, whether or not the sweeper has recorded that yet."""
    if record.state == "open" and is_idle_expired(record, now):
        return replace(record, state="expired")
    return record


def check_token(record: SessionRecord | None, token: str, now: float) -> None:
    """Allow ``token`` for ``record`` only while the session is open and not idle past its
    TTL: Forbidden when it is not this session's token, Unauthorized once the session is
    closed or expired (checked on use, not left to the sweeper)."""
    if record is None or not token_matches(token, record):
        raise ForbiddenError("this session token does not grant that session")
    state = as_of(record, now).state
    if state != "open":
        raise UnauthorizedError(f"session token is no longer valid: session {state}")


def check_sendable(record: SessionRecord | None, session_id: str, now: float) -> SessionRecord:
    """The record, if it can take a send; NotFound (unknown) or SessionClosed (closed,
    expired, or idle past its TTL even if the sweeper has not run yet) otherwise."""
    if record is None:
        raise NotFoundError(f"no session {session_id!r}", field="session_id")
    if record.state != "open" or is_idle_expired(record, now):
        state = "expired" if record.state == "expired" or record.state == "open" else "closed"
        raise SessionClosedError(
            f"session {session_id!r} is {state}", details={"state": state}, field="session_id"
        )
    return record


def _unit_hash(key: str, name: str) -> float:
    """A stable number in (0, 1) for the pair, the same on every replica and restart."""
    digest = hashlib.blake2b(f"{key}\x00{name}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 2)


def rendezvous_order(key: str, names: Sequence[str], weights: Mapping[str, float]) -> list[str]:
    """Weighted rendezvous (highest random weight) hashing: ``key``'s preference order.

    Score of instance i: ``-w_i / ln(h(key, i))``; the highest wins. The same key maps to the
    same instance while it is a candidate, and removing an instance moves only the keys that
    were on it.
    """
    if not names:
        raise InvalidRequestError("no candidate instances", field="instance")
    return sorted(
        names, key=lambda n: -weights.get(n, 1.0) / math.log(_unit_hash(key, n)), reverse=True
    )
