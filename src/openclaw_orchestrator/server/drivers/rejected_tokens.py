"""The tokens OpenClaw gateways refused, so that they are not resent.

A 401 (or a 429 for failed auth) means the gateway is *misconfigured*, not down; resending
the same token only earns more refusals (and, on some gateways, a lock-out). The driver
remembers the refusal per instance, for these credentials, until they change or ``backoff``
seconds pass (see ``docs/openclaw.md``). Only a fingerprint of the token is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import InstanceError
from ...models import InstanceSpec

__all__ = ["DEFAULT_REJECTION_BACKOFF", "MISCONFIGURED", "RejectedTokens"]

DEFAULT_REJECTION_BACKOFF = 300.0
MISCONFIGURED = "misconfigured: gateway rejected the token"


@dataclass(frozen=True, slots=True)
class _Rejection:
    """A token the gateway refused: not resent while ``fingerprint`` matches, until ``until``."""

    fingerprint: str
    until: float
    detail: str


def _fingerprint(instance: InstanceSpec) -> str:
    secret = instance.credentials.get_secret_value() if instance.credentials else ""
    return hashlib.sha256(secret.encode()).hexdigest()


class RejectedTokens:
    """Per instance, the refused token's fingerprint, how long to hold off, and why."""

    def __init__(self, backoff: float, clock: Callable[[], float]) -> None:
        self._backoff = backoff
        self._clock = clock
        self._rejections: dict[str, _Rejection] = {}

    def __len__(self) -> int:
        return len(self._rejections)

    def __repr__(self) -> str:
        return f"<RejectedTokens {len(self)}>"

    def detail(self, instance: InstanceSpec) -> str | None:
        """Why ``instance``'s current token is not to be resent yet; None when it may be."""
        rejection = self._rejections.get(instance.name)
        if rejection is None:
            return None
        if rejection.fingerprint != _fingerprint(instance) or self._clock() >= rejection.until:
            del self._rejections[instance.name]  # new credentials, or time to re-check
            return None
        return rejection.detail

    def remember(self, instance: InstanceSpec, error: InstanceError) -> str:
        """Hold ``instance``'s token back after ``error`` (a 401 or 429); returns the detail."""
        wait = max(self._backoff, error.retry_after or 0.0)
        detail = MISCONFIGURED
        if instance.credentials is None:
            detail = "misconfigured: the gateway wants a token and the instance has none"
        elif error.upstream_status == 429:
            detail = f"{MISCONFIGURED} (HTTP 429: too many failed auth attempts)"
        self._rejections[instance.name] = _Rejection(
            _fingerprint(instance), self._clock() + wait, detail
        )
        return detail

    @staticmethod
    def refusal(instance: InstanceSpec) -> InstanceError:
        """The error a call gets instead of resending a rejected token."""
        return InstanceError(
            f"{instance.name}: {MISCONFIGURED}; the token is not resent until the instance's "
            "credentials change",
            instance=instance.name,
            upstream_status=401,
        )
