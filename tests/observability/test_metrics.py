"""``GET /metrics`` after known traffic against real reference instances: the counters and
histograms add up exactly to what the replies say happened, on both sides of the fast
path; the endpoint's auth; bounded labels."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.models import RouteRequest, SpawnRequest
from openclaw_orchestrator.server.composition import build_drivers, client_session
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.server.hosting import BackgroundServer
from openclaw_orchestrator.server.observability import build_observer
from openclaw_orchestrator.server.stores.leases import holder_id
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.settings import Settings

from ..storage_faults import postgres_database
from .conftest import (
    API_KEY,
    METRICS_TOKEN,
    Observed,
    Samples,
    observed_cluster,
    total,
    value,
)

ROUTE = "/api/orchestrator/route"
FANOUT = "/api/orchestrator/fanout"
SEND_TEMPLATE = "/api/orchestrator/sessions/{session_id}/send"
SIDES = pytest.mark.parametrize("fast_paths", [True, False], ids=["fast_paths", "framework"])


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    """How much one sample grew between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


def attempt_outcomes(attempts: list[dict[str, object]]) -> Counter[tuple[str, str]]:
    """``(instance, outcome)`` of a route's attempts, as the metric labels them (ok or the
    error code)."""
    counted: Counter[tuple[str, str]] = Counter()
    for attempt in attempts:
        error = attempt["error"]
        code = "ok" if error is None else str(error["code"])  # type: ignore[index]
        counted[str(attempt["instance"]), code] += 1
    return counted


async def routes_phase(c: Observed) -> None:
    """Six routes, A failing with 503 (so some fail over to B), two to C alone."""
    await c.set_faults("A", fail_rate=1.0, fail_status=503)
    before = await c.scrape()
    expected: Counter[tuple[str, str]] = Counter()
    failovers = 0
    for instances in ["A,B"] * 4 + ["C"] * 2:
        status, body = await c.post(ROUTE, {"instances": instances, "payload": {"n": 1}})
        assert status == 200, body
        expected += attempt_outcomes(body["attempts"])
        failovers += len(body["attempts"]) - 1
    await c.set_faults("A", fail_rate=0.0)
    after = await c.scrape()
    assert failovers > 0  # round robin puts A first at least once in four
    assert (
        delta(
            after, before, "orchestrator_requests_total", endpoint=ROUTE, method="POST", code="200"
        )
        == 6
    )
    assert delta(after, before, "orchestrator_request_duration_seconds_count", endpoint=ROUTE) == 6
    for (instance, outcome), count in expected.items():
        got = delta(
            after, before, "orchestrator_attempts_total", instance=instance, outcome=outcome
        )
        assert got == count, (instance, outcome)
    assert total(after, "orchestrator_attempts_total") - total(
        before, "orchestrator_attempts_total"
    ) == sum(expected.values())
    for instance in "ABC":
        calls = sum(n for (name, _), n in expected.items() if name == instance)
        assert (
            delta(after, before, "orchestrator_attempt_duration_seconds_count", instance=instance)
            == calls
        )
    assert delta(after, before, "orchestrator_failovers_total", instance="A") == failovers
    assert (
        delta(after, before, "orchestrator_retries_total", instance="B", operation="route")
        == failovers
    )


async def fanout_phase(c: Observed) -> None:
    """One fanout over A–D with D too slow for its deadline: a timeout entry."""
    await c.set_faults("D", latency=3.0)
    before = await c.scrape()
    status, body = await c.post(FANOUT, {"targets": "A-D", "payload": {}, "timeout": 0.5})
    await c.set_faults("D", latency=0.0)
    after = await c.scrape()
    await c.wait_state("D", "healthy")  # the timeout marked it down; the next probe clears it
    assert status == 200, body
    statuses = {e["instance"]: e["status"] for e in body["results"]}
    assert statuses == {"A": "ok", "B": "ok", "C": "ok", "D": "timeout"}
    assert delta(after, before, "orchestrator_fanout_width_count") == 1
    assert delta(after, before, "orchestrator_fanout_width_sum") == 4
    for instance, entry_status in statuses.items():
        got = delta(
            after,
            before,
            "orchestrator_fanout_targets_total",
            instance=instance,
            status=entry_status,
        )
        assert got == 1, instance
    ended = [  # its own deadline or the fanout's, whichever the loop saw first
        delta(after, before, "orchestrator_attempts_total", instance="D", outcome=outcome)
        for outcome in ("timeout", "cancelled")
    ]
    assert sum(ended) == 1
    assert (
        delta(
            after, before, "orchestrator_requests_total", endpoint=FANOUT, method="POST", code="200"
        )
        == 1
    )


