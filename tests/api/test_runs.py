"""Durable runs through the HTTP API against real reference instances and a real SQLite
store: submit (202 once stored), get, wait, list, cancel, idempotent submits, and a run
that survives its orchestrator: stopped before it was dispatched, taken again on restart."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from openclaw_orchestrator.domain.runs import RunRecord
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url

from .conftest import Cluster, start_cluster

R = "/api/orchestrator/runs"


async def submit(c: Cluster, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    status, reply = await c.post(R, body, **headers)
    assert status == 202, reply
    return reply


async def finished(c: Cluster, run_id: str, wait: str = "10s") -> dict[str, Any]:
    status, reply = await c.get(f"{R}/{run_id}?wait={wait}")
    assert status == 200, reply
    return reply


async def test_a_route_run_is_stored_queued_then_succeeds(cluster: Cluster) -> None:
    reply = await submit(cluster, {"kind": "route", "instances": ["B"], "payload": {"n": 1}})
    assert reply["state"] in ("queued", "running")
    assert reply["run_id"].startswith("run_")
    assert reply["request"]["payload"] == {"n": 1}
    done = await finished(cluster, reply["run_id"])
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert done["result"]["instance"] == "B"
    assert done["instance"] == "B"
    assert done["finished_at"] is not None
    events = await cluster.service.runs.events(reply["run_id"], 0)
    assert [e.type for e in events] == ["state", "state", "attempt", "result"]
    assert events[-1].data["result"]["instance"] == "B"


async def test_a_fanout_run_records_each_targets_entry_as_it_arrives(cluster: Cluster) -> None:
    reply = await submit(cluster, {"kind": "fanout", "targets": ["A", "B", "C"], "payload": 1})
    done = await finished(cluster, reply["run_id"])
    assert done["state"] == "succeeded"
    assert sorted(r["instance"] for r in done["result"]["results"]) == ["A", "B", "C"]
    events = await cluster.service.runs.events(reply["run_id"], 0)
    entries = [e.data["instance"] for e in events if e.type == "entry"]
    assert sorted(entries) == ["A", "B", "C"]


async def test_a_session_send_run_is_recorded_in_the_sessions_history(cluster: Cluster) -> None:
    status, spawned = await cluster.post(
        "/api/orchestrator/sessions/spawn", {"sessionId": "s-run", "instance": "C"}
    )
    assert status == 201, spawned
    reply = await submit(cluster, {"kind": "session_send", "sessionId": "s-run", "data": "hi"})
    done = await finished(cluster, reply["run_id"])
    assert done["state"] == "succeeded", done
    assert (done["result"]["seq"], done["result"]["instance"]) == (1, "C")
    status, history = await cluster.get("/api/orchestrator/sessions/s-run/history")
    assert [m["data"] for m in history["messages"]] == ["hi"]


async def test_a_failed_run_keeps_the_endpoints_error(cluster: Cluster) -> None:
    await cluster.stop_instance("D")
    reply = await submit(cluster, {"kind": "route", "instances": ["D"], "retry": 0})
    done = await finished(cluster, reply["run_id"])
    assert done["state"] == "failed"
    assert done["error"]["code"] == "instance_down"
    assert done["result"] is None


async def test_a_run_past_its_deadline_times_out(cluster: Cluster) -> None:
    await cluster.set_faults("E", latency=2.0)
    reply = await submit(cluster, {"kind": "route", "instances": ["E"], "timeout": "300ms"})
    done = await finished(cluster, reply["run_id"])
    assert done["state"] == "timed_out"
    assert done["error"]["code"] == "timeout"


async def test_wait_returns_when_the_wait_runs_out(cluster: Cluster) -> None:
    await cluster.set_faults("F", latency=1.0)
    reply = await submit(cluster, {"kind": "route", "instances": ["F"], "timeout": "10s"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    still = await finished(cluster, reply["run_id"], wait="300ms")
    assert still["state"] == "running"
    assert loop.time() - started < 2.0


async def test_cancel_stops_a_running_run_and_a_finished_one_stays(cluster: Cluster) -> None:
    await cluster.set_faults("G", latency=2.0)
    reply = await submit(cluster, {"kind": "route", "instances": ["G"], "timeout": "30s"})
    while (await finished(cluster, reply["run_id"], wait="50ms"))["state"] != "running":
        pass
    status, asked = await cluster.post(f"{R}/{reply['run_id']}/cancel", {})
    assert status == 200, asked
    assert asked["cancel_requested"] is True
    done = await finished(cluster, reply["run_id"], wait="5s")
    assert done["state"] == "cancelled"
    status, again = await cluster.post(f"{R}/{reply['run_id']}/cancel", {})
    assert (status, again["state"], again["finished_at"]) == (200, "cancelled", done["finished_at"])


async def test_an_idempotency_key_makes_a_submit_safe_to_repeat(cluster: Cluster) -> None:
    body = {"kind": "route", "instances": ["A"], "payload": {"k": 1}}
    first = await submit(cluster, body, **{"Idempotency-Key": "submit-1"})
    status, again = await cluster.post(R, body, **{"Idempotency-Key": "submit-1"})
    assert (status, again["run_id"]) == (200, first["run_id"])
    other = {**body, "payload": {"k": 2}}
    status, refused = await cluster.post(R, other, **{"Idempotency-Key": "submit-1"})
    assert status == 409, refused
    assert refused["error"]["details"]["run_id"] == first["run_id"]


async def test_listing_pages_newest_first_with_filters(cluster: Cluster) -> None:
    ids = [(await submit(cluster, {"kind": "route", "payload": n}))["run_id"] for n in range(3)]
    fan = (await submit(cluster, {"kind": "fanout", "targets": ["A"]}))["run_id"]
    status, page = await cluster.get(f"{R}?limit=2")
    assert status == 200, page
    assert [r["run_id"] for r in page["runs"]] == [fan, ids[2]]
    status, page = await cluster.get(f"{R}?limit=2&cursor={page['next']}")
    assert ([r["run_id"] for r in page["runs"]], page["next"]) == (ids[1::-1], None)
    status, page = await cluster.get(f"{R}?kind=fanout")
    assert [r["run_id"] for r in page["runs"]] == [fan]


async def test_bad_input_gets_a_clear_error(cluster: Cluster) -> None:
    cases = [
        ({"kind": "teleport"}, "kind"),
        ({"kind": "route", "payload": 1, "bogus": True}, "bogus"),
        ({"kind": "route", "timeout": "9h"}, "timeout"),
    ]
    for body, named in cases:
        status, reply = await cluster.post(R, body)
        assert status == 400, (body, reply)
        assert named in (reply["error"].get("field") or "") + reply["error"]["message"]
    status, reply = await cluster.get(f"{R}/run_nope")
    assert (status, reply["error"]["code"]) == (404, "not_found")
    status, reply = await cluster.get(f"{R}?cursor=garbage")
    assert (status, reply["error"]["field"]) == (400, "cursor")
    status, reply = await cluster.get(f"{R}/run_nope?wait=2h")
    assert (status, reply["error"]["field"]) == (400, "wait")


async def test_a_run_left_queued_by_a_stopped_orchestrator_runs_after_a_restart() -> None:
    """A run stored while no orchestrator works (queued, nobody's lease) is taken by the
    next one to start on the same store."""
    with tempfile.TemporaryDirectory() as scratch:
        store = SqliteStore(sqlite_url(Path(scratch)))
        await store.open()
        try:
            await store.runs.create_run(
                RunRecord(
                    id="run_left",
                    kind="route",
                    state="queued",
                    request={"instances": ["A"], "payload": {"left": True}},
                    created_at=time.time(),
                    updated_at=time.time(),
                    deadline_at=time.time() + 60,
                )
            )
        finally:
            await store.aclose()
        async with start_cluster("AB", data_dir=Path(scratch)) as c:
            done = await finished(c, "run_left")
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["instance"] == "A"


async def stream(c: Cluster, run_id: str, **headers: str) -> list[tuple[int, str, Any]]:
    """A run's event stream read to its end: (id, event, data) of every event."""
    out: list[tuple[int, str, Any]] = []
    async with c.http.get(f"{c.url}{R}/{run_id}/events", headers={**c.headers, **headers}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            elif "data" in fields:
                out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
    return out


async def test_a_runs_events_stream_as_they_come_and_resume(cluster: Cluster) -> None:
    await cluster.set_faults("H", latency=0.3)
    reply = await submit(cluster, {"kind": "fanout", "targets": ["A", "H"], "payload": 7})
    seen = await stream(cluster, reply["run_id"])
    assert [i for i, _, _ in seen] == list(range(1, len(seen) + 1))
    kinds = [kind for _, kind, _ in seen]
    assert kinds[:2] == ["state", "state"]
    assert sorted(data["instance"] for _, kind, data in seen if kind == "entry") == ["A", "H"]
    assert kinds[-1] == "result"
    assert seen[-1][2]["state"] == "succeeded"
    assert len(seen[-1][2]["result"]["results"]) == 2
    resumed = await stream(cluster, reply["run_id"], **{"Last-Event-ID": str(seen[1][0])})
    assert resumed == seen[2:]


async def test_the_event_stream_refuses_what_it_cannot_follow(cluster: Cluster) -> None:
    status, reply = await cluster.get(f"{R}/run_nope/events")
    assert (status, reply["error"]["code"]) == (404, "not_found")
    done = await submit(cluster, {"kind": "route", "instances": ["A"]})
    async with cluster.http.get(
        f"{cluster.url}{R}/{done['run_id']}/events",
        headers={**cluster.headers, "Last-Event-ID": "abc"},
    ) as resp:
        body = await resp.json()
    assert (resp.status, body["error"]["field"]) == (400, "Last-Event-ID")


async def test_an_async_route_repeated_with_its_key_answers_202_with_the_same_run(
    cluster: Cluster,
) -> None:
    """The synchronous endpoints' 200 is their own result: a replayed async submit is 202."""
    body = {"instances": ["A"], "payload": {"again": 1}, "async": True}
    headers = {"Idempotency-Key": "async-route-1"}
    status, first = await cluster.post("/api/orchestrator/route", body, **headers)
    assert status == 202, first
    async with cluster.http.post(
        f"{cluster.url}/api/orchestrator/route",
        json=body,
        headers={**cluster.headers, **headers},
    ) as resp:
        again = await resp.json()
        assert (resp.status, resp.headers.get("Idempotent-Replayed")) == (202, "true")
    assert again["run_id"] == first["run_id"]
