"""``stream_events``: the events one read of a streamed reply completed, handed on (pure: no
sockets). Deltas that arrived together go to a batch-taking consumer in one call, so a relay
that fell behind writes them to its client at once; nothing else about a stream changes."""

from __future__ import annotations

from typing import Any

import pytest

from openclaw_orchestrator.errors import InstanceProtocolError
from openclaw_orchestrator.server.core.dispatcher import Streaming
from openclaw_orchestrator.server.drivers.base import DeltaError, Reply, stream_events
from openclaw_orchestrator.sse import SseDecoder

pytestmark = pytest.mark.asyncio


def events(raw: bytes) -> Any:
    return SseDecoder().feed(raw)


def delta(value: str) -> bytes:
    return b'event: delta\ndata: {"delta": "%s"}\n\n' % value.encode()


class Batches:
    """A DeltaBatch that records every call: ``("one", d)`` or ``("many", [d, ...])``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def __call__(self, value: Any) -> None:
        self.calls.append(("one", value))

    async def many(self, values: list[Any]) -> None:
        self.calls.append(("many", values))


async def test_deltas_read_together_go_in_one_batch_then_the_result() -> None:
    """Consecutive deltas are one call; another event in between splits them."""
    raw = delta("a") + delta("b") + b"event: progress\ndata: 1\n\n" + delta("c") + delta("d")
    raw += b'event: result\ndata: {"result": 1}\n\n'
    seen = Batches()
    final = await stream_events(events(raw), "A", seen)
    assert final == Reply(200, None, b'{"result": 1}')
    assert seen.calls == [("many", ["a", "b"]), ("many", ["c", "d"])]


async def test_a_plain_consumer_gets_them_one_by_one() -> None:
    """A consumer without ``many`` is called once per delta, as before."""
    got: list[Any] = []

    async def one(value: Any) -> None:
        got.append(value)

    assert await stream_events(events(delta("a") + delta("b")), "A", one) is None
    assert got == ["a", "b"]


async def test_a_broken_delta_hands_on_the_ones_before_it_first() -> None:
    """The deltas before a broken one reach the consumer (the caller has seen output: its
    failure is final) before the protocol error is raised."""
    raw = delta("a") + delta("b") + b'event: delta\ndata: {"d": 1}\n\n' + delta("c")
    seen = Batches()
    with pytest.raises(InstanceProtocolError, match="no 'delta' field"):
        await stream_events(events(raw), "A", seen)
    assert seen.calls == [("many", ["a", "b"])]


async def test_a_failing_batch_is_the_consumers_error() -> None:
    """``many`` raising is the caller's failure (DeltaError), as ``on_delta`` raising is."""

    class Broken(Batches):
        async def many(self, values: list[Any]) -> None:
            raise ConnectionResetError("gone")

    with pytest.raises(DeltaError):
        await stream_events(events(delta("a") + delta("b")), "A", Broken())


async def test_streaming_passes_batches_to_its_sink_and_marks_the_start() -> None:
    """An attempt's callback hands a batch to ``sink_many`` tagged with its instance, and
    the request counts as started (no failover behind output already shown)."""
    batches: list[tuple[str, list[Any]]] = []

    async def sink(instance: str, value: Any) -> None:
        raise AssertionError("a batch goes to sink_many")

    async def sink_many(instance: str, values: list[Any]) -> None:
        batches.append((instance, values))

    stream = Streaming(sink, None, sink_many)
    attempt = stream.to("B")
    assert not stream.started
    await attempt.many([1, 2])  # type: ignore[attr-defined]  # a DeltaBatch here
    assert (stream.started, batches) == (True, [("B", [1, 2])])
