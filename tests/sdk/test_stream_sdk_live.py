"""``route_stream`` and ``send_stream`` of both SDK clients against a live orchestrator and
real reference instances running the ``stream`` handler (one cluster for the module).

The sync ``Client`` cannot run inside the test's loop, so its calls go to a worker thread
(``asyncio.to_thread``) while the cluster keeps serving here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from openclaw_orchestrator import (
    AsyncClient,
    Client,
    NotFoundError,
    OrchestratorError,
    RouteResult,
    SendResult,
)
from openclaw_orchestrator.sdk.events import Delta
from tests.api.conftest import Cluster, start_cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = "one two three"


@pytest.fixture(autouse=True)
def _no_orchestrator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ORCHESTRATOR_URL", "ORCHESTRATOR_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live() -> AsyncIterator[Cluster]:
    """Two reference instances A and B (``stream`` handler) behind an orchestrator."""
    async with start_cluster("AB", handler="stream") as c:
        yield c


def split(items: list[Any]) -> tuple[list[Delta], Any]:
    """The deltas, and the last item (the result), checked to come last and once."""
    *deltas, last = items
    assert all(isinstance(d, Delta) for d in deltas)
    return deltas, last


async def test_async_route_stream_yields_deltas_then_the_result(live: Cluster) -> None:
    async with AsyncClient(live.url, live.api_key) as client:
        items = [i async for i in client.route_stream({"text": TEXT}, instances="A")]
    deltas, result = split(items)
    assert [d.text for d in deltas] == ["one ", "two ", "three"]
    assert {d.instance for d in deltas} == {"A"}
    assert isinstance(result, RouteResult)
    assert (result.instance, result.result) == ("A", {"text": TEXT})


async def test_async_send_stream_by_handle_and_by_id(live: Cluster) -> None:
    async with AsyncClient(live.url, live.api_key) as client:
        session = await client.sessions.spawn(instance="B")
        by_handle = [i async for i in session.send_stream({"text": TEXT, "chunks": 2})]
        by_id = [i async for i in client.sessions.send_stream(session.id, {"text": "x y"})]
        page = await session.history()
    deltas, sent = split(by_handle)
    assert "".join(d.text or "" for d in deltas) == TEXT
    assert len(deltas) == 2
    assert isinstance(sent, SendResult)
    assert (sent.seq, sent.reply) == (1, {"text": TEXT})
    deltas, sent = split(by_id)
    assert ([d.text for d in deltas], sent.seq) == (["x ", "y"], 2)
    assert [m.reply for m in page.messages] == [{"text": TEXT}, {"text": "x y"}]


async def test_failures_raise_typed_errors(live: Cluster) -> None:
    """Before the stream (an unknown session): the JSON error's class; once streaming (the
    instance refuses the payload): the error event's, with its status."""
    async with AsyncClient(live.url, live.api_key) as client:
        with pytest.raises(NotFoundError):
            [i async for i in client.sessions.send_stream("nope", {"text": "a"})]
        with pytest.raises(OrchestratorError) as caught:
            [i async for i in client.route_stream({"text": 5}, instances="A")]
    assert (caught.value.code, caught.value.upstream_status) == ("invalid_request", 400)


async def test_leaving_early_stops_the_work(live: Cluster) -> None:
    slow = {"text": "x" * 10, "chunks": 10, "delay_ms": 5000}
    async with AsyncClient(live.url, live.api_key) as client:
        stream = client.route_stream(slow, instances="B")
        first = await anext(stream)
        await stream.aclose()
    assert isinstance(first, Delta)
    record = live.service.registry.get("B")
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 20  # well before the 45 s the stream would take
    while True:  # polled: nothing signals the attempt's end to a test
        if record.outstanding == 0 or loop.time() > give_up:
            break
        await asyncio.sleep(0.02)
    assert record.outstanding == 0


async def test_sync_client_streams_too(live: Cluster) -> None:
    def run() -> tuple[list[Any], list[Any]]:
        with Client(live.url, live.api_key) as client:
            routed = list(client.route_stream({"text": TEXT}, instances="B"))
            session = client.sessions.spawn(instance="A")
            sent = list(session.send_stream({"text": "hi there"}))
        return routed, sent

    routed, sent = await asyncio.to_thread(run)
    deltas, result = split(routed)
    assert ([d.text for d in deltas], result.result) == (["one ", "two ", "three"], {"text": TEXT})
    deltas, reply = split(sent)
    assert ([d.text for d in deltas], reply.seq) == (["hi ", "there"], 1)
