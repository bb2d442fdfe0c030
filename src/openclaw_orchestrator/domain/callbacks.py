"""Run callbacks: the orchestrator POSTs a finished run to the URL given at submit, signed,
and retries until the receiver acknowledges it or the callback expires (issue 12).

Everything here decides and nothing waits: the signature (:func:`sign`, :func:`verify`),
whether an attempt's outcome ends the callback, and when the next attempt is due
(:func:`decide`). The store keeps the records, the deliverer does the sending.

**Signing** (like Stripe's and GitHub's webhooks): the request carries
``X-Orchestrator-Timestamp: <unix seconds>`` and ``X-Orchestrator-Signature: v1=<hex>``,
the hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body`` keyed by the callback's secret,
and ``X-Orchestrator-Delivery: <id>``, the same on every attempt of one callback so that a
receiver can drop a repeat (delivery is at least once).

**Outcomes.** Any 2xx acknowledges. ``410 Gone`` ends the callback at once (the receiver
says it will never want it). Anything else (no answer, a timeout, a refused address, 3xx,
4xx, 5xx) is retried: a receiver's 4xx is most often a deployment or configuration slip
fixed within the expiry, and a lost final result costs more than a few more requests.
Retries back off with :func:`~.backoff.compute_backoff`'s full jitter until
``max_attempts`` attempts were made or the next one would fall after the expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass, field
from typing import Literal, get_args

from .backoff import RetryPolicy, compute_backoff

__all__ = [
    "CALLBACK_STATES",
    "DELIVERY_HEADER",
    "FINAL",
    "GONE",
    "MAX_CALLBACK_URL",
    "MAX_ERROR",
    "MAX_SECRET",
    "MIN_SECRET",
    "SIGNATURE_HEADER",
    "SIGNATURE_VERSION",
    "TIMESTAMP_HEADER",
    "CallbackAttempt",
    "CallbackPolicy",
    "CallbackRecord",
    "CallbackState",
    "Decision",
    "decide",
    "is_acknowledged",
    "sign",
    "signing_input",
    "verify",
]

CallbackState = Literal["pending", "delivered", "failed", "expired"]
"""``pending`` until the run finishes and then while retries are due; ``delivered`` once
acknowledged; ``failed`` after 410 Gone or the last allowed attempt; ``expired`` when the
next attempt would fall past the expiry."""
CALLBACK_STATES: tuple[CallbackState, ...] = get_args(CallbackState)
FINAL: frozenset[CallbackState] = frozenset({"delivered", "failed", "expired"})

MAX_CALLBACK_URL = 2048
MIN_SECRET, MAX_SECRET = 16, 256
MAX_ERROR = 500
"""The longest error text kept for an attempt (longer ones are cut)."""
GONE = 410

SIGNATURE_VERSION = "v1"
SIGNATURE_HEADER = "X-Orchestrator-Signature"
TIMESTAMP_HEADER = "X-Orchestrator-Timestamp"
DELIVERY_HEADER = "X-Orchestrator-Delivery"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackRecord:
    """A run's callback as stored. ``attempts`` counts attempts begun; ``next_at`` is when
    the next is due (wall-clock epoch seconds); ``ended_at`` when it became final.
    ``holder``/``held_until``/``epoch`` are the lease of the replica delivering it now."""

    run_id: str
    url: str
    secret: str = field(repr=False)
    delivery_id: str
    state: CallbackState = "pending"
    attempts: int = 0
    next_at: float = 0.0
    created_at: float = 0.0
    ended_at: float | None = None
    holder: str | None = None
    held_until: float | None = None
    epoch: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackAttempt:
    """One delivery attempt, numbered from 1: recorded when it begins (``status``, ``error``
    and ``latency_ms`` still None), completed once answered. One left incomplete is an
    attempt whose replica stopped mid-way: it may have reached the receiver."""

    run_id: str
    n: int
    at: float
    status: int | None = None
    error: str | None = None
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackPolicy:
    """When to try again: backoff ``base`` seconds doubling up to ``cap``, at most
    ``max_attempts`` attempts, none later than ``expiry`` seconds after the run finished."""

    base: float = 5.0
    cap: float = 3600.0
    max_attempts: int = 20
    expiry: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.expiry <= 0:
            raise ValueError("max_attempts must be >= 1 and expiry > 0")

    def backoff(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_attempts - 1, base=self.base, cap=self.cap)


@dataclass(frozen=True, slots=True)
class Decision:
    """What becomes of a callback after an attempt: its ``state``, and when ``pending``,
    ``next_at`` for the next attempt."""

    state: CallbackState
    next_at: float | None = None
    reason: str = ""


def signing_input(timestamp: int, body: bytes) -> bytes:
    """What the signature covers: ``b"<timestamp>." + body``."""
    return f"{timestamp}.".encode() + body


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Orchestrator-Signature`` value: ``v1=<hex HMAC-SHA256>``."""
    mac = hmac.new(secret.encode(), signing_input(timestamp, body), hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, *, now: float, tolerance: float = 300
) -> bool:
    """Whether ``signature`` (a header value) signs ``body`` at ``timestamp`` with
    ``secret``, and the timestamp is within ``tolerance`` seconds of ``now`` (a replayed
    old request fails). Compared in constant time."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature.strip())


def is_acknowledged(status: int | None) -> bool:
    return status is not None and 200 <= status <= 299


def decide(
    attempt: int,
    status: int | None,
    *,
    now: float,
    expires_at: float,
    policy: CallbackPolicy,
    rng: random.Random,
) -> Decision:
    """After attempt number ``attempt`` (from 1) answered ``status`` (None: no answer),
    at ``now``: delivered, failed, expired, or pending until a backed-off ``next_at``."""
    if is_acknowledged(status):
        return Decision("delivered")
    if status == GONE:
        return Decision("failed", reason="the receiver answered 410 Gone")
    if attempt >= policy.max_attempts:
        return Decision("failed", reason=f"no acknowledgement after {attempt} attempts")
    next_at = now + compute_backoff(attempt, policy.backoff(), rng)
    if next_at >= expires_at:
        return Decision("expired", reason="the next attempt would fall past the expiry")
    return Decision("pending", next_at)
