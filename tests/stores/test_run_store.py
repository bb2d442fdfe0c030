"""The runs' store contract (:class:`~openclaw_orchestrator.server.stores.runs.RunStore`),
both engines: ``store.runs`` of a SQLite store on a real file and of a PostgreSQL store in a
database of its own. Concurrency: two PostgreSQL stores (two replicas' pools) claiming at
once never take the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from openclaw_orchestrator.domain.runs import RunRecord
from openclaw_orchestrator.errors import ConflictError, NotFoundError
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.server.stores.runs import NewEvent, RunQuery, RunStore
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url

from ..storage_faults import postgres_database

TTL = 30.0


@pytest.fixture(params=["sqlite", "postgres"])
async def runs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    """The runs of an empty, opened store of each kind."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            s: SqliteStore | PostgresStore = PostgresStore(
                await stack.enter_async_context(postgres_database())
            )
        else:
            s = SqliteStore(sqlite_url(tmp_path / "data"))
        await s.open()
        stack.push_async_callback(s.aclose)
        assert isinstance(s.runs, RunStore)
        yield s.runs


def run(rid: str = "r1", **kw: Any) -> RunRecord:
    """A queued run with test defaults."""
    base: dict[str, Any] = {
        "kind": "route", "state": "queued", "request": {"payload": {"n": 1}},
        "created_at": 1000.0, "updated_at": 1000.0, "deadline_at": 10**10,
    }  # fmt: skip
    return RunRecord(id=rid, **{**base, **kw})


async def test_a_created_run_reads_back_equal(runs: RunStore) -> None:
    record = run(
        request={"payload": {"deep": [1, {"x": None}]}, "instances": ["A"]},
        idempotency_key="k1",
        callback={"url": "http://127.0.0.1:9/cb", "secret": "s"},
    )
    assert await runs.create_run(record) == record
    assert await runs.get_run("r1") == record
    assert await runs.get_run("nope") is None


async def test_a_taken_id_conflicts_and_a_used_key_returns_the_first_run(runs: RunStore) -> None:
    first = await runs.create_run(run("r1", idempotency_key="same"))
    with pytest.raises(ConflictError):
        await runs.create_run(run("r1"))
    again = await runs.create_run(run("r2", idempotency_key="same", request={"other": 1}))
    assert again == first
    assert await runs.get_run("r2") is None


async def test_claims_take_queued_runs_oldest_first_each_once(runs: RunStore) -> None:
    for n in range(5):
        await runs.create_run(run(f"r{n}", created_at=1000.0 + n))
    first = await runs.claim_runs("h1", TTL, 3)
    assert [r.id for r in first] == ["r0", "r1", "r2"]
    assert all((r.holder, r.epoch, r.state) == ("h1", 1, "queued") for r in first)
    assert all(r.held_until is not None for r in first)
    second = await runs.claim_runs("h2", TTL, 10)
    assert [r.id for r in second] == ["r3", "r4"]
    assert await runs.claim_runs("h3", TTL, 10) == []


async def test_an_expired_lease_is_claimed_again_at_a_new_epoch(runs: RunStore) -> None:
    await runs.create_run(run())
    (held,) = await runs.claim_runs("h1", 0.2, 1)
    moved = await runs.update_run("r1", "h1", held.epoch, {"state": "running", "attempts": 1})
    assert moved is not None
    assert moved.state == "running"
    assert await runs.claim_runs("h2", TTL, 1) == []  # still held
    await asyncio.sleep(0.4)
    (taken,) = await runs.claim_runs("h2", TTL, 1)
    assert (taken.holder, taken.epoch, taken.state, taken.attempts) == ("h2", 2, "running", 1)
    # the first holder lost it: its writes change nothing
    assert await runs.update_run("r1", "h1", held.epoch, {"state": "succeeded"}) is None
    assert await runs.keep_runs("h1", {"r1": held.epoch}, TTL) == {}
    assert await runs.release_run("r1", "h1", held.epoch) is False
    stored = await runs.get_run("r1")
    assert stored is not None
    assert (stored.state, stored.holder) == ("running", "h2")


