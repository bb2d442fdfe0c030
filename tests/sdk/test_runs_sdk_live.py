"""``client.runs`` of both SDK clients against a live orchestrator and real instances
(``start_cluster``): submit, get, wait, list, cancel and events, typed, with errors mapped.

The sync ``Client`` blocks, so its calls go to a worker thread (``asyncio.to_thread``)
while the cluster keeps serving in the test's loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from openclaw_orchestrator import AsyncClient, Client, InvalidRequestError, NotFoundError
from openclaw_orchestrator.models import RunInfo, RunList
from openclaw_orchestrator.sdk.events import RunEvent
from tests.api.conftest import Cluster, start_cluster


@pytest.fixture
async def live() -> AsyncIterator[Cluster]:
    """Four healthy echo instances A–D behind an orchestrator with a SQLite store."""
    async with start_cluster("ABCD") as c:
        yield c


@pytest.fixture
async def client(live: Cluster) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(live.url, live.api_key) as c:
        yield c


async def in_thread(live: Cluster, use: Any) -> Any:
    """``use(client)`` with a sync Client of ``live``, in a worker thread."""

    def run() -> Any:
        with Client(live.url, live.api_key) as sync:
            return use(sync)

    return await asyncio.to_thread(run)


async def test_async_submit_wait_get_and_events(client: AsyncClient) -> None:
    """A route run: submitted queued, waited to succeeded with the route's result, and its
    events state, state, attempt, result, numbered from 1."""
    run = await client.runs.submit("route", instances=["B"], payload={"n": 1}, timeout="10s")
    assert isinstance(run, RunInfo)
    assert (run.kind, run.state, run.request["payload"]) == ("route", "queued", {"n": 1})
    done = await client.runs.wait(run.run_id, timeout=10)
    assert (done.state, done.result["instance"], done.attempts) == ("succeeded", "B", 1)
    assert await client.runs.get(run.run_id) == done
    events = [event async for event in client.runs.events(run.run_id)]
    assert all(isinstance(e, RunEvent) for e in events)
    assert [e.type for e in events] == ["state", "state", "attempt", "result"]
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert events[-1].data["result"]["instance"] == "B"
    resumed = [event async for event in client.runs.events(run.run_id, after=2)]
    assert [e.id for e in resumed] == [3, 4]


async def test_async_events_follow_a_fanout_as_it_runs(live: Cluster, client: AsyncClient) -> None:
    """Events come as they are recorded: each target's entry, then the result."""
    await live.set_faults("D", latency=0.5)
    run = await client.runs.submit("fanout", targets="A-D", payload={"q": 1})
    seen: list[tuple[str, float]] = []
    async for event in client.runs.events(run.run_id):
        seen.append((event.type, time.monotonic()))
    entries = [t for kind, t in seen if kind == "entry"]
    assert len(entries) == 4
    assert seen[-1][0] == "result"
    assert entries[-1] - entries[0] > 0.3  # D's entry came later, on its own


async def test_async_list_cancel_and_idempotent_submit(live: Cluster, client: AsyncClient) -> None:
    """list filters and pages with next; cancel stops a running run; the same
    idempotency key answers the first run."""
    await live.set_faults("C", latency=2.0)
    slow = await client.runs.submit("route", instances="C", idempotency_key="slow-1")
    again = await client.runs.submit("route", instances="C", idempotency_key="slow-1")
    assert again.run_id == slow.run_id
    quick = await client.runs.submit("route", instances="A")
    await client.runs.wait(quick.run_id)
    page = await client.runs.list(kind="route", limit=1)
    assert isinstance(page, RunList)
    assert [r.run_id for r in page.runs] == [quick.run_id]
    assert page.next is not None
    older = await client.runs.list(kind="route", limit=1, cursor=page.next)
    assert [r.run_id for r in older.runs] == [slow.run_id]
    assert [r.run_id for r in (await client.runs.list(state="succeeded")).runs] == [quick.run_id]
    asked = await client.runs.cancel(slow.run_id)
    assert asked.cancel_requested is True
    done = await client.runs.wait(slow.run_id, timeout="10s")
    assert done.state == "cancelled"


