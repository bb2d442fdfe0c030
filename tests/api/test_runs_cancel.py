"""Cancelling durable runs against real reference instances (the ``stream`` handler, which
can be made slow): the instance call in flight is aborted and the instance is told (it
counts the task cancelled), and a fanout cancelled midway keeps the entries it had."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.api.conftest import Cluster, start_cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

R = "/api/orchestrator/runs"
SLOW = {"text": "one two three", "delay_ms": 20_000}
"""A task of the ``stream`` handler that runs for a minute (20 s between its words)."""


@pytest.fixture(scope="module")
def fast_paths(request: pytest.FixtureRequest) -> bool:
    """The side of the fast paths this module's cluster is on (one cluster per side)."""
    return bool(getattr(request, "param", True))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(fast_paths: bool) -> AsyncIterator[Cluster]:
    async with start_cluster("AB", handler="stream", fast_paths=fast_paths) as c:
        yield c


async def health(c: Cluster, name: str) -> dict[str, Any]:
    async with c.http.get(c.instance_urls[name] + "/api/health/check") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def until(c: Cluster, name: str, key: str, value: int) -> dict[str, Any]:
    """Instance ``name``'s health body once its ``key`` is ``value`` (10 s at most)."""
    for _ in range(200):
        body = await health(c, name)
        if body[key] == value:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}: {key} never became {value}: {body}")


async def first_entry(c: Cluster, run_id: str) -> None:
    """Read the run's event stream until its first ``entry`` event (then hang up)."""
    async with c.http.get(f"{c.url}{R}/{run_id}/events", headers=c.headers) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.rstrip() == b"event: entry":
                return
    raise AssertionError("the stream ended without an entry")


async def submit(c: Cluster, body: dict[str, Any]) -> str:
    status, reply = await c.post(R, body)
    assert status == 202, reply
    run_id: str = reply["run_id"]
    return run_id


async def cancelled(c: Cluster, run_id: str) -> dict[str, Any]:
    status, asked = await c.post(f"{R}/{run_id}/cancel", {})
    assert status == 200, asked
    status, done = await c.get(f"{R}/{run_id}?wait=10s")
    assert status == 200, done
    return done


async def test_cancel_aborts_the_instance_call_in_flight_and_tells_the_instance(
    live: Cluster,
) -> None:
    before = (await health(live, "A"))["cancelled"]
    run_id = await submit(live, {"kind": "route", "instances": "A", "payload": SLOW})
    await until(live, "A", "inflight", 1)
    done = await cancelled(live, run_id)
    assert (done["state"], done["result"]) == ("cancelled", None)
    after = await until(live, "A", "cancelled", before + 1)  # the protocol's cancel call
    assert after["inflight"] == 0


async def test_a_fanout_cancelled_midway_keeps_the_results_it_has(live: Cluster) -> None:
    """A answers at once, B (slowed through its fault API) never does before the cancel."""
    await live.set_faults("B", latency=20.0)
    try:
        run_id = await submit(
            live,
            {"kind": "fanout", "targets": ["A", "B"], "payload": {"text": "quick"}},
        )
        await until(live, "B", "inflight", 1)
        await asyncio.wait_for(first_entry(live, run_id), 10)
        done = await cancelled(live, run_id)
    finally:
        await live.set_faults("B", latency=0.0)
    assert done["state"] == "cancelled"
    kept = done["result"]
    assert kept["partial"] is True
    assert [(e["instance"], e["status"]) for e in kept["results"]] == [("A", "ok")]
    assert kept["results"][0]["result"] == {"text": "quick"}
    assert (kept["succeeded"], kept["error"]["code"]) == (1, "cancelled")