async def test_updates_are_fenced_and_finishing_releases_the_lease(runs: RunStore) -> None:
    await runs.create_run(run())
    (held,) = await runs.claim_runs("h1", TTL, 1)
    started = await runs.update_run(
        "r1",
        "h1",
        held.epoch,
        {"state": "running", "started_at": 1001.0, "delivered": True, "instance": "A"},
    )
    assert started is not None
    assert (started.delivered, started.instance, started.started_at) == (True, "A", 1001.0)
    done = await runs.update_run(
        "r1",
        "h1",
        held.epoch,
        {"state": "succeeded", "finished_at": 1002.0, "result": {"ok": [1, 2]}},
    )
    assert done is not None
    assert (done.state, done.result, done.holder, done.finished) == (
        "succeeded",
        {"ok": [1, 2]},
        None,
        True,
    )
    assert await runs.claim_runs("h2", TTL, 1) == []  # finished runs are never claimed
    with pytest.raises(ValueError, match="holder"):
        await runs.update_run("r1", "h1", held.epoch, {"holder": "x"})


async def test_renew_and_release(runs: RunStore) -> None:
    await runs.create_run(run("r1"))
    await runs.create_run(run("r2", created_at=1001.0))
    held = {r.id: r.epoch for r in await runs.claim_runs("h1", 0.3, 2)}
    assert set(await runs.keep_runs("h1", held, TTL)) == {"r1", "r2"}
    await asyncio.sleep(0.5)
    assert await runs.claim_runs("h2", TTL, 2) == []  # renewed past the first TTL
    assert await runs.release_run("r1", "h1", held["r1"]) is True
    (taken,) = await runs.claim_runs("h2", TTL, 2)
    assert (taken.id, taken.epoch) == ("r1", held["r1"] + 1)


async def test_cancel_of_a_queued_unheld_run_is_at_once(runs: RunStore) -> None:
    await runs.create_run(run("r1"))
    cancelled = await runs.request_cancel("r1", 1005.0)
    assert cancelled is not None
    assert (cancelled.state, cancelled.finished_at, cancelled.cancel_requested) == (
        "cancelled",
        1005.0,
        True,
    )
    assert await runs.claim_runs("h1", TTL, 1) == []
    assert await runs.request_cancel("nope", 1005.0) is None


async def test_cancel_of_a_held_run_is_asked_and_a_finished_one_stays(runs: RunStore) -> None:
    await runs.create_run(run("r1"))
    (held,) = await runs.claim_runs("h1", TTL, 1)
    asked = await runs.request_cancel("r1", 1005.0)
    assert asked is not None
    assert (asked.state, asked.cancel_requested) == ("queued", True)
    done = await runs.update_run("r1", "h1", held.epoch, {"state": "cancelled"})
    assert done is not None
    assert done.state == "cancelled"
    again = await runs.request_cancel("r1", 1009.0)
    assert again == done


async def test_events_are_numbered_per_run_and_paged(runs: RunStore) -> None:
    await runs.create_run(run("r1"))
    await runs.create_run(run("r2"))
    numbers = [
        await runs.add_event("r1", "state", {"state": f"s{n}"}, 1000.0 + n) for n in range(5)
    ]
    assert numbers == [1, 2, 3, 4, 5]
    assert await runs.add_event("r2", "attempt", {"instance": "A"}, 1000.0) == 1
    page = await runs.events("r1", 2, 2)
    assert [(e.seq, e.type, e.data) for e in page] == [
        (3, "state", {"state": "s2"}),
        (4, "state", {"state": "s3"}),
    ]
    assert [e.seq for e in await runs.events("r1", 0, 100)] == [1, 2, 3, 4, 5]
    assert await runs.events("r1", 5, 10) == []


async def test_concurrent_events_of_one_run_get_distinct_numbers(runs: RunStore) -> None:
    await runs.create_run(run("r1"))
    numbers = await asyncio.gather(
        *(runs.add_event("r1", "entry", {"n": n}, 1000.0) for n in range(20))
    )
    assert sorted(numbers) == list(range(1, 21))


async def test_listing_is_newest_first_filtered_and_paged(runs: RunStore) -> None:
    for n in range(5):
        await runs.create_run(
            run(f"r{n}", created_at=1000.0 + n, kind="route" if n % 2 else "fanout")
        )
    page = await runs.list_runs(RunQuery(limit=2))
    assert ([r.id for r in page.runs], page.more) == (["r4", "r3"], True)
    last = page.runs[-1]
    page = await runs.list_runs(RunQuery(limit=2, before=(last.created_at, last.id)))
    assert ([r.id for r in page.runs], page.more) == (["r2", "r1"], True)
    page = await runs.list_runs(RunQuery(limit=10, kind="route"))
    assert ([r.id for r in page.runs], page.more) == (["r3", "r1"], False)
    await runs.request_cancel("r0", 1010.0)
    page = await runs.list_runs(RunQuery(state="cancelled"))
    assert [r.id for r in page.runs] == ["r0"]


