"""Sessions built from the dispatcher and the registry alone (no orchestrator), on the fake
driver and a real SQLite file: a refused send migrates the session and replays its history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openclaw_orchestrator.domain.health import HealthPolicy
from openclaw_orchestrator.errors import InstanceDownError
from openclaw_orchestrator.models import SpawnRequest
from openclaw_orchestrator.server.core.dispatcher import Dispatcher
from openclaw_orchestrator.server.core.registry import Registry
from openclaw_orchestrator.server.core.sessions import SessionService
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url
from openclaw_orchestrator.settings import Settings
from tests.fakes import FakeCall, FakeClock, FakeDriver


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(sqlite_url(tmp_path / "data"))
    await s.open()
    yield s
    await s.aclose()


async def test_a_refused_send_migrates_with_its_history(store: SqliteStore) -> None:
    """Once A refuses, a 'migrate' session moves to B: B is sent the history first, then
    the message, and the reply says where it moved from."""
    down: set[str] = set()

    def handler(call: FakeCall) -> object:
        if call.instance in down:
            raise InstanceDownError("refused", instance=call.instance)
        return {"at": call.instance, "got": call.payload}

    settings = Settings.model_validate(
        {"instances": [{"name": n, "url": "http://127.0.0.1:9"} for n in "AB"]}
    )
    clock, driver = FakeClock(), FakeDriver(handler)
    registry = Registry(HealthPolicy())
    for spec in settings.instances.static:
        registry.upsert(spec, "config", clock())
    dispatcher = Dispatcher(settings, {"worker": driver}, clock=clock)
    sessions = SessionService(
        dispatcher, registry, store, settings, place=lambda names, _policy: tuple(names)
    )
    spawned = await sessions.spawn(SpawnRequest(instance="A", failover="migrate"))
    await sessions.send(spawned.session_id, "one", timeout=5, idempotency_key=None, request_id="1")
    down.add("A")
    moved = await sessions.send(
        spawned.session_id, "two", timeout=5, idempotency_key=None, request_id="2"
    )
    assert (moved.instance, moved.migrated_from) == ("B", "A")
    restore = next(c for c in driver.calls if c.op == "session_restore")
    assert (restore.instance, restore.payload) == ("B", [("one", {"at": "A", "got": "one"})])
    assert [c.instance for c in driver.calls if c.op == "session_send"] == ["A", "A", "B"]
