"""What replicas on one PostgreSQL database share besides the store's rows: idempotency keys
(:mod:`.core.shared_idempotency`) and the retry budget (:mod:`.core.fleet_budget`).

On SQLite (one process) nothing changes: the in-process cache and budget are the whole
truth. On PostgreSQL the orchestrator's keys come from the database and its budget is synced
with the fleet's counts, both on the store's own pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import BaseModel

from .core.fleet_budget import FleetBudget
from .core.orchestrator import Orchestrator
from .core.shared_idempotency import SharedIdempotency
from .stores.base import Store
from .stores.budget_sql import BudgetSql
from .stores.idempotency_sql import IdempotencySql
from .stores.postgres import PostgresStore

__all__ = ["shared_state"]


@asynccontextmanager
async def shared_state(store: Store, orchestrator: Orchestrator) -> AsyncIterator[None]:
    """Share ``orchestrator``'s idempotency keys and retry budget through ``store`` when it
    is PostgreSQL, for the block (module docstring)."""
    if not isinstance(store, PostgresStore):
        yield
        return
    settings = orchestrator.settings
    keys: SharedIdempotency[BaseModel] = SharedIdempotency(
        IdempotencySql(store.engine),
        ttl=settings.idempotency_ttl,
        max_bytes=settings.idempotency_max_bytes,
    )
    budget = FleetBudget(
        orchestrator.retry_budget, BudgetSql(store.engine), clock=orchestrator.clock
    )
    async with keys, budget:
        orchestrator.idempotency = keys
        orchestrator.retrier.grants = budget
        try:
            yield
        finally:
            orchestrator.idempotency = None
            orchestrator.retrier.grants = None