async def sessions_phase(c: Observed) -> None:
    """A session on D: two sends, one D fails (503), then D's port closes and the fourth
    send migrates the session."""
    status, spawned = await c.post(
        "/api/orchestrator/sessions/spawn", {"instance": "D", "failover": "migrate"}
    )
    assert status in (200, 201), spawned
    path = f"/api/orchestrator/sessions/{spawned['session_id']}/send"
    before = await c.scrape()
    for n in range(2):
        status, sent = await c.post(path, {"data": {"n": n}})
        assert (status, sent["instance"]) == (200, "D"), sent
    await c.set_faults("D", fail_rate=1.0, fail_status=503)
    status, failed = await c.post(path, {"data": {"n": 2}})
    assert (status, failed["error"]["code"]) == (502, "instance_error"), failed
    await c.servers["D"].aclose()  # refused from now on: the session may move
    status, moved = await c.post(path, {"data": {"n": 3}})
    after = await c.scrape()
    assert status == 200, moved
    assert moved["migrated_from"] == "D"
    assert delta(after, before, "orchestrator_session_sends_total", instance="D", outcome="ok") == 2
    assert (
        delta(
            after,
            before,
            "orchestrator_session_sends_total",
            instance="D",
            outcome="instance_error",
        )
        == 1
    )
    assert (
        delta(
            after,
            before,
            "orchestrator_session_sends_total",
            instance=moved["instance"],
            outcome="ok",
        )
        == 1
    )
    assert delta(after, before, "orchestrator_session_migrations_total", instance="D") == 1
    for code, count in (("200", 3), ("502", 1)):
        sent = delta(
            after,
            before,
            "orchestrator_requests_total",
            endpoint=SEND_TEMPLATE,
            method="POST",
            code=code,
        )
        assert sent == count, code
    commits = delta(
        after, before, "orchestrator_store_commit_duration_seconds_count", engine="sqlite"
    )
    assert commits >= 3  # one append per delivered send at least (a migration writes more)
    assert (
        delta(after, before, "orchestrator_store_commit_batch_size_count", engine="sqlite")
        == commits
    )
    assert value(
        after, "orchestrator_store_commit_duration_seconds_bucket", engine="sqlite", le="+Inf"
    ) == value(after, "orchestrator_store_commit_duration_seconds_count", engine="sqlite")


@SIDES
async def test_traffic_adds_up(fast_paths: bool) -> None:
    """Routes with failovers, a fanout with a timeout and session sends with a migration:
    every counter and histogram count grows by exactly what the replies report, the fast
    path's requests counted under the same route templates as the framework's."""
    async with observed_cluster("ABCDE", fast_paths=fast_paths, stopped="E") as c:
        await routes_phase(c)
        await fanout_phase(c)
        await sessions_phase(c)


async def test_fleet_gauges_name_the_replica() -> None:
    """Health (one series per state), in-flight work and probe ownership are read at the
    scrape, each labelled with this replica's id; probes are timed by outcome."""
    async with observed_cluster("AB", stopped="B") as c:
        samples = await c.scrape()
        replica = c.service.observer.replica
        assert replica
        assert value(samples, "orchestrator_replica", replica=replica) == 1
        health = {
            (dict(labels)["instance"], dict(labels)["state"]): v
            for (name, labels), v in samples.items()
            if name == "orchestrator_instance_health"
        }
        assert (health[("A", "healthy")], health[("A", "down")]) == (1, 0)
        assert (health[("B", "down")], health[("B", "healthy")]) == (1, 0)
        assert all(
            dict(ls)["replica"] == replica
            for (n, ls) in samples
            if n.startswith("orchestrator_instance_health")
        )
        assert value(samples, "orchestrator_in_flight", instance="A", replica=replica) == 0
        assert value(samples, "orchestrator_probe_owner", instance="A", replica=replica) == 1
        assert (
            value(samples, "orchestrator_probe_duration_seconds_count", instance="A", outcome="ok")
            >= 1
        )
        assert (
            value(
                samples,
                "orchestrator_probe_duration_seconds_count",
                instance="B",
                outcome="instance_down",
            )
            >= 1
        )