async def test_async_wait_returns_the_run_as_it_stands_when_its_timeout_runs_out(
    live: Cluster, client: AsyncClient
) -> None:
    await live.set_faults("D", latency=1.0)
    run = await client.runs.submit("route", instances="D")
    started = time.monotonic()
    waited = await client.runs.wait(run.run_id, timeout=0.5)
    assert waited.state in ("queued", "running")
    assert 0.4 < time.monotonic() - started < 2.5
    assert (await client.runs.wait(run.run_id, timeout=0)).run_id == run.run_id


async def test_async_errors_map_to_the_sdk_classes(client: AsyncClient) -> None:
    """An unknown run is NotFoundError (get, wait, cancel, events); a bad body is
    InvalidRequestError naming its field; a malformed id fails before any request."""
    for call in (
        client.runs.get("run_nope"),
        client.runs.wait("run_nope", timeout=1),
        client.runs.cancel("run_nope"),
    ):
        with pytest.raises(NotFoundError) as caught:
            await call
        assert caught.value.code == "not_found"
    with pytest.raises(NotFoundError):
        async for _ in client.runs.events("run_nope"):
            pass
    with pytest.raises(InvalidRequestError) as invalid:
        await client.runs.submit("route", instances="A", retry=99)
    assert "retry" in (invalid.value.field or "")
    with pytest.raises(InvalidRequestError, match="not a run id"):
        await client.runs.get("../health")


async def test_sync_client_runs_round_trip(live: Cluster, client: AsyncClient) -> None:
    """The sync client: submit a session send, wait, get, list, cancel a finished run (as
    it is), and events as a plain iterator."""
    spawned = await client.sessions.spawn("s-sync", instance="A")
    assert spawned.id == "s-sync"

    def use(sync: Client) -> tuple[RunInfo, RunInfo, RunInfo, RunList, list[RunEvent]]:
        run = sync.runs.submit("session_send", session_id="s-sync", data={"hi": 1})
        done = sync.runs.wait(run.run_id, timeout=10)
        return (
            done,
            sync.runs.get(run.run_id),
            sync.runs.cancel(run.run_id),
            sync.runs.list(kind="session_send"),
            list(sync.runs.events(run.run_id)),
        )

    done, got, cancelled, listed, events = await in_thread(live, use)
    assert (done.kind, done.state, done.result["seq"], done.result["instance"]) == (
        "session_send",
        "succeeded",
        1,
        "A",
    )
    assert got == done
    assert (cancelled.state, cancelled.finished_at) == ("succeeded", done.finished_at)
    assert [r.run_id for r in listed.runs] == [done.run_id]
    assert events[-1].type == "result"
    assert events[-1].data["state"] == "succeeded"


async def test_sync_events_stop_early_and_errors(live: Cluster) -> None:
    """Leaving the sync iterator early keeps the client usable; unknown runs are
    NotFoundError."""

    def use(sync: Client) -> tuple[RunEvent, str, type[Exception], type[Exception]]:
        run = sync.runs.submit("fanout", targets="A,B", payload=1)
        first = next(iter(sync.runs.events(run.run_id)))
        state = sync.runs.wait(run.run_id, timeout=10).state
        errors: list[type[Exception]] = []
        for attempt in (lambda: sync.runs.get("run_nope"), lambda: list(sync.runs.events("x1"))):
            try:
                attempt()
            except Exception as exc:  # the class is what the test checks
                errors.append(type(exc))
        return first, state, errors[0], errors[1]

    first, state, get_error, events_error = await in_thread(live, use)
    assert (first.id, first.type, first.data["state"]) == (1, "state", "queued")
    assert state == "succeeded"
    assert (get_error, events_error) == (NotFoundError, NotFoundError)
