"""The retry loop's doing half: the pure :class:`~openclaw_orchestrator.domain.backoff.RetryRules`
decide, the :class:`Retrier` hands each scheduled retry to its hooks and waits.

Hooks receive frozen :class:`~openclaw_orchestrator.domain.backoff.RetryScheduled` events
(stamina's ``RetryDetails``); the default hook :func:`log_retry` writes a route's retry as
``orchestrator.retry_scheduled`` (a fanout's retries show as the attempt count of its
``orchestrator.fanout_target`` line). The sleep is injected: zero waits in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

from ...domain.backoff import AttemptState, GiveUp, RetryAfter, RetryRules, RetryScheduled
from ...errors import OrchestratorError
from ..logs import get_logger
from .clock import Clock, Sleep, ms

__all__ = ["DEFAULT_RETRY_HOOKS", "Retrier", "RetryHook", "log_retry"]

RetryHook = Callable[[RetryScheduled], None]
"""Called with every retry just before its wait."""

log = get_logger("orchestrator")


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


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Retrier:
    """Asks the rules, tells the hooks, sleeps: what every retrying loop in the core uses.

    Wired once (frozen); ``hooks`` is a tuple, so the set of hooks is fixed too."""

    rules: RetryRules
    _: KW_ONLY
    clock: Clock
    sleep: Sleep
    hooks: tuple[RetryHook, ...] = DEFAULT_RETRY_HOOKS

    def __repr__(self) -> str:
        return f"<Retrier {self.rules!r} hooks={len(self.hooks)}>"

    def decide(self, state: AttemptState, error: OrchestratorError) -> RetryAfter | GiveUp:
        """The rules' decision for ``state`` and ``error``, now."""
        return self.rules.decide(state, error, self.clock())

    async def wait(self, event: RetryScheduled) -> None:
        """Tell every hook about the retry, then wait its delay."""
        for hook in self.hooks:
            hook(event)
        await self.sleep(event.delay)
