"""The reference instance's streamed replies and cancel route (instance protocol v1.3),
over real sockets: in-process servers, and one ``instance serve --handler stream`` process."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from openclaw_orchestrator.devtools.reference import (
    FaultConfig,
    HandlerContext,
    create_instance_app,
    handlers,
    resolve_handler,
)
from openclaw_orchestrator.devtools.reference.handlers import echo

Serve = Callable[[Any], Awaitable[str]]
TASK = "/api/instance/task"
STREAM = {"Accept": "text/event-stream"}
TOKEN = "s3cret"
BIN = Path(sys.executable).parent
LISTENING = re.compile(r"instance A listening on (http://127\.0\.0\.1:\d+)\n")


async def _post(
    session: aiohttp.ClientSession, url: str, payload: Any, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    body = orjson.dumps({"payload": payload})
    async with session.post(url, data=body, headers={**STREAM, **headers}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def _health(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/api/health/check") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def test_the_stream_handler_streams_word_by_word(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """The exact wire form: one ``delta`` event per word, then the ``result`` event holding
    what the JSON reply would; the request id is echoed."""
    url = await serve(create_instance_app("A", resolve_handler("stream")))
    status, headers, body = await _post(
        session, url + TASK, {"text": "hello big world"}, **{"X-Request-ID": "r-1"}
    )
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["X-Request-ID"] == "r-1"
    assert body == (
        b'event: delta\ndata: {"delta":{"text":"hello "}}\n\n'
        b'event: delta\ndata: {"delta":{"text":"big "}}\n\n'
        b'event: delta\ndata: {"delta":{"text":"world"}}\n\n'
        b'event: result\ndata: {"result":{"text":"hello big world"},"instance":"A"}\n\n'
    )


async def test_chunks_cut_the_text_evenly(serve: Serve, session: aiohttp.ClientSession) -> None:
    """``chunks`` pieces of nearly equal length, joining to the text; a session message
    streams too, its result event carrying ``seen``."""
    url = await serve(create_instance_app("A", resolve_handler("stream")))
    path = url + "/api/instance/sessions/s-1/messages"
    status, _, body = await _post(session, path, {"text": "abcdefg", "chunks": 3})
    assert status == 200
    events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    data = [orjson.loads(line[6:]) for line in events]
    assert data == [
        {"delta": {"text": "abc"}},
        {"delta": {"text": "de"}},
        {"delta": {"text": "fg"}},
        {"result": {"text": "abcdefg"}, "instance": "A", "seen": 1},
    ]


async def test_stamp_adds_each_deltas_emit_time(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """``"stamp": true``: every delta carries ``t``, the ``time.time()`` it was emitted
    at (in order, within the request's span), so a reader can time each piece; the
    result is unchanged, and without ``stamp`` nothing is added (above)."""
    url = await serve(create_instance_app("A", resolve_handler("stream")))
    before = time.time()
    payload = {"text": "abcdef", "chunks": 3, "delay_ms": 5, "stamp": True}
    status, _, body = await _post(session, url + TASK, payload)
    after = time.time()
    events = [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: ")]
    deltas = [event["delta"] for event in events[:-1]]
    assert status == 200
    assert [d["text"] for d in deltas] == ["ab", "cd", "ef"]
    stamps = [d["t"] for d in deltas]
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= after
    assert stamps[2] - stamps[0] >= 0.005  # two 5 ms delays passed (timers may fire early)
    assert events[-1] == {"result": {"text": "abcdef"}, "instance": "A"}


async def test_pieces_are_due_on_the_streams_own_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Piece ``k`` is due ``k * delay_ms`` after the first whatever each emit took (a
    clock the test moves): due ``delay_ms`` after the previous emit instead, streams whose
    pieces left in the same millisecond timer tick stayed locked together and merged into
    bursts over their length (the bench's streaming relay measured runs of 20 and more)."""
    clock = [100.0]
    due: list[float] = []

    async def sleep_until(deadline: float) -> None:
        due.append(deadline)
        clock[0] = max(clock[0], deadline)

    async def emit(value: Any) -> None:
        clock[0] += 0.007  # a slow write: 7 ms of the 20 between pieces

    monkeypatch.setattr(handlers.anyio, "current_time", lambda: clock[0])
    monkeypatch.setattr(handlers.anyio, "sleep_until", sleep_until)
    payload = {"text": "abcd", "chunks": 4, "delay_ms": 20}
    reply = await handlers.stream(payload, HandlerContext("A", "r", emit=emit))
    assert reply == {"text": "abcd"}
    assert due == pytest.approx([100.02, 100.04, 100.06])


@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_handler_that_does_not_stream_answers_json(
    serve: Serve, session: aiohttp.ClientSession, fast_path: bool
) -> None:
    """``echo`` asked for a stream answers exactly the plain JSON reply."""
    url = await serve(create_instance_app("A", echo, fast_path=fast_path))
    status, headers, body = await _post(session, url + TASK, {"x": 1})
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert orjson.loads(body) == {"result": {"instance": "A", "payload": {"x": 1}}, "instance": "A"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"text": 3}, "text"),
        ("hello", "text"),
        ({"text": "a", "chunks": 0}, "chunks"),
        ({"text": "a", "chunks": True}, "chunks"),
        ({"text": "a", "delay_ms": -1}, "delay_ms"),
        ({"text": "a", "delay_ms": 60_001}, "delay_ms"),
        ({"text": "a", "stamp": 1}, "stamp"),
        ({"text": "a", "stamp": "yes"}, "stamp"),
    ],
)
async def test_a_bad_stream_payload_is_a_400_naming_the_field(
    serve: Serve, session: aiohttp.ClientSession, payload: Any, field: str
) -> None:
    """Refused before any delta: the ordinary JSON error envelope."""
    url = await serve(create_instance_app("A", resolve_handler("stream")))
    status, _, body = await _post(session, url + TASK, payload)
    assert status == 400
    assert orjson.loads(body)["error"]["message"].startswith(f"{field}: ")


