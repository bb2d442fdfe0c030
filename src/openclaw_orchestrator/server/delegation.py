"""The loop guard: how many deliveries the call being served is already behind.

An agent an instance runs may delegate again through the orchestrator, which delivers to
another instance, whose agent may delegate again... Every call says how deep it is in
``X-Orchestrator-Hops`` (absent: 0, a person or program calling), every delivery to an
instance sends one more, and a call arriving with ``delegation.max_hops`` or more is
refused with :class:`~openclaw_orchestrator.errors.DelegationLoopError` before anything is
delivered (docs/api.md, "Delegation loops").

The count of the call being served lives in a context variable, as the request id of
the log lines does (:mod:`.logs`): the API binds it (:func:`bind_hops`), a durable run binds
the count it was submitted with, and tasks the core starts (a fanout's targets) inherit it,
so the drivers read it where they build an instance's headers (:func:`outgoing_hops`)
without every call in between passing it on.

Callers that cannot pass the header on: an OpenClaw gateway's MCP client sends the same
static headers on every call, whatever turn it serves. Such a caller names itself instead,
``X-Orchestrator-Caller: <instance name>``, and the :class:`DeliveryLedger` answers for it:
while a delivery to an instance is in flight, the ledger holds the hop count it was sent
with, so a call from that instance without ``X-Orchestrator-Hops`` counts as the highest
count in flight to it (0 when none; :func:`incoming_hops`). That is exact when one delegated
turn runs on the instance at a time, and errs on the deep side (refusing early, never late)
when several do. The ledger is per process: a call back must reach the replica that made
the delivery (docs/api.md, "Delegation loops").
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from ..errors import DelegationLoopError, InvalidRequestError

__all__ = [
    "CALLER_HEADER",
    "HOPS_HEADER",
    "LEDGER",
    "MAX_HOPS_VALUE",
    "RUN_HOPS_KEY",
    "DeliveryLedger",
    "bind_hops",
    "check_hops",
    "current_hops",
    "incoming_hops",
    "outgoing_hops",
    "parse_caller",
    "parse_hops",
    "reset_hops",
]

HOPS_HEADER = "X-Orchestrator-Hops"
CALLER_HEADER = "X-Orchestrator-Caller"
_CALLER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:]{0,63}")
"""An instance name (``models.NAME_PATTERN``): what ``X-Orchestrator-Caller`` may carry."""
MAX_HOPS_VALUE = 255
"""The largest value the header may carry (far above any ``delegation.max_hops``)."""

RUN_HOPS_KEY = "_hops"
"""Where a durable run keeps the count it was submitted with: in its stored request (shown
by ``GET /api/orchestrator/runs/{id}``), so its work, on whichever replica, sends the same."""

_hops: ContextVar[int] = ContextVar("orchestrator_hops", default=0)


def parse_hops(value: bytes | str) -> int:
    """The header's value as a count: decimal digits, 0 to :data:`MAX_HOPS_VALUE`; anything
    else is a 400 naming the header."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 3) or int(text) > MAX_HOPS_VALUE:
        raise InvalidRequestError(
            f"{HOPS_HEADER}: must be an integer from 0 to {MAX_HOPS_VALUE}, got {text[:16]!r}",
            field=HOPS_HEADER,
        )
    return int(text)


def bind_hops(hops: int) -> Token[int]:
    """Make ``hops`` the count of the call being served (until :func:`reset_hops`)."""
    return _hops.set(hops)


def reset_hops(token: Token[int]) -> None:
    _hops.reset(token)


def current_hops() -> int:
    """Deliveries the call being served is behind (0: nobody delegated it)."""
    return _hops.get()


def outgoing_hops() -> int:
    """What a delivery made for the call being served sends: one more than it came with."""
    return _hops.get() + 1


def check_hops(max_hops: int) -> None:
    """Refuse the call being served when it came through ``max_hops`` deliveries already."""
    hops = _hops.get()
    if hops >= max_hops:
        raise DelegationLoopError(
            f"this call came through {hops} delegations ({HOPS_HEADER}: {hops}); the limit "
            f"is delegation.max_hops = {max_hops}: agents are delegating in a loop, or too deep",
            details={"hops": hops, "max_hops": max_hops},
        )


def parse_caller(value: bytes | str) -> str:
    """``X-Orchestrator-Caller``'s value: an instance name (letters, digits, ``_.:``, at most
    64 characters); anything else is a 400 naming the header."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not _CALLER.fullmatch(text):
        raise InvalidRequestError(
            f"{CALLER_HEADER}: must be an instance name (letters, digits, '_', '.', ':'; at "
            f"most 64 characters), got {text[:16]!r}",
            field=CALLER_HEADER,
        )
    return text


class DeliveryLedger:
    """The hop counts of the deliveries in flight, per instance (module docstring).

    A lock guards the counts: servers in other threads of the process (tests run several)
    share the ledger, and a delivery's exit must never lose another's entry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, Counter[int]] = {}

    @contextmanager
    def delivering(self, instance: str, hops: int) -> Iterator[None]:
        """Hold ``hops`` for ``instance`` while the block runs (however it ends: a
        cancelled or failed delivery leaves nothing behind)."""
        with self._lock:
            self._in_flight.setdefault(instance, Counter())[hops] += 1
        try:
            yield
        finally:
            self._release(instance, hops)

    def _release(self, instance: str, hops: int) -> None:
        with self._lock:
            counts = self._in_flight[instance]
            counts[hops] -= 1
            if counts[hops] <= 0:
                del counts[hops]
            if not counts:
                del self._in_flight[instance]

    def highest(self, instance: str) -> int:
        """The deepest delivery in flight to ``instance`` (0 when none is)."""
        with self._lock:
            counts = self._in_flight.get(instance)
            return max(counts) if counts else 0

    def __repr__(self) -> str:
        with self._lock:
            shown = ", ".join(
                f"{name}: " + " ".join(f"{h}x{n}" for h, n in sorted(counts.items()))
                for name, counts in sorted(self._in_flight.items())
            )
        return f"<DeliveryLedger [{shown}]>"


LEDGER = DeliveryLedger()
"""The process's ledger: the drivers record into it, the API reads it for callers."""


def incoming_hops(
    hops: bytes | str | None, caller: bytes | str | None, *, ledger: DeliveryLedger = LEDGER
) -> int | None:
    """A call's count from its headers: ``X-Orchestrator-Hops`` when given, else the
    deepest delivery in flight to the ``X-Orchestrator-Caller`` it names, else None (no
    claim: 0). A bad value of either is a 400 naming that header."""
    name = None if caller is None else parse_caller(caller)
    if hops is not None:
        return parse_hops(hops)
    return None if name is None else ledger.highest(name)
