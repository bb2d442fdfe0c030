"""The core built on the fake driver and the fake clock: no sockets, no waits."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from openclaw_orchestrator.domain.backoff import RetryScheduled
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.settings import Settings
from tests.fakes import FakeClock, FakeDriver, Handler, answer_ok

__all__ = ["Core", "build"]


@dataclass
class Core:
    """An orchestrator, its fake driver and clock, and every retry its hooks saw."""

    orchestrator: Orchestrator
    driver: FakeDriver
    clock: FakeClock
    retries: list[RetryScheduled] = field(default_factory=list)


def build(handler: Handler = answer_ok, names: str = "AB", **retry: Any) -> Core:
    """An orchestrator over instances ``names`` (round robin, seeded jitter) whose calls all
    go to ``handler``; ``retry`` overrides the retry settings."""
    clock = FakeClock()
    driver = FakeDriver(handler)
    seen: list[RetryScheduled] = []
    settings = Settings.model_validate(
        {
            "instances": [{"name": n, "url": f"http://127.0.0.1:9/{n}"} for n in names],
            "retry": retry,
        }
    )
    orchestrator = Orchestrator(
        settings,
        drivers={"worker": driver},
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
        retry_hooks=[seen.append],
    )
    return Core(orchestrator, driver, clock, seen)
