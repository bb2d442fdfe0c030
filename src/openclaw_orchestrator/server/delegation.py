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
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from ..errors import DelegationLoopError, InvalidRequestError

__all__ = [
    "HOPS_HEADER",
    "MAX_HOPS_VALUE",
    "RUN_HOPS_KEY",
    "bind_hops",
    "check_hops",
    "current_hops",
    "outgoing_hops",
    "parse_hops",
    "reset_hops",
]

HOPS_HEADER = "X-Orchestrator-Hops"
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
