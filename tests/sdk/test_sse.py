"""The SDK's server-sent events reader, fed by hand: fields, line endings split across
chunks, comments, multi-line data, and events that must not be dispatched."""

from __future__ import annotations

import pytest

from openclaw_orchestrator.errors import OrchestratorError
from openclaw_orchestrator.sdk.events import RunEvent, SseParser


def parse(*chunks: bytes) -> list[RunEvent]:
    parser = SseParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_id_event_and_data_make_one_event_on_the_blank_line() -> None:
    stream = b'id: 1\nevent: state\ndata: {"state": "queued"}\n\n'
    assert parse(stream) == [RunEvent(1, "state", {"state": "queued"})]
    assert parse(stream[:-1]) == []  # not dispatched before its blank line


def test_multi_line_data_is_joined_with_newlines() -> None:
    stream = b'event: result\ndata: {"state":\ndata:  "succeeded"}\n\n'
    assert parse(stream) == [RunEvent(None, "result", {"state": "succeeded"})]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_byte_by_byte(ending: bytes) -> None:
    """LF, CRLF and CR, with every chunk one byte: a CR split from its LF is one ending."""
    raw = ending.join([b"id: 7", b"event: entry", b"data: [1, 2]", b"", b""])
    assert parse(*(raw[i : i + 1] for i in range(len(raw)))) == [RunEvent(7, "entry", [1, 2])]


def test_comments_and_unknown_fields_are_ignored() -> None:
    stream = b": ping\n\nretry: 10\nfoo: bar\ndata: 1\n: between\n\n"
    assert parse(stream) == [RunEvent(None, "message", 1)]


def test_an_event_without_data_is_dropped_and_its_type_forgotten() -> None:
    stream = b"event: state\nid: 3\n\ndata: 2\n\n"
    assert parse(stream) == [RunEvent(3, "message", 2)]  # the id stays, as the standard says


def test_a_field_without_colon_and_a_value_without_space() -> None:
    """``data`` alone is an empty data line; ``id:12`` needs no space after the colon."""
    assert parse(b'data\ndata:"x"\n\n') == [RunEvent(None, "message", "x")]
    assert parse(b"id:12\ndata:5\n\n") == [RunEvent(12, "message", 5)]


def test_data_that_is_not_json_is_an_orchestrator_error() -> None:
    with pytest.raises(OrchestratorError, match="'state' event that is not JSON"):
        parse(b"event: state\ndata: {oops\n\n")


def test_utf8_split_across_chunks_and_last_id() -> None:
    raw = 'id: 4\nevent: entry\ndata: "é"\n\n'.encode()
    cut = raw.index("é".encode()) + 1
    parser = SseParser()
    assert [*parser.feed(raw[:cut]), *parser.feed(raw[cut:])] == [RunEvent(4, "entry", "é")]
    assert parser.last_id == 4
