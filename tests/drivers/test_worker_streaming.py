"""WorkerDriver's streamed replies and cancel (instance protocol v1.3) against real reference
instances over real sockets, on both transports (``driver``/``transport`` fixtures)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from openclaw_orchestrator.devtools.reference import (
    FaultConfig,
    HandlerContext,
    HandlerError,
    create_instance_app,
    resolve_handler,
)
from openclaw_orchestrator.devtools.reference.handlers import echo
from openclaw_orchestrator.errors import (
    InstanceError,
    InstanceProtocolError,
    InstanceRejectedError,
    ReplyTooLargeError,
    TimeoutExceededError,
)
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.drivers import WorkerDriver
from openclaw_orchestrator.server.drivers.base import Fence
from openclaw_orchestrator.server.drivers.instance_transport import TransportKind

Serve = Callable[[Any], Awaitable[str]]
TOKEN = "s3cret-token"
TEXT = "the quick brown fox jumps"
WORDS = [{"text": w} for w in ("the ", "quick ", "brown ", "fox ", "jumps")]
SLOW = {"text": "never finished", "delay_ms": 30_000}
"""A ``stream`` payload that runs far longer than any test: only a cancel ends it."""


def spec(url: str, name: str = "A", **kwargs: Any) -> InstanceSpec:
    """An InstanceSpec for a served instance."""
    return InstanceSpec(name=name, url=url, **kwargs)


class Recorder:
    """An ``on_delta`` that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.deltas: list[Any] = []
        self.first = asyncio.Event()

    async def __call__(self, delta: Any) -> None:
        self.deltas.append(delta)
        self.first.set()


async def _stream_app(serve: Serve, **kwargs: Any) -> InstanceSpec:
    """A reference instance running the built-in ``stream`` handler."""
    return spec(await serve(create_instance_app("A", resolve_handler("stream"), **kwargs)))


async def test_deltas_arrive_in_order_then_the_same_result(
    serve: Serve, driver: WorkerDriver
) -> None:
    """Every word is a delta, in order, and the result is the unstreamed one."""
    instance = await _stream_app(serve)
    payload = {"text": TEXT}
    record = Recorder()
    streamed = await driver.invoke(
        instance, payload, timeout=5.0, request_id="r-1", on_delta=record
    )
    plain = await driver.invoke(instance, payload, timeout=5.0, request_id="r-2")
    assert record.deltas == WORDS
    assert streamed == plain == {"text": TEXT}


async def test_deltas_are_awaited_before_the_result(serve: Serve, driver: WorkerDriver) -> None:
    """A slow consumer holds the stream back (backpressure): each delta is handled before the
    next, and all of them before the call returns."""
    instance = await _stream_app(serve)
    seen: list[str] = []

    async def slow_consumer(delta: Any) -> None:
        await asyncio.sleep(0.01)
        seen.append(delta["text"])

    result = await driver.invoke(
        instance, {"text": TEXT, "chunks": 4}, timeout=5.0, request_id="r", on_delta=slow_consumer
    )
    assert len(seen) == 4
    assert "".join(seen) == result["text"] == TEXT


async def test_a_non_streaming_instance_gives_no_delta(serve: Serve, driver: WorkerDriver) -> None:
    """``echo`` never emits: the same JSON reply as without streaming, and no delta."""
    instance = spec(await serve(create_instance_app("A", echo)))
    record = Recorder()
    result = await driver.invoke(instance, [1, 2], timeout=5.0, request_id="r", on_delta=record)
    assert result == {"instance": "A", "payload": [1, 2]}
    assert record.deltas == []


async def fails_midway(payload: Any, context: HandlerContext) -> Any:
    """Emits one delta, then fails with the payload's status."""
    assert context.emit is not None
    await context.emit({"text": "partial"})
    raise HandlerError(payload, "upstream_broke", "it broke midway", retry_after=3)


@pytest.mark.parametrize(
    ("status", "error"), [(503, InstanceError), (502, InstanceError), (422, InstanceRejectedError)]
)
async def test_an_error_event_maps_like_an_error_reply(
    serve: Serve, driver: WorkerDriver, status: int, error: type[InstanceError]
) -> None:
    """An ``error`` event after a delta fails the call as a reply of its status would."""
    instance = spec(await serve(create_instance_app("A", fails_midway)))
    record = Recorder()
    with pytest.raises(error) as caught:
        await driver.invoke(instance, status, timeout=5.0, request_id="r", on_delta=record)
    assert record.deltas == [{"text": "partial"}]
    assert type(caught.value) is error
    assert caught.value.upstream_status == status
    assert caught.value.message == "A: it broke midway"
    assert caught.value.details == {"upstream_code": "upstream_broke"}


