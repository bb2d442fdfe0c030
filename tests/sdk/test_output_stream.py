"""The SDK's reader of a streamed route or send, with no I/O: deltas, the result, an error
event as its typed error, and a stream cut before its result."""

from __future__ import annotations

import pytest

from openclaw_orchestrator import InstanceError, OrchestratorError, RouteResult
from openclaw_orchestrator.sdk.events import Delta, OutputStreamReader

RESULT = (
    b'{"instance":"A","result":{"text":"ab"},"attempts":[],"skipped":[],'
    b'"total_ms":1.0,"request_id":"r"}'
)


def test_deltas_then_the_result_across_chunk_boundaries() -> None:
    body = (
        b'event: delta\ndata: {"instance":"A","delta":{"text":"a"}}\n\n'
        b": ping\n\n"
        b'event: delta\ndata: {"instance":"A","delta":[1,2]}\n\n'
        b"event: result\ndata: " + RESULT + b"\n\n"
    )
    reader = OutputStreamReader(RouteResult.model_validate)
    items = [item for i in range(0, len(body), 7) for item in reader.feed(body[i : i + 7])]
    reader.end()
    assert items[:2] == [Delta("A", {"text": "a"}), Delta("A", [1, 2])]
    assert (items[0].text, items[1].text) == ("a", None)  # type: ignore[union-attr]
    assert isinstance(items[2], RouteResult)
    assert items[2].result == {"text": "ab"}


def test_an_error_event_raises_its_typed_error() -> None:
    reader = OutputStreamReader(RouteResult.model_validate)
    body = (
        b'event: error\ndata: {"error":{"code":"instance_error","message":"boom",'
        b'"instance":"A"},"status":502}\n\n'
    )
    with pytest.raises(InstanceError) as caught:
        list(reader.feed(body))
    assert (caught.value.message, caught.value.instance) == ("boom", "A")


def test_a_stream_cut_before_its_result_raises() -> None:
    reader = OutputStreamReader(RouteResult.model_validate)
    list(reader.feed(b'event: delta\ndata: {"instance":"A","delta":1}\n\n'))
    with pytest.raises(OrchestratorError, match="before its result"):
        reader.end()
