"""``EventTap``: a streamed reply decoded in the connection's callback, its deltas handed on
there while the caller takes them at once, everything else left in order for the read loop
(pure: no sockets). Whatever mix of the two paths a stream takes, each event is handed on
exactly once and in order."""

from __future__ import annotations

from typing import Any

from openclaw_orchestrator.server.core.dispatcher import Streaming
from openclaw_orchestrator.server.drivers.event_tap import EventTap
from openclaw_orchestrator.sse import SseEvent


def delta(value: str) -> bytes:
    return b'event: delta\ndata: {"delta": "%s"}\n\n' % value.encode()


RESULT = b'event: result\ndata: {"result": 1}\n\n'


class Now:
    """A ``now`` that takes a batch while ``taking`` says so, and records what it took."""

    def __init__(self, *taking: bool) -> None:
        self.taking = list(taking)
        self.took: list[list[Any]] = []

    def __call__(self, values: list[Any]) -> bool:
        if not (self.taking.pop(0) if self.taking else True):
            return False
        self.took.append(values)
        return True


def kinds(events: list[SseEvent]) -> list[tuple[str, bytes]]:
    return [(e.event, e.data) for e in events]


def test_deltas_are_handed_on_in_the_callback() -> None:
    """A read of whole delta events goes to ``now`` in one batch; nothing is left."""
    now = Now()
    tap = EventTap("A", now)
    assert tap(delta("a") + delta("b")) is True
    assert tap(delta("c")) is True
    assert now.took == [["a", "b"], ["c"]]
    assert tap.events(b"") == []


def test_an_event_split_across_reads_is_handed_on_when_complete() -> None:
    """Bytes that end inside an event keep it in the decoder: nothing to hand on yet."""
    now = Now()
    tap = EventTap("A", now)
    raw = delta("a")
    assert tap(raw[:10]) is True
    assert now.took == []
    assert tap(raw[10:] + delta("b")[:5]) is True
    assert tap(delta("b")[5:]) is True
    assert now.took == [["a"], ["b"]]


def test_the_result_is_left_for_the_read_loop_after_the_deltas_before_it() -> None:
    """The final event is the read loop's: the deltas before it go at once, it is left."""
    now = Now()
    tap = EventTap("A", now)
    assert tap(delta("a") + RESULT) is False
    assert now.took == [["a"]]
    assert kinds(tap.events(b"")) == [("result", b'{"result": 1}')]
    assert tap.events(b"") == []  # taken once


def test_deltas_the_caller_cannot_take_now_are_all_left_in_order() -> None:
    """``now`` refusing takes none of the batch: the read loop gets every event of the read,
    then those of the bytes it reads itself, in order; the next read may go at once again."""
    now = Now(False)
    tap = EventTap("A", now)
    assert tap(delta("a") + delta("b")) is False
    assert now.took == []
    left = tap.events(delta("c"))
    assert [e.data for e in left] == [b'{"delta": "%s"}' % v for v in (b"a", b"b", b"c")]
    assert tap(delta("d")) is True
    assert now.took == [["d"]]


def test_a_broken_delta_is_left_after_the_good_ones_go() -> None:
    """A delta event without a ``delta`` field is the read loop's to raise, after the ones
    before it are handed on (as ``stream_events`` does)."""
    now = Now()
    tap = EventTap("A", now)
    broken = b'event: delta\ndata: {"d": 1}\n\n'
    assert tap(delta("a") + broken + delta("b")) is False
    assert now.took == [["a"]]
    assert [e.data for e in tap.events(b"")] == [b'{"d": 1}', b'{"delta": "b"}']


def test_while_events_are_left_nothing_new_overtakes_them() -> None:
    """Bytes fed while events are still left are left behind them, not handed on."""
    now = Now()
    tap = EventTap("A", now)
    assert tap(RESULT) is False
    assert tap(delta("a")) is False
    assert now.took == []
    assert kinds(tap.events(b"")) == [("result", b'{"result": 1}'), ("delta", b'{"delta": "a"}')]


def test_without_now_everything_is_left() -> None:
    """No ``now``: the tap only decodes; every event is the read loop's."""
    tap = EventTap("A", None)
    assert tap(delta("a")) is False
    assert [e.event for e in tap.events(delta("b"))] == ["delta", "delta"]


def test_a_now_that_raises_is_not_asked_again() -> None:
    """A bug in ``now`` (logged) leaves its batch and every later one to the awaited way."""
    calls: list[list[Any]] = []

    def broken(values: list[Any]) -> bool:
        calls.append(values)
        raise RuntimeError("bug")

    tap = EventTap("A", broken)
    assert tap(delta("a")) is False
    assert tap.events(b"")[0].data == b'{"delta": "a"}'
    assert tap(delta("b")) is False
    assert calls == [["a"]]


def test_streaming_takes_deltas_now_through_its_sink_and_marks_the_start() -> None:
    """An attempt's ``now`` passes the batch to ``sink_now`` tagged with its instance and
    counts the request as started only when the sink took it."""
    taken: list[tuple[str, list[Any]]] = []
    taking = [False, True]

    async def sink(instance: str, value: Any) -> None:
        raise AssertionError("unused")

    async def sink_many(instance: str, values: list[Any]) -> None:
        raise AssertionError("unused")

    def sink_now(instance: str, values: list[Any]) -> bool:
        if taking.pop(0):
            taken.append((instance, values))
            return True
        return False

    stream = Streaming(sink, None, sink_many, sink_now)
    attempt: Any = stream.to("B")
    assert attempt.now([1]) is False
    assert not stream.started
    assert attempt.now([2, 3]) is True
    assert (stream.started, taken) == (True, [("B", [2, 3])])


def test_streaming_without_sink_now_offers_no_now() -> None:
    """Without ``sink_now`` an attempt has no ``now``: the lean client reads with no tap."""

    async def sink(instance: str, value: Any) -> None: ...

    async def sink_many(instance: str, values: list[Any]) -> None: ...

    assert not hasattr(Streaming(sink, None, sink_many).to("A"), "now")
    assert not hasattr(Streaming(sink).to("A"), "now")
