"""Streamed replies through the lean httptools client (``LeanHttp.stream``), against a real
reference instance: what only the lean side has to get right on its own — pooling a
connection whose stream was read to its end, and not reading ahead of a slow consumer.
(Everything a stream means to the driver runs on both transports in
``test_worker_streaming.py``.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from openclaw_orchestrator.devtools.reference import create_instance_app, resolve_handler
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.drivers import WorkerDriver, lean

Serve = Callable[[Any], Awaitable[str]]


@pytest.fixture
async def worker(session: aiohttp.ClientSession) -> AsyncIterator[WorkerDriver]:
    """A WorkerDriver on the lean transport."""
    async with WorkerDriver(session, transport="lean") as driver:
        yield driver


async def _instance(serve: Serve) -> InstanceSpec:
    url = await serve(create_instance_app("A", resolve_handler("stream")))
    return InstanceSpec(name="A", url=url)


async def test_a_stream_read_to_its_end_leaves_its_connection_pooled(
    serve: Serve, worker: WorkerDriver
) -> None:
    """Two streams one after the other use one keep-alive connection, idle in between."""
    instance = await _instance(serve)
    seen: list[Any] = []

    async def keep(delta: Any) -> None:
        seen.append(delta)

    for n in range(2):
        result = await worker.invoke(
            instance, {"text": "a b c"}, timeout=5.0, request_id=f"r{n}", on_delta=keep
        )
        assert result == {"text": "a b c"}
        assert "[0 busy, 1 idle connections" in repr(worker._transport)
    assert seen == [{"text": t} for t in ("a ", "b ", "c")] * 2


async def test_a_slow_consumer_pauses_reading_and_misses_nothing(
    serve: Serve, worker: WorkerDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance faster than its consumer fills the read-ahead buffer: the socket stops
    being read (back-pressure) until the consumer catches up, and every delta arrives, in
    order."""
    monkeypatch.setattr(lean, "STREAM_BUFFER_BYTES", 256)
    paused: list[bool] = []
    take = lean._Connection.take

    async def spying(self: lean._Connection) -> bytes | None:
        paused.append(self._paused)
        return await take(self)

    monkeypatch.setattr(lean._Connection, "take", spying)
    instance = await _instance(serve)
    text = "".join(f"w{i:03d} " for i in range(200))
    seen: list[str] = []

    async def slow(delta: Any) -> None:
        await asyncio.sleep(0.002)
        seen.append(delta["text"])

    result = await worker.invoke(
        instance, {"text": text, "chunks": 200}, timeout=10.0, request_id="r", on_delta=slow
    )
    assert "".join(seen) == result["text"] == text
    assert len(seen) == 200
    assert any(paused)
