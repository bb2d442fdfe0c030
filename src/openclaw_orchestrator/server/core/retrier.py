"""The retry loop's doing half: the pure :class:`~openclaw_orchestrator.domain.backoff.RetryRules`
decide, the :class:`Retrier` hands each scheduled retry to its hooks and waits.

Hooks receive frozen :class:`~openclaw_orchestrator.domain.backoff.RetryScheduled` events
(stamina's ``RetryDetails``); the default hook :func:`log_retry` writes a route's retry as
``orchestrator.retry_scheduled`` (a fanout's retries show as the attempt count of its
``orchestrator.fanout_target`` line). The sleep is injected: zero waits in tests.

With replicas sharing a retry budget, a retry can be refused only because this replica's
grant of the fleet's headroom is spent while the fleet still has headroom; then the retrier
waits (at most :data:`REGRANT_WAIT`, never past the deadline) for the syncer's next exchange
(:attr:`Retrier.grants`) and asks once more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Protocol

from ...domain.backoff import AttemptState, GiveUp, RetryAfter, RetryRules, RetryScheduled
from ...errors import OrchestratorError
from ..logs import get_logger
from ..observability.observer import OFF, Observer
from .clock import Clock, Sleep, ms

__all__ = ["DEFAULT_RETRY_HOOKS", "REGRANT_WAIT", "Grants", "Retrier", "RetryHook", "log_retry"]

RetryHook = Callable[[RetryScheduled], None]
"""Called with every retry just before its wait."""

REGRANT_WAIT = 0.25
"""Seconds a retry refused only by this replica's grant waits for a new one."""

log = get_logger("orchestrator")


class Grants(Protocol):
    """Where this replica's part of a shared retry budget comes from
    (:class:`~.fleet_budget.FleetBudget`)."""

    async def regrant(self, timeout: float) -> bool: ...


def log_retry(event: RetryScheduled) -> None:
    """The production hook: one ``orchestrator.retry_scheduled`` line per route retry."""
    if event.operation == "route":
        log.info(
            "orchestrator.retry_scheduled",
            request_id=event.request_id,
            instance=event.instance,
            retry=event.retry,
            delay_ms=ms(event.delay),
            after=event.error_code,
        )


DEFAULT_RETRY_HOOKS: tuple[RetryHook, ...] = (log_retry,)


@dataclass(slots=True, eq=False, repr=False)
class Retrier:
    """Asks the rules, tells the hooks, sleeps: what every retrying loop in the core uses.

    ``hooks`` is a tuple, so the set of hooks is fixed; ``grants`` is set while a fleet
    syncer shares the budget (module docstring)."""

    rules: RetryRules
    _: KW_ONLY
    clock: Clock
    sleep: Sleep
    hooks: tuple[RetryHook, ...] = DEFAULT_RETRY_HOOKS
    grants: Grants | None = None
    observer: Observer = OFF  # counts the budget's refusals

    def __repr__(self) -> str:
        return f"<Retrier {self.rules!r} hooks={len(self.hooks)}>"

    async def decide(self, state: AttemptState, error: OrchestratorError) -> RetryAfter | GiveUp:
        """The rules' decision for ``state`` and ``error``, now; asked once more after a
        new grant when only this replica's grant refused the retry. A refusal by the
        retry budget is counted (``orchestrator_retry_budget_refusals``)."""
        decision = await self._decide(state, error)
        if isinstance(decision, GiveUp) and decision.cause == "over_budget":
            self.observer.budget_refusal(state.failed_target)
        return decision

    async def _decide(self, state: AttemptState, error: OrchestratorError) -> RetryAfter | GiveUp:
        budget = self.rules.budget
        refusals = budget.share_refusals
        decision = self.rules.decide(state, error, self.clock())
        grants = self.grants
        if grants is None or isinstance(decision, RetryAfter):
            return decision
        wait = min(REGRANT_WAIT, state.deadline - self.clock())
        if budget.share_refusals == refusals or wait <= 0:
            return decision
        if not await grants.regrant(wait):
            return decision
        return self.rules.decide(state, error, self.clock())

    async def wait(self, event: RetryScheduled) -> None:
        """Tell every hook about the retry, then wait its delay."""
        for hook in self.hooks:
            hook(event)
        await self.sleep(event.delay)