async def test_metrics_auth() -> None:
    """No key: 401 in the error envelope; the metrics token and the API key both scrape;
    the metrics token grants nothing else."""
    async with observed_cluster("A") as c:
        async with c.http.get(c.url + "/metrics") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        async with c.http.get(
            c.url + "/metrics", headers={"Authorization": "Bearer wrong-token-000000"}
        ) as resp:
            assert resp.status == 401
        assert await c.scrape(METRICS_TOKEN)
        assert await c.scrape(API_KEY)
        async with c.http.get(
            c.url + "/api/orchestrator/health", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        ) as resp:
            assert resp.status == 401


async def test_metrics_off() -> None:
    """``metrics.enabled: false``: no /metrics (404) and no observer hooks counting."""
    async with observed_cluster("A", metrics=False) as c:
        async with c.http.get(c.url + "/metrics", headers=c.headers) as resp:
            assert resp.status == 404
        assert c.service.observer.metrics is None
        assert not c.service.observer.is_on


async def test_label_values_are_bounded() -> None:
    """Many distinct paths and session ids leave no trace in the labels: endpoints are
    route templates (or ``unmatched``), never raw paths or ids."""
    async with observed_cluster("A") as c:
        marks = [uuid.uuid4().hex for _ in range(20)]
        for mark in marks:
            async with c.http.get(f"{c.url}/nowhere/{mark}", headers=c.headers) as resp:
                assert resp.status == 404
            status, _ = await c.post(f"/api/orchestrator/sessions/s-{mark}/send", {"data": {}})
            assert status == 404
        samples = await c.scrape()
        text = repr(samples)
        assert not any(mark in text for mark in marks)
        endpoints = {
            dict(ls).get("endpoint") for (n, ls) in samples if n == "orchestrator_requests_total"
        }
        assert {"unmatched", SEND_TEMPLATE} <= endpoints
        assert all(e is not None and (e == "unmatched" or e.startswith("/")) for e in endpoints)
        assert all(not re.search(r"[0-9a-f]{32}", e or "") for e in endpoints)


SWEEPER = {"role": "session-sweeper"}
WAIT = 20.0
"""Seconds a test waits for a condition (a lease taken, work begun) before failing."""


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``name``, by its labels (absent ones really absent, unlike value())."""
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Until ``check()`` holds (polled: scrapes have no event to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not {what} after {WAIT}s")
        await asyncio.sleep(0.02)


async def test_lease_gauges_of_one_process() -> None:
    """SQLite, one process: it does the session sweeper's work (nobody else could: leader
    1), has no session leases (the family is absent, not 0), and holds a run's lease
    exactly while it works on it: 1 while the run's call hangs, 0 once it is cancelled."""
    async with observed_cluster("A") as c:
        replica = c.service.observer.replica
        for _ in range(3):
            status, spawned = await c.post("/api/orchestrator/sessions/spawn", {"instance": "A"})
            assert status in (200, 201), spawned
        samples = await c.scrape()
        assert series(samples, "orchestrator_leader") == {
            (("replica", replica), ("role", "session-sweeper")): 1.0
        }
        assert series(samples, "orchestrator_session_leases_held") == {}
        assert series(samples, "orchestrator_run_leases_held") == {(("replica", replica),): 0.0}

        await c.set_faults("A", hang=True)  # the run's call waits until it is cancelled
        status, run = await c.post(
            "/api/orchestrator/runs", {"kind": "route", "instances": ["A"], "timeout": "30s"}
        )
        assert status == 202, run

        async def held(n: float) -> bool:
            now = await c.scrape()
            return value(now, "orchestrator_run_leases_held", replica=replica) == n

        await until(lambda: held(1), "holding the run's lease")
        await c.set_faults("A", hang=False)
        status, cancelled = await c.post(f"/api/orchestrator/runs/{run['run_id']}/cancel", {})
        assert status == 200, cancelled
        await until(lambda: held(0), "letting the run go")
        samples = await c.scrape()
        assert value(samples, "orchestrator_leader", replica=replica, **SWEEPER) == 1