async def test_purge_deletes_old_finished_runs_and_their_events(runs: RunStore) -> None:
    await runs.create_run(run("old"))
    await runs.create_run(run("new"))
    await runs.create_run(run("open"))
    await runs.add_event("old", "state", {"state": "queued"}, 1000.0)
    await runs.request_cancel("old", 1000.0)
    await runs.request_cancel("new", 5000.0)
    assert await runs.purge_runs(2000.0, 100) == 1
    assert await runs.get_run("old") is None
    assert await runs.events("old", 0, 10) == []
    assert await runs.get_run("new") is not None
    assert await runs.get_run("open") is not None


async def test_two_replicas_claiming_at_once_never_take_the_same_run() -> None:
    """Two PostgreSQL stores (two replicas' pools), eight claimers each, 200 runs."""
    async with postgres_database() as url, contextlib.AsyncExitStack() as stack:
        stores = [PostgresStore(url) for _ in range(2)]
        for s in stores:
            await s.open()
            stack.push_async_callback(s.aclose)
        for n in range(200):
            await stores[0].runs.create_run(run(f"r{n:03d}", created_at=1000.0 + n))

        async def claimer(k: int) -> list[str]:
            taken: list[str] = []
            while batch := await stores[k % 2].runs.claim_runs(f"h{k}", TTL, 7):
                taken += [r.id for r in batch]
            return taken

        claimed = await asyncio.gather(*(claimer(k) for k in range(16)))
    every = [rid for ids in claimed for rid in ids]
    assert len(every) == 200
    assert len(set(every)) == 200


def test_a_record_keeps_its_callback_out_of_repr() -> None:
    record = replace(run(), callback={"url": "http://127.0.0.1:9/", "secret": "hush"})
    assert "hush" not in repr(record)


async def test_keep_renews_and_tells_which_held_runs_were_asked_to_cancel(runs: RunStore) -> None:
    for rid in ("r1", "r2", "r3"):
        await runs.create_run(run(rid))
    held = {r.id: r.epoch for r in await runs.claim_runs("h1", TTL, 3)}
    asked = await runs.request_cancel("r2", 1001.0)
    assert asked is not None
    assert (asked.state, asked.cancel_requested) == ("queued", True)  # held: only asked
    stale = {**held, "r3": held["r3"] - 1}  # an epoch the holder no longer has
    assert await runs.keep_runs("h1", stale, TTL) == {"r1": False, "r2": True}
    assert await runs.keep_runs("h2", held, TTL) == {}
    assert await runs.keep_runs("h1", {}, TTL) == {}


async def test_concurrent_writes_are_batched_and_fail_alone(runs: RunStore) -> None:
    """Writes arriving together share a transaction; the one that fails fails alone."""
    await runs.create_run(run("taken"))
    created = await asyncio.gather(
        *(runs.create_run(run(f"c{i}", created_at=1000.0 + i)) for i in range(20)),
        runs.create_run(run("taken")),
        return_exceptions=True,
    )
    assert [r.id for r in created[:20] if isinstance(r, RunRecord)] == [f"c{i}" for i in range(20)]
    assert isinstance(created[20], ConflictError)
    numbers = await asyncio.gather(
        *(runs.add_event(f"c{i % 4}", "state", {"i": i}, 1000.0) for i in range(12)),
        runs.add_event("nobody", "state", {}, 1000.0),
        return_exceptions=True,
    )
    assert numbers[:12] == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert isinstance(numbers[12], NotFoundError)
    assert [e.data["i"] for e in await runs.events("c1", 0, 10)] == [1, 5, 9]
    held = {r.id: r.epoch for r in await runs.claim_runs("h1", TTL, 21)}
    changes = {"state": "running", "attempts": 1, "updated_at": 1002.0}
    updated = await asyncio.gather(
        *(runs.update_run(f"c{i}", "h1", held[f"c{i}"], changes) for i in range(10)),
        runs.update_run("c10", "h1", held["c10"] + 1, changes),  # not its epoch
        runs.update_run("c11", "h1", held["c11"], {**changes, "delivered": True}),
    )
    assert [u.state if u else None for u in updated] == ["running"] * 10 + [None, "running"]
    stored = await runs.get_run("c10")
    assert stored is not None
    assert stored.state == "queued"


