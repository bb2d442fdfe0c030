"""Test-only fault knobs of the reference instance: latency, failures, hangs, bad health,
oversized replies.

They exist so demos and integration tests can show retries and failover against real
sockets. :class:`FaultConfig` is an immutable value; :class:`Faults` holds the current one
and the seeded random source, and *decides* (how long to wait, whether to fail) while the
app does the waiting.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_PADDED_REPLY_BYTES", "FaultConfig", "Faults"]

MAX_PADDED_REPLY_BYTES = 1 << 34
"""Largest ``reply_bytes``/``health_reply_bytes`` (16 GiB: streamed, never held in memory)."""


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """What goes wrong, per task request.

    ``latency`` + uniform(0, ``latency_jitter``) seconds of delay; then with probability
    ``fail_rate`` an answer of ``fail_status`` (with ``Retry-After: retry_after`` when set);
    ``hang`` never answers a task (until the client gives up); ``health_fail`` makes the
    health check answer 503 and ``health_degraded`` makes it say ``"degraded"``. ``seed``
    makes ``fail_rate`` and jitter reproducible.

    ``reply_bytes`` (0: off) pads every successful task and session-message reply to that
    many bytes with a ``"padding"`` string, streamed (the instance never holds it);
    ``health_reply_bytes`` does the same to the health check; ``reply_chunked`` sends
    padded replies without ``Content-Length``, so only counting while reading catches them.
    """

    latency: float = 0.0
    latency_jitter: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 503
    retry_after: float | None = None
    hang: bool = False
    health_fail: bool = False
    health_degraded: bool = False
    seed: int | None = None
    reply_bytes: int = 0
    health_reply_bytes: int = 0
    reply_chunked: bool = False

    def __post_init__(self) -> None:
        for name in ("latency", "latency_jitter"):
            object.__setattr__(self, name, _seconds(name, getattr(self, name)))
        if self.retry_after is not None:
            object.__setattr__(self, "retry_after", _seconds("retry_after", self.retry_after))
        object.__setattr__(self, "fail_rate", _rate(self.fail_rate))
        if not 400 <= _integer("fail_status", self.fail_status) <= 599:
            raise ValueError("fail_status: must be a 4xx or 5xx status")
        for name in ("hang", "health_fail", "health_degraded", "reply_chunked"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false")
        for name in ("reply_bytes", "health_reply_bytes"):
            if not 0 <= _integer(name, getattr(self, name)) <= MAX_PADDED_REPLY_BYTES:
                raise ValueError(f"{name}: must be 0 to {MAX_PADDED_REPLY_BYTES}")
        if self.seed is not None:
            _integer("seed", self.seed)

    def replace(self, changes: dict[str, Any]) -> FaultConfig:
        """A copy with ``changes`` applied; ValueError naming an unknown or invalid field."""
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown fault (known: {', '.join(sorted(known))})")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``GET /api/instance/faults``."""
        return dataclasses.asdict(self)


def _number(name: str, value: object) -> float:
    """``value`` as a float (JSON ints included); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a number")
    return float(value)


def _seconds(name: str, value: object) -> float:
    seconds = _number(name, value)
    if seconds < 0:
        raise ValueError(f"{name}: must not be negative")
    return seconds


def _rate(value: object) -> float:
    rate = _number("fail_rate", value)
    if not 0.0 <= rate <= 1.0:
        raise ValueError("fail_rate: must be between 0 and 1")
    return rate


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer")
    return value


class Faults:
    """The live fault configuration of one instance and the random source it draws from."""

    __slots__ = ("_rng", "config")

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.config = config or FaultConfig()
        self._rng = random.Random(self.config.seed)  # noqa: S311  # fault injection, not crypto

    def update(self, changes: dict[str, Any]) -> FaultConfig:
        """Apply ``changes`` (reseeding when ``seed`` is among them) and return the result."""
        self.config = self.config.replace(changes)
        if "seed" in changes:
            self._rng.seed(self.config.seed)
        return self.config

    def delay(self) -> float:
        """Seconds to wait before answering this task (0 when no latency is configured)."""
        config = self.config
        if config.latency_jitter:
            return config.latency + self._rng.uniform(0.0, config.latency_jitter)
        return config.latency

    def should_fail(self) -> bool:
        """Whether this task answers ``fail_status``: a draw against ``fail_rate``."""
        rate = self.config.fail_rate
        return rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)

    def __repr__(self) -> str:
        active = {k: v for k, v in self.config.to_dict().items() if v != _DEFAULTS[k]}
        shown = " ".join(f"{k}={v}" for k, v in active.items()) or "none"
        return f"<Faults {shown}>"


_DEFAULTS = FaultConfig().to_dict()
