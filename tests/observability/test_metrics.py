"""``GET /metrics`` after known traffic against real reference instances: the counters and
histograms add up exactly to what the replies say happened, on both sides of the fast
path; the endpoint's auth; bounded labels."""

from __future__ import annotations

import re
import uuid
from collections import Counter

import pytest

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