async def test_an_error_before_the_stream_is_a_json_reply(
    serve: Serve, driver: WorkerDriver
) -> None:
    """A fault before any delta answers the ordinary JSON error, Retry-After included."""
    faults = FaultConfig(fail_rate=1, fail_status=429, retry_after=2)
    instance = await _stream_app(serve, faults=faults)
    record = Recorder()
    with pytest.raises(InstanceError) as caught:
        await driver.invoke(instance, {"text": TEXT}, timeout=5.0, request_id="r", on_delta=record)
    assert (caught.value.upstream_status, caught.value.retry_after) == (429, 2.0)
    assert record.deltas == []


async def test_a_streamed_task_past_its_deadline_times_out(
    serve: Serve, driver: WorkerDriver
) -> None:
    """The call's timeout bounds the whole stream, deltas and all."""
    instance = await _stream_app(serve)
    record = Recorder()
    with pytest.raises(TimeoutExceededError):
        await driver.invoke(
            instance, {"text": "a b c d", "delay_ms": 400}, timeout=0.3, request_id="r",
            on_delta=record,
        )  # fmt: skip
    assert record.deltas == [{"text": "a "}]


def raw_stream_app(body: bytes, content_type: str = "text/event-stream") -> Starlette:
    """An instance whose every task answers 200 with ``body`` as it is."""

    async def task(request: Request) -> Response:
        await request.body()
        return StreamingResponse(iter([body]), media_type=content_type)

    return Starlette(routes=[Route("/api/instance/task", task, methods=["POST"])])


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'event: delta\ndata: {"delta": 1}\n\n', "without a result or error"),
        (b'event: delta\ndata: {"delta": 1}\n\nevent: result\ndata: {"res', "without a result"),
        (b"event: delta\ndata: [1]\n\n", "data is not a JSON object"),
        (b'event: delta\ndata: {"d": 1}\n\n', "no 'delta' field"),
        (b'event: error\ndata: {"error": {}, "status": 200}\n\n', "no 'status' from 400"),
        (b'event: error\ndata: {"error": {}}\n\n', "no 'status' from 400"),
        (b"", "without a result or error"),
    ],
)
async def test_a_broken_stream_is_a_protocol_error(
    serve: Serve, driver: WorkerDriver, body: bytes, problem: str
) -> None:
    """A stream that ends without a final event, or whose events are not the protocol's."""
    instance = spec(await serve(raw_stream_app(body)))
    with pytest.raises(InstanceProtocolError, match=problem):
        await driver.invoke(instance, 1, timeout=5.0, request_id="r", on_delta=Recorder())


async def test_a_result_event_without_result_is_a_protocol_error(
    serve: Serve, driver: WorkerDriver
) -> None:
    """The result event's data is checked as the JSON reply's body is."""
    body = b'event: result\ndata: {"instance": "A"}\n\n'
    instance = spec(await serve(raw_stream_app(body)))
    with pytest.raises(InstanceProtocolError, match="no 'result' field"):
        await driver.invoke(instance, 1, timeout=5.0, request_id="r", on_delta=Recorder())


async def test_unknown_events_and_comments_are_skipped(serve: Serve, driver: WorkerDriver) -> None:
    """Later versions may add events; comments and CRLF framing are the SSE standard's."""
    body = (
        b": keep-alive\r\nevent: progress\r\ndata: 50\r\n\r\n"
        b'event: delta\r\ndata: {"delta":\r\ndata: "two lines"}\r\n\r\n'
        b'event: result\r\ndata: {"result": 7, "instance": "A"}\r\n\r\n'
    )
    instance = spec(await serve(raw_stream_app(body)))
    record = Recorder()
    result = await driver.invoke(instance, 1, timeout=5.0, request_id="r", on_delta=record)
    assert (result, record.deltas) == (7, ["two lines"])


async def test_a_stream_over_the_byte_limit_is_too_large(
    serve: Serve, driver: WorkerDriver
) -> None:
    """Deltas count towards ``max_reply_bytes`` too: the call stops past the limit."""
    url = await serve(create_instance_app("A", resolve_handler("stream")))
    instance = spec(url, max_reply_bytes=4096)
    record = Recorder()
    with pytest.raises(ReplyTooLargeError):
        await driver.invoke(
            instance, {"text": "x" * 20_000, "chunks": 20, "delay_ms": 20},
            timeout=5.0, request_id="r", on_delta=record,
        )  # fmt: skip
    assert 0 < len(record.deltas) < 20


