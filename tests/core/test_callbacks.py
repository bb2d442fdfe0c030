"""The callback deliverer on a real store (SQLite, PostgreSQL) with a real receiver on 127.0.0.1: a
replica stopped in the middle of a delivery leaves that attempt recorded without an answer,
and another replica takes the callback over once the lease ran out and delivers it with the
same delivery id (at least once); a callback past its expiry ends without a request."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from openclaw_orchestrator.domain.addresses import AddressPolicy
from openclaw_orchestrator.domain.runs import RunRecord
from openclaw_orchestrator.models import CallbackSpec
from openclaw_orchestrator.server.core.callbacks import CallbackDeliverer
from openclaw_orchestrator.server.drivers.callback_sender import CallbackSender
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url
from openclaw_orchestrator.settings import RunSettings

from ..storage_faults import postgres_database

Store = SqliteStore | PostgresStore
SECRET = "core-test-secret-8c1d"
SETTINGS = RunSettings(
    callback_timeout=0.5,  # and the lease: a takeover within half a second
    callback_poll_interval=0.02,
    callback_backoff_base=0.01,
    callback_backoff_max=0.02,
    callback_expiry=3600.0,
)


@dataclass
class Receiver:
    """Holds the first request unanswered until told (``hang``); acknowledges the rest."""

    url: str = ""
    hang: asyncio.Event = field(default_factory=asyncio.Event)
    first_seen: asyncio.Event = field(default_factory=asyncio.Event)
    deliveries: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.deliveries.append(request.headers["X-Orchestrator-Delivery"])
        if len(self.deliveries) == 1:
            self.first_seen.set()
            await self.hang.wait()
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box = Receiver()
    app = web.Application()
    app.router.add_post("/hook", box.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield box
    finally:
        box.hang.set()
        await runner.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store of each kind (PostgreSQL: a database of its own)."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            s: Store = PostgresStore(await stack.enter_async_context(postgres_database()))
        else:
            s = SqliteStore(sqlite_url(tmp_path / "data"))
        await s.open()
        stack.push_async_callback(s.aclose)
        yield s


def deliverer(store: Store, holder: str) -> CallbackDeliverer:
    policy = AddressPolicy.parse()
    return CallbackDeliverer(
        store.callbacks, store.runs, CallbackSender(policy), SETTINGS, policy, holder=holder,
        lease_margin=0.0,
    )  # fmt: skip


async def finished_run(store: Store, finished_at: float) -> RunRecord:
    run = RunRecord(
        id="run_1", kind="route", state="queued", request={}, created_at=finished_at,
        updated_at=finished_at, deadline_at=finished_at + 60,
    )  # fmt: skip
    await store.runs.create_run(run)
    (held,) = await store.runs.claim_runs("runner", 30.0, 1)
    changes = {"state": "succeeded", "finished_at": finished_at, "result": {"ok": True}}
    done = await store.runs.update_run(run.id, "runner", held.epoch, changes)
    assert done is not None
    return done


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(500):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_a_delivery_cut_short_is_taken_over_and_delivered_with_the_same_id(
    store: Store, receiver: Receiver
) -> None:
    run = await finished_run(store, time.time())
    first = deliverer(store, "replica-1")
    spec = CallbackSpec(url=receiver.url, secret=SECRET)  # type: ignore[arg-type]
    await first.register(run, spec)
    await first.start()
    await asyncio.wait_for(receiver.first_seen.wait(), 10)
    await first.aclose()  # dies mid-delivery: the attempt stays without an answer

    view = await first.view(run.id)
    assert view is not None
    assert view.state == "pending"
    assert [(a.n, a.status, a.error) for a in view.attempts] == [(1, None, None)]

    second = deliverer(store, "replica-2")
    await second.start()
    try:

        async def delivered() -> bool:
            shown = await second.view(run.id)
            return shown is not None and shown.state == "delivered"

        await until(delivered, "delivered by the second replica")
    finally:
        await second.aclose()
    final = await second.view(run.id)
    assert final is not None
    assert [(a.n, a.status) for a in final.attempts] == [(1, None), (2, 204)]
    assert receiver.deliveries == [final.delivery_id, final.delivery_id]


async def test_a_callback_past_its_expiry_ends_without_a_request(
    store: Store, receiver: Receiver
) -> None:
    run = await finished_run(store, time.time() - SETTINGS.callback_expiry - 1)
    one = deliverer(store, "replica-1")
    spec = CallbackSpec(url=receiver.url, secret=SECRET)  # type: ignore[arg-type]
    await one.register(run, spec)
    await one.start()
    try:

        async def ended() -> bool:
            shown = await one.view(run.id)
            return shown is not None and shown.state != "pending"

        await until(ended, "the callback ended")
    finally:
        await one.aclose()
    final = await one.view(run.id)
    assert final is not None
    assert (final.state, final.attempts) == ("expired", [])
    assert receiver.deliveries == []
