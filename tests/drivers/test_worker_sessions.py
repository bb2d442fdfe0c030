"""WorkerDriver's session calls against real reference instances over real sockets."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openclaw_orchestrator.devtools.reference import (
    FaultConfig,
    HandlerContext,
    create_instance_app,
)
from openclaw_orchestrator.devtools.reference.handlers import echo
from openclaw_orchestrator.errors import (
    InstanceDownError,
    InstanceError,
    InstanceProtocolError,
    InstanceRejectedError,
    InvalidRequestError,
    TimeoutExceededError,
)
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.drivers import WorkerDriver
from openclaw_orchestrator.server.drivers.worker import encode_history

Serve = Callable[[Any], Awaitable[str]]
TOKEN = "s3cret-token"


def spec(url: str, name: str = "A", **kwargs: Any) -> InstanceSpec:
    """An InstanceSpec for a served instance."""
    return InstanceSpec(name=name, url=url, **kwargs)


async def _send(driver: WorkerDriver, instance: InstanceSpec, sid: str, payload: Any) -> Any:
    return await driver.session_send(instance, sid, payload, timeout=5.0, request_id="r-1")


def session_report(payload: Any, context: HandlerContext) -> Any:
    """What the handler saw: the request id, the budget, and the session's history."""
    assert context.session is not None
    return {
        "request_id": context.request_id,
        "time_left": context.time_left(),
        "history": [[e.payload, e.result] for e in context.session.history],
        "seen": context.session.seen,
    }


async def test_session_send_counts_up(serve: Serve, driver: WorkerDriver) -> None:
    """session_send returns the handler's result; echo shows the session counting up."""
    instance = spec(await serve(create_instance_app("A", echo)))
    results = [await _send(driver, instance, "s1", n) for n in (1, 2, 3)]
    assert results == [
        {"instance": "A", "payload": n, "session": {"id": "s1", "seen": n}} for n in (1, 2, 3)
    ]


async def test_session_send_carries_request_id_and_deadline(
    serve: Serve, driver: WorkerDriver
) -> None:
    """The handler sees the caller's request id and a deadline within the timeout."""
    instance = spec(await serve(create_instance_app("A", session_report)))
    result = await driver.session_send(instance, "s", None, timeout=2.0, request_id="abc")
    assert result["request_id"] == "abc"
    assert 0 < result["time_left"] <= 2.0


async def test_restore_round_trip(serve: Serve, driver: WorkerDriver) -> None:
    """session_restore replays pairs; the next send sees them as history and has seen=4."""
    app = create_instance_app("A", session_report)
    instance = spec(await serve(app))
    await _send(driver, instance, "m", "dropped")
    pairs = [("p0", {"r": 0}), ("p1", [1]), (None, None)]
    await driver.session_restore(instance, "m", pairs, timeout=5.0, request_id="r-2")
    result = await _send(driver, instance, "m", "next")
    assert result["history"] == [list(pair) for pair in pairs]
    assert result["seen"] == 3
    stored = app.state.instance.sessions.get("m")
    assert stored.seen == 4


async def test_close_round_trip(serve: Serve, driver: WorkerDriver) -> None:
    """session_close forgets the session (the next send starts at 1); unknown ids are fine."""
    app = create_instance_app("A", echo)
    instance = spec(await serve(app))
    await _send(driver, instance, "c", 1)
    await _send(driver, instance, "c", 2)
    await driver.session_close(instance, "c", timeout=5.0)
    assert "c" not in app.state.instance.sessions
    await driver.session_close(instance, "never-seen", timeout=5.0)
    result = await _send(driver, instance, "c", 3)
    assert result["session"]["seen"] == 1


