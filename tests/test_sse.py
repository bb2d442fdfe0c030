"""SseDecoder: the text/event-stream framing of every stream we read (pure, no sockets)."""

from __future__ import annotations

import pytest

from openclaw_orchestrator.sse import SseDecoder, SseEvent

STREAM = (
    b"\xef\xbb\xbf: a comment, then an unnamed event\r\n"
    b"data: one\r\n\r\n"
    b"event: delta\r"
    b"data:no space\r"
    b"data:  two spaces\r\r"
    b'id: 7\nretry: 100\nunknown: x\nevent: result\ndata\ndata: {"result": 1}\n\n'
    b"event: empty\n\n"
    b"event: cut\ndata: never ended\n"
)
EVENTS = [
    SseEvent("message", b"one"),
    SseEvent("delta", b"no space\n two spaces"),
    SseEvent("result", b'\n{"result": 1}', "7"),
]


def test_events_of_a_whole_stream() -> None:
    """CRLF, CR and LF line ends; comments, BOM, retry/unknown fields ignored; the id kept;
    one space after the colon dropped; data lines joined by LF (a bare ``data`` is an empty
    line); an event without data, or the stream ends inside, is not dispatched."""
    assert SseDecoder().feed(STREAM) == EVENTS


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_events_do_not_depend_on_how_the_bytes_are_cut(size: int) -> None:
    """Fed in pieces of any size (a CRLF split in two included), the same events come out,
    each as soon as its blank line arrives."""
    decoder = SseDecoder()
    events = []
    for start in range(0, len(STREAM), size):
        events += decoder.feed(STREAM[start : start + size])
    assert events == EVENTS


def test_a_long_line_across_many_chunks() -> None:
    """A large event arriving in many chunks is one event (the middle of a line is kept)."""
    decoder = SseDecoder()
    assert decoder.feed(b"event: delta\ndata: ") == []
    for _ in range(100):
        assert decoder.feed(b"x" * 1000) == []
    assert decoder.feed(b"\r") == []
    assert decoder.feed(b"\n\r\n") == [SseEvent("delta", b"x" * 100_000)]


def test_a_crlf_split_across_chunks_is_one_line_end() -> None:
    """``\\r`` at the end of a chunk ends its line at once (no wait for the next byte) and a
    ``\\n`` starting the next chunk is its other half, so the blank line that follows
    dispatches exactly one event, as soon as its CR arrives."""
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [SseEvent("message", b"a\nb")]
    assert decoder.feed(b"\n") == []