async def test_faults_apply_before_the_stream(serve: Serve, session: aiohttp.ClientSession) -> None:
    """An injected failure answers its JSON error (and Retry-After), not a stream."""
    faults = FaultConfig(fail_rate=1, fail_status=503, retry_after=2)
    url = await serve(create_instance_app("A", resolve_handler("stream"), faults=faults))
    status, headers, body = await _post(session, url + TASK, {"text": "a b"})
    assert (status, headers["Retry-After"]) == (503, "2")
    assert orjson.loads(body)["error"]["code"] == "injected_fault"


async def test_a_stream_past_its_deadline_ends_with_an_error_event(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """X-Deadline-Ms still applies: the handler is stopped and the stream ends with the
    504 the JSON reply would have been."""
    url = await serve(create_instance_app("A", resolve_handler("stream")))
    payload = {"text": "a b c d e f g h", "delay_ms": 100}
    status, _, body = await _post(session, url + TASK, payload, **{"X-Deadline-Ms": "150"})
    assert status == 200
    assert body.startswith(b'event: delta\ndata: {"delta":{"text":"a "}}\n\n')
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last == (
        b'event: error\ndata: {"error":{"code":"deadline_exceeded",'
        b'"message":"the handler ran past X-Deadline-Ms"},"status":504}'
    )


async def not_json_delta(payload: Any, context: HandlerContext) -> Any:
    """Emits a good delta, then one orjson cannot encode."""
    assert context.emit is not None
    await context.emit(1)
    await context.emit({1j})
    return None


async def test_a_delta_that_is_not_json_ends_the_stream_with_a_500(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """The handler's bug, reported as the JSON reply would report it."""
    url = await serve(create_instance_app("A", not_json_delta))
    status, _, body = await _post(session, url + TASK, None)
    events = body.rstrip(b"\n").split(b"\n\n")
    assert status == 200
    assert events[0] == b'event: delta\ndata: {"delta":1}'
    error = orjson.loads(events[1].removeprefix(b"event: error\ndata: "))
    assert (error["status"], error["error"]["code"]) == (500, "handler_error")


async def test_cancel_answers_whether_a_task_was_in_flight(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """Unknown ids are not an error; the route needs the token like a task does."""
    url = await serve(create_instance_app("A", echo, token=TOKEN))
    cancel = url + "/api/instance/tasks/nobody/cancel"
    async with session.post(cancel) as resp:
        assert resp.status == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with session.post(cancel, headers=auth) as resp:
        assert (resp.status, await resp.json()) == (200, {"cancelled": False})
    assert (await _health(session, url))["cancelled"] == 0


async def test_a_cancelled_session_message_leaves_the_session_unchanged(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """A cancelled message answers ``409 cancelled`` (to whoever still listens), is counted
    by the health check, and is no part of the conversation."""
    url = await serve(create_instance_app("A", resolve_handler("stream")))
    path = url + "/api/instance/sessions/s-1/messages"
    slow = {"text": "a b", "delay_ms": 30_000}
    message = asyncio.create_task(_post(session, path, slow, **{"X-Request-ID": "m-1"}))
    for _ in range(500):
        if (await _health(session, url))["inflight"]:
            break
        await asyncio.sleep(0.01)
    async with session.post(url + "/api/instance/tasks/m-1/cancel") as resp:
        assert await resp.json() == {"cancelled": True}
    status, _, body = await message
    events = body.rstrip(b"\n").split(b"\n\n")
    assert (status, events[0]) == (200, b'event: delta\ndata: {"delta":{"text":"a "}}')
    error = orjson.loads(events[1].removeprefix(b"event: error\ndata: "))
    assert (error["status"], error["error"]["code"]) == (409, "cancelled")
    assert (await _health(session, url))["cancelled"] == 1
    async with session.get(url + "/api/instance/sessions/s-1") as resp:
        assert (await resp.json())["seen"] == 0


async def test_instance_serve_with_the_stream_handler() -> None:
    """The documented command: ``instance serve --handler stream``; a streamed task, and a
    plain one cancelled by its request id, counted by the health check."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "openclaw"), "orchestrator", "instance", "serve", "--name", "A", "--port", "0",
        "--handler", "stream",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        found = LISTENING.fullmatch((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
        assert found
        url = found[1]
        async with aiohttp.ClientSession() as session:
            status, _, body = await _post(session, url + TASK, {"text": "one two"})
            assert (status, body.count(b"event: delta\n"), body.count(b"event: result\n")) == (
                200, 2, 1,
            )  # fmt: skip
            slow = {"text": "a b", "delay_ms": 30_000}
            body = orjson.dumps({"payload": slow})
            headers = {"X-Request-ID": "job-1"}
            task = asyncio.create_task(session.post(url + TASK, data=body, headers=headers))
            for _ in range(500):
                if (await _health(session, url))["inflight"]:
                    break
                await asyncio.sleep(0.01)
            async with session.post(url + "/api/instance/tasks/job-1/cancel") as resp:
                assert await resp.json() == {"cancelled": True}
            async with await task as resp:
                assert resp.status == 409
                assert (await resp.json())["error"]["code"] == "cancelled"
            assert (await _health(session, url))["cancelled"] == 1
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