async def test_session_id_is_url_encoded(serve: Serve, driver: WorkerDriver) -> None:
    """Ids with ':' work, and ids with '/', ' ' or '..' reach the session route as one segment."""
    instance = spec(await serve(create_instance_app("A", echo)))
    assert (await _send(driver, instance, "user:42.chat-1", 0))["session"]["id"] == (
        "user:42.chat-1"
    )
    for sid in ("a/b", "a b", "..", "%2F"):
        with pytest.raises(InstanceRejectedError) as info:
            await _send(driver, instance, sid, 0)
        assert info.value.upstream_status == 400, sid
        assert info.value.message.startswith("A: session_id"), sid
        with pytest.raises(InstanceRejectedError) as info:
            await driver.session_close(instance, sid, timeout=5.0)
        assert info.value.upstream_status == 400, sid


async def test_token_applies_to_session_calls(serve: Serve, driver: WorkerDriver) -> None:
    """With credentials all three calls pass; without, each is a 401 rejection."""
    url = await serve(create_instance_app("A", echo, token=TOKEN))
    good, bad = spec(url, credentials=SecretStr(TOKEN)), spec(url)
    assert (await _send(driver, good, "s", 1))["session"]["seen"] == 1
    await driver.session_restore(good, "s", [(1, 2)], timeout=5.0, request_id="r")
    await driver.session_close(good, "s", timeout=5.0)
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: _send(driver, bad, "s", 1),
        lambda: driver.session_restore(bad, "s", [], timeout=5.0, request_id="r"),
        lambda: driver.session_close(bad, "s", timeout=5.0),
    ]
    for call in calls:
        with pytest.raises(InstanceRejectedError) as info:
            await call()
        assert info.value.upstream_status == 401


async def test_injected_failure_is_instance_error(serve: Serve, driver: WorkerDriver) -> None:
    """fail_rate=1 makes session_send raise InstanceError with the status and Retry-After."""
    faults = FaultConfig(fail_rate=1.0, fail_status=503, retry_after=1.5)
    instance = spec(await serve(create_instance_app("A", echo, faults=faults)))
    with pytest.raises(InstanceError) as info:
        await _send(driver, instance, "s", 1)
    assert type(info.value) is InstanceError
    assert (info.value.upstream_status, info.value.retry_after) == (503, 1.5)


async def test_hang_times_out(serve: Serve, driver: WorkerDriver) -> None:
    """A hanging instance and a short timeout give TimeoutExceededError from session_send."""
    instance = spec(await serve(create_instance_app("A", echo, faults=FaultConfig(hang=True))))
    with pytest.raises(TimeoutExceededError) as info:
        await driver.session_send(instance, "s", 1, timeout=0.2, request_id="r")
    assert info.value.instance == "A"


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


async def test_connection_refused_is_down(driver: WorkerDriver) -> None:
    """A port nobody listens on gives InstanceDownError for send, restore and close."""
    instance = spec(_closed_port_url())
    with pytest.raises(InstanceDownError):
        await _send(driver, instance, "s", 1)
    with pytest.raises(InstanceDownError):
        await driver.session_restore(instance, "s", [(1, 1)], timeout=1.0, request_id="r")
    with pytest.raises(InstanceDownError):
        await driver.session_close(instance, "s", timeout=1.0)


async def _no_result(request: Request) -> Response:
    return Response(b'{"answer": 1}', 200, media_type="application/json")


async def test_reply_without_result_is_protocol_error(serve: Serve, driver: WorkerDriver) -> None:
    """A 2xx session reply without ``result`` is an InstanceProtocolError, as for tasks."""
    route = Route("/api/instance/sessions/{sid}/messages", _no_result, methods=["POST"])
    instance = spec(await serve(Starlette(routes=[route])))
    with pytest.raises(InstanceProtocolError):
        await _send(driver, instance, "s", 1)


def test_unencodable_history_is_invalid_request() -> None:
    """A history orjson cannot encode is the caller's error, named by field."""
    assert encode_history([(1, None)]) == b'{"history":[{"payload":1,"result":null}]}'
    with pytest.raises(InvalidRequestError) as info:
        encode_history([(2**70, None)])
    assert info.value.field == "history"