@dataclass
class Holding:
    """The instance's handler: every call waits until the test lets them all go, so the
    sends and runs (and their leases) stay in flight while the test scrapes."""

    arrived: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, payload: Any) -> Any:
        self.arrived += 1
        self.changed.set()
        await self.go.wait()
        return {"ran": payload}

    async def until_arrived(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.arrived < n:
                self.changed.clear()
                await self.changed.wait()


def scrape(replica: Orchestrator) -> Samples:
    """An in-process replica's ``/metrics``, parsed as the HTTP scrape parses it."""
    metrics = replica.observer.metrics
    assert metrics is not None
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_replicas_label_the_leases_they_hold() -> None:
    """Two orchestrators on one fresh PostgreSQL database, each with its own store, holder
    and replica id (as two processes would be): exactly one reports the session sweeper's
    lease; sends in flight through each replica are counted under that replica's label
    (1 and 2), and a run under whichever replica took it; all back to 0 once they end."""
    holding = Holding()
    async with (
        postgres_database() as url,
        client_session() as http,
        contextlib.AsyncExitStack() as stack,
    ):
        instance = await stack.enter_async_context(
            BackgroundServer(create_instance_app("A", holding))
        )
        settings = Settings.model_validate(
            {"instances": [{"name": "A", "url": instance}], "metrics": {"enabled": True}}
        )
        replicas: list[Orchestrator] = []
        for _ in range(2):
            store = PostgresStore(url)
            await store.open()
            stack.push_async_callback(store.aclose)
            observer = build_observer(settings, replica=holder_id())
            replica = Orchestrator(
                settings, drivers=build_drivers(http), store=store, observer=observer
            )
            await replica.start()
            stack.push_async_callback(replica.aclose)
            replicas.append(replica)
        stack.callback(holding.go.set)  # first on the way out: nothing left hanging
        names = [r.observer.replica for r in replicas]
        assert names[0] != names[1]

        async def one_leader() -> bool:
            leads = [
                value(scrape(r), "orchestrator_leader", replica=n, **SWEEPER)
                for r, n in zip(replicas, names, strict=True)
            ]
            assert sum(leads) <= 1, leads  # never two at once
            return sorted(leads) == [0, 1]

        await until(one_leader, "one session-sweeper leader")

        spawned = [
            (await replicas[i].sessions.spawn(SpawnRequest(instance="A"))).session_id
            for i in (0, 1, 1)
        ]
        sends = [
            asyncio.create_task(
                replicas[i].sessions.send(
                    sid, {"n": i}, timeout=30, idempotency_key=None, request_id=f"r{k}"
                )
            )
            for k, (i, sid) in enumerate(zip((0, 1, 1), spawned, strict=True))
        ]
        await holding.until_arrived(3)
        held = [scrape(r) for r in replicas]
        for samples, name, count in zip(held, names, (1, 2), strict=True):
            assert series(samples, "orchestrator_session_leases_held") == {
                (("replica", name),): count
            }

        request = RouteRequest(instances="A", payload={"run": 1})
        await replicas[0].runs.submit(
            "route", request.model_dump(mode="json", by_alias=True), timeout=30
        )
        await holding.until_arrived(4)
        runs = [
            value(scrape(r), "orchestrator_run_leases_held", replica=n)
            for r, n in zip(replicas, names, strict=True)
        ]
        assert sorted(runs) == [0, 1], runs

        holding.go.set()
        await asyncio.gather(*sends)

        async def all_let_go() -> bool:
            now = [scrape(r) for r in replicas]
            return all(
                value(s, "orchestrator_session_leases_held", replica=n) == 0
                and value(s, "orchestrator_run_leases_held", replica=n) == 0
                for s, n in zip(now, names, strict=True)
            )

        await until(all_let_go, "every lease let go")