async def test_a_claim_still_finds_a_lost_lease_among_many_running_runs(runs: RunStore) -> None:
    for i in range(30):
        await runs.create_run(run(f"r{i}", created_at=1000.0 + i))
    claimed = await runs.claim_runs("h1", TTL, 29)  # r29 is left queued
    for r in claimed:
        await runs.update_run(r.id, "h1", r.epoch, {"state": "running"})
    short = await runs.claim_runs("h2", 0.2, 1)
    assert [r.id for r in short] == ["r29"]
    await runs.update_run("r29", "h2", short[0].epoch, {"state": "running"})
    assert await runs.claim_runs("h3", TTL, 5) == []  # every lease is live
    await asyncio.sleep(0.4)
    (taken,) = await runs.claim_runs("h3", TTL, 5)  # h2's lease ran out
    assert (taken.id, taken.holder, taken.state) == ("r29", "h3", "running")


async def test_a_run_and_its_event_are_written_together(runs: RunStore) -> None:
    """``create_run``/``update_run`` with events: all in one transaction, the events only
    when the run was created / the update applied, numbered in the order given."""
    queued: NewEvent = ("state", {"state": "queued"}, 1000.0)
    created = await asyncio.gather(
        *(runs.create_run(run(f"r{i}", idempotency_key=f"k{i}"), event=queued) for i in range(5)),
        runs.create_run(run("again", idempotency_key="k1"), event=queued),
    )
    assert [c.id for c in created] == ["r0", "r1", "r2", "r3", "r4", "r1"]
    assert [(e.seq, e.data) for e in await runs.events("r1", 0, 10)] == [(1, {"state": "queued"})]
    held = {r.id: r.epoch for r in await runs.claim_runs("h1", TTL, 5)}
    running: NewEvent = ("state", {"state": "running"}, 1001.0)
    changes = {"state": "running", "updated_at": 1001.0}
    updated = await asyncio.gather(
        *(
            runs.update_run(f"r{i}", "h1", held[f"r{i}"], changes, events=[running])
            for i in range(4)
        ),
        runs.update_run("r4", "h1", held["r4"] + 1, changes, events=[running]),  # refused
    )
    assert [u is not None for u in updated] == [True, True, True, True, False]
    assert [e.seq for e in await runs.events("r0", 0, 10)] == [1, 2]
    assert [e.seq for e in await runs.events("r4", 0, 10)] == [1]
    tried: list[NewEvent] = [("attempt", {"n": n}, 1001.5) for n in (1, 2)]
    done: NewEvent = ("result", {"state": "succeeded"}, 1002.0)
    final = {"state": "succeeded", "finished_at": 1002.0, "result": {"ok": True}}
    finished, other = await asyncio.gather(
        runs.update_run("r0", "h1", held["r0"], final, events=[*tried, done]),
        runs.update_run("r1", "h1", held["r1"], final, events=[done]),
    )
    assert finished is not None
    assert other is not None
    assert (finished.state, finished.holder, finished.result) == ("succeeded", None, {"ok": True})
    events = await runs.events("r0", 0, 10)
    assert [(e.seq, e.type) for e in events] == [
        (1, "state"), (2, "state"), (3, "attempt"), (4, "attempt"), (5, "result")
    ]  # fmt: skip
    assert [e.data.get("n") for e in events[2:4]] == [1, 2]
    assert [e.seq for e in await runs.events("r1", 0, 10)] == [1, 2, 3]


async def test_start_runs_starts_in_its_claim_only_the_runs_that_need_no_decision(
    runs: RunStore,
) -> None:
    """``start_runs`` claims as ``claim_runs`` does, and in the same write starts the queued
    runs with no cancel asked and time left (``running``, ``delivered``, one attempt, their
    ``running`` event); a cancelled, a late and a taken-over run are only claimed."""
    queued: NewEvent = ("state", {"state": "queued"}, 1000.0)
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("a-go", {}),
        ("b-cancel", {"cancel_requested": True}),
        ("c-late", {"deadline_at": 1500.0}),
        ("d-go", {}),
    ]
    for n, (rid, kw) in enumerate(kinds):
        await runs.create_run(run(rid, created_at=1000.0 + n, **kw), event=queued)
    (dead,) = await runs.claim_runs("dead", 0.2, 1)  # a-go: held by a holder that dies
    moved = {"state": "running", "delivered": True, "attempts": 1, "started_at": 1001.0}
    assert await runs.update_run(dead.id, "dead", dead.epoch, moved) is not None
    await asyncio.sleep(0.3)
    started, claimed = await runs.start_runs("h1", TTL, 10, 2000.0)
    assert [r.id for r in started] == ["d-go"]
    assert [r.id for r in claimed] == ["a-go", "b-cancel", "c-late"]
    (go,) = started
    assert (go.state, go.delivered, go.attempts, go.holder) == ("running", True, 1, "h1")
    assert (go.started_at, go.updated_at) == (2000.0, 2000.0)
    assert go == await runs.get_run("d-go")
    events = [(e.seq, e.type, e.data, e.at) for e in await runs.events("d-go", 0, 10)]
    assert events == [
        (1, "state", {"state": "queued"}, 1000.0),
        (2, "state", {"state": "running", "attempt": 1}, 2000.0),
    ]
    assert all(r.state == s for r, s in zip(claimed, ["running", "queued", "queued"], strict=True))
    assert [e.seq for e in await runs.events("b-cancel", 0, 10)] == [1]  # not started
    assert await runs.start_runs("h2", TTL, 10, 2000.0) == ([], [])  # all held


