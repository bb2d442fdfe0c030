"""Streamed replies through the lean httptools client (``LeanHttp.stream``), against a real
reference instance: what only the lean side has to get right on its own — pooling a
connection whose stream was read to its end, not reading ahead of a slow consumer, and
handing deltas on from the connection's callback to a caller that takes them at once
(``EventTap``).
(Everything a stream means to the driver runs on both transports in
``test_worker_streaming.py``.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from openclaw_orchestrator.devtools.reference import create_instance_app, resolve_handler
from openclaw_orchestrator.errors import InstanceDownError, InstanceProtocolError
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


class Taking:
    """An ``on_delta`` that takes deltas at once too (a ``DeltaNow``, as the API's relay
    is): ``now`` takes a batch unless ``refuse`` says otherwise (called with the count of
    ``now`` calls so far). Records which way each delta came, in order."""

    def __init__(self, refuse: Callable[[int], bool] = lambda n: False) -> None:
        self.refuse = refuse
        self.calls = 0
        self.came: list[tuple[str, Any]] = []

    async def __call__(self, delta: Any) -> None:
        self.came.append(("awaited", delta))

    async def many(self, deltas: list[Any]) -> None:
        self.came += [("awaited", d) for d in deltas]

    def now(self, deltas: list[Any]) -> bool:
        self.calls += 1
        if self.refuse(self.calls):
            return False
        self.came += [("now", d) for d in deltas]
        return True

    def texts(self, way: str | None = None) -> list[str]:
        return [d["text"] for w, d in self.came if way in (None, w)]


async def test_deltas_go_on_from_the_connections_callback(
    serve: Serve, worker: WorkerDriver
) -> None:
    """A caller that takes deltas at once gets them from the connection's own callback
    while the read loop waits (no task wake-up a chunk), all of them in order, and the
    connection is pooled after the stream as before."""
    instance = await _instance(serve)
    text = "".join(f"w{i:02d} " for i in range(20))
    taking = Taking()
    result = await worker.invoke(
        instance,
        {"text": text, "chunks": 20, "delay_ms": 3},
        timeout=10.0,
        request_id="r",
        on_delta=taking,
    )
    assert "".join(taking.texts()) == result["text"] == text
    assert len(taking.texts("now")) >= 10  # the first may come with the head, to the loop
    assert "[0 busy, 1 idle connections" in repr(worker._transport)


async def test_deltas_refused_now_are_awaited_in_order(serve: Serve, worker: WorkerDriver) -> None:
    """Every other ``now`` is refused (its client is slow): those deltas go the awaited
    way, the rest at once, and each arrives exactly once, in order."""
    instance = await _instance(serve)
    text = "".join(f"w{i:02d} " for i in range(20))
    taking = Taking(refuse=lambda n: n % 2 == 0)
    result = await worker.invoke(
        instance,
        {"text": text, "chunks": 20, "delay_ms": 3},
        timeout=10.0,
        request_id="r",
        on_delta=taking,
    )
    assert "".join(taking.texts()) == result["text"] == text
    assert taking.texts("now")
    assert taking.texts("awaited")


async def _paced_then(serve: Serve, last: bytes | None) -> InstanceSpec:
    """An instance streaming deltas ``a`` and ``b`` 20 ms apart (the read loop waits
    between them: the tap takes each read), then ``last``, or dying mid-stream if None."""

    async def task(request: Request) -> Response:
        await request.body()

        async def body() -> AsyncIterator[bytes]:
            for word in ("a", "b"):
                yield b'event: delta\ndata: {"delta": {"text": "%s"}}\n\n' % word.encode()
                await asyncio.sleep(0.02)
            if last is None:
                raise RuntimeError("the instance dies mid-stream")
            yield last

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/api/instance/task", task, methods=["POST"])])
    return InstanceSpec(name="A", url=await serve(app))


async def test_a_broken_delta_after_some_taken_now_is_a_protocol_error(
    serve: Serve, worker: WorkerDriver
) -> None:
    """Deltas taken at once, then a broken one: the deltas before it were handed on, and
    the call fails with the protocol error, as on the awaited path."""
    instance = await _paced_then(serve, b'event: delta\ndata: {"d": 1}\n\n')
    taking = Taking()
    with pytest.raises(InstanceProtocolError, match="no 'delta' field"):
        await worker.invoke(instance, 1, timeout=5.0, request_id="r", on_delta=taking)
    assert taking.texts() == ["a", "b"]
    assert taking.texts("now")


async def test_a_connection_lost_after_deltas_taken_now_fails_the_call(
    serve: Serve, worker: WorkerDriver
) -> None:
    """The instance's connection breaks after deltas went on from the callback: the call
    fails as the instance's broken connection, and what was taken stays taken, once."""
    instance = await _paced_then(serve, None)
    taking = Taking()
    with pytest.raises(InstanceDownError, match="connection"):
        await worker.invoke(instance, 1, timeout=5.0, request_id="r", on_delta=taking)
    assert taking.texts() == ["a", "b"]
    assert taking.texts("now")