async def test_a_failing_consumer_fails_the_call_with_its_own_error(
    serve: Serve, driver: WorkerDriver
) -> None:
    """An ``on_delta`` that raises is the caller's failure, raised as it is (not blamed on
    the instance), and the instance is told to stop."""
    app = create_instance_app("A", resolve_handler("stream"))
    instance = spec(await serve(app))

    async def broken(delta: Any) -> None:
        raise ConnectionResetError("the caller's client left")

    with pytest.raises(ConnectionResetError, match="client left"):
        await driver.invoke(instance, SLOW, timeout=5.0, request_id="gone", on_delta=broken)
    await driver.aclose()  # waits for the cancel call
    assert app.state.instance.running.cancelled == 1


async def test_session_messages_stream(serve: Serve, driver: WorkerDriver) -> None:
    """A session message streams like a task and still counts; the redelivery of the last
    seq (v1.2) is answered from memory as plain JSON: no delta, the same result."""
    instance = await _stream_app(serve, token=TOKEN)
    instance = instance.model_copy(update={"credentials": SecretStr(TOKEN)})
    first, again = Recorder(), Recorder()
    fence = Fence(epoch=1, seq=1)
    result = await driver.session_send(
        instance, "s-1", {"text": TEXT}, timeout=5.0, request_id="m-1", fence=fence,
        on_delta=first,
    )  # fmt: skip
    replayed = await driver.session_send(
        instance, "s-1", {"text": TEXT}, timeout=5.0, request_id="m-1", fence=fence,
        on_delta=again,
    )  # fmt: skip
    assert first.deltas == WORDS
    assert again.deltas == []
    assert result == replayed == {"text": TEXT}


async def _health(session: aiohttp.ClientSession, instance: InstanceSpec) -> dict[str, Any]:
    async with session.get(f"{instance.url}/api/health/check") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def _until_running(session: aiohttp.ClientSession, instance: InstanceSpec) -> None:
    """Wait until the instance runs one task (its health check's ``inflight``)."""
    for _ in range(500):
        if (await _health(session, instance))["inflight"] == 1:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the task never started")


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("op", ["invoke", "session_send"])
async def test_cancelling_the_caller_cancels_the_instance_task(
    serve: Serve,
    session: aiohttp.ClientSession,
    transport: TransportKind,
    streamed: bool,
    op: str,
) -> None:
    """Cancelling the awaiting task ends the call at once (the CancelledError is not held
    back), and the instance is told: its task is cancelled, as its health check counts, by
    the time the driver is closed (aclose waits for cancel calls in flight)."""
    instance = await _stream_app(serve, token=TOKEN)
    instance = instance.model_copy(update={"credentials": SecretStr(TOKEN)})
    driver = WorkerDriver(session, transport=transport)
    record = Recorder()
    on_delta = record if streamed else None
    if op == "invoke":
        call = driver.invoke(instance, SLOW, timeout=60.0, request_id="job-7", on_delta=on_delta)
    else:
        call = driver.session_send(
            instance, "s-9", SLOW, timeout=60.0, request_id="job-7", on_delta=on_delta
        )
    task = asyncio.create_task(call)
    if streamed:
        await asyncio.wait_for(record.first.wait(), 10)
    else:
        await _until_running(session, instance)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if transport == "lean":  # the abandoned connection is closed, not pooled
        assert "[0 busy, 0 idle connections" in repr(driver._transport)
    await driver.aclose()
    health = await _health(session, instance)
    assert (health["cancelled"], health["inflight"]) == (1, 0)


async def test_a_cancel_the_instance_cannot_take_is_only_logged(
    serve: Serve, session: aiohttp.ClientSession, transport: TransportKind
) -> None:
    """An instance without the cancel route (404) or gone: the caller's cancellation is
    all that happens, and closing the driver does not fail."""

    release = asyncio.Event()

    async def task_route(request: Request) -> Response:
        await release.wait()
        return Response(b"{}")

    app = Starlette(routes=[Route("/api/instance/task", task_route, methods=["POST"])])
    instance = spec(await serve(app))
    driver = WorkerDriver(session, transport=transport)
    task = asyncio.create_task(driver.invoke(instance, 1, timeout=60.0, request_id="r"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await driver.aclose()
    release.set()