async def test_events_added_while_the_run_is_updated_are_numbered_without_gaps(
    runs: RunStore,
) -> None:
    """Events appended alone and with the run's updates at the same moment (other batches,
    numbering from their own snapshots) end up numbered 1..n, none lost, none twice."""
    await runs.create_run(run("r1"), event=("state", {"state": "queued"}, 1000.0))
    (held,) = await runs.claim_runs("h1", TTL, 1)
    updates: list[NewEvent] = [("state", {"u": n}, 1001.0) for n in range(5)]
    writes = [
        *(runs.add_event("r1", "entry", {"n": n}, 1000.0) for n in range(20)),
        *(
            runs.update_run("r1", "h1", held.epoch, {"updated_at": 1000.0 + n}, events=[e])
            for n, e in enumerate(updates)
        ),
    ]
    results = await asyncio.gather(*writes)
    assert all(r is not None for r in results)
    events = await runs.events("r1", 0, 100)
    assert [e.seq for e in events] == list(range(1, 27))
    assert sorted(e.data["n"] for e in events if e.type == "entry") == list(range(20))
    assert sorted(e.data["u"] for e in events if "u" in e.data) == list(range(5))


async def test_submits_together_and_their_starts_each_get_their_own_events(
    runs: RunStore,
) -> None:
    """Submits arriving together (one transaction) and a claim starting them all (on
    SQLite one UPDATE and one INSERT of events): each run has its own ``queued`` then
    ``running`` event, numbered 1 and 2, and reads back as returned."""
    queued: NewEvent = ("state", {"state": "queued"}, 1000.0)
    records = [run(f"r{i:02}", created_at=1000.0 + i, request={"n": i}) for i in range(30)]
    created = await asyncio.gather(*(runs.create_run(r, event=queued) for r in records))
    assert created == records
    started, claimed = await runs.start_runs("h1", TTL, 50, 2000.0)
    assert ([r.id for r in started], claimed) == ([r.id for r in records], [])
    for before, after in zip(records, started, strict=True):
        assert after == await runs.get_run(before.id)
        assert (after.request, after.state, after.attempts) == (before.request, "running", 1)
        events = [(e.seq, e.data) for e in await runs.events(before.id, 0, 10)]
        assert events == [(1, {"state": "queued"}), (2, {"state": "running", "attempt": 1})]


def test_a_sqlite_row_holds_every_field_of_a_run_in_column_order() -> None:
    """``_row`` and ``_record`` name the columns one by one (no loop): every field, each
    set apart from its default, goes to its own column and comes back."""
    from dataclasses import fields

    from openclaw_orchestrator.server.stores import runs_sqlite

    assert runs_sqlite.RUN_COLUMNS == tuple(f.name for f in fields(RunRecord))
    record = RunRecord(
        id="r1", kind="fanout", state="running", request={"q": [1]}, created_at=1.0,
        updated_at=2.0, deadline_at=3.0, started_at=4.0, finished_at=5.0, attempts=6,
        delivered=True, idempotency_key="k", instance="A", result={"r": 1},
        error={"code": "x"}, cancel_requested=True, holder="h", held_until=7.0, epoch=8,
        callback={"url": "u"},
    )  # fmt: skip
    row = runs_sqlite._row(record)
    assert row[runs_sqlite.RUN_COLUMNS.index("result")] == '{"r":1}'
    assert row[runs_sqlite.RUN_COLUMNS.index("delivered")] == 1
    assert runs_sqlite._record(row) == record
