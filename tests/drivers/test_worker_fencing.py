"""Fencing through the drivers (protocol v1.2): WorkerDriver sends ``X-Session-Epoch`` and
``X-Session-Seq`` on both transports, maps the instance's 409s to their own classes and
reports a replayed reply; OpenClawDriver takes a fence it cannot enforce. Every test that
takes ``driver`` runs on the lean transport and on aiohttp (tests/drivers/conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openclaw_orchestrator.devtools.reference import HandlerContext, create_instance_app
from openclaw_orchestrator.domain.backoff import is_retryable
from openclaw_orchestrator.errors import InstanceError, StaleEpochError, StaleSeqError
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.drivers.base import Fence, InstanceDriver, InstanceRequest
from openclaw_orchestrator.server.drivers.instance_transport import (
    TransportKind,
    open_transport,
)
from openclaw_orchestrator.server.drivers.openclaw import OpenClawDriver
from openclaw_orchestrator.server.drivers.worker import WorkerDriver

Serve = Callable[[Any], Awaitable[str]]
FENCE_HEADERS = ("x-session-epoch", "x-session-seq")


class Recorder:
    """An instance that notes each request's method, path, fence headers and user agent
    (aiohttp names itself; the lean client sends none), answering each route's success."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bool]] = []

    async def handle(self, request: Request) -> Response:
        fence = {k: v for k, v in request.headers.items() if k in FENCE_HEADERS}
        lean = "user-agent" not in request.headers
        self.seen.append((request.method, request.url.path, fence, lean))
        body = orjson.loads(await request.body() or b"null")
        if request.method == "POST":
            reply: Any = {"result": 1, "instance": "R", "seen": 1}
        elif request.method == "PUT":
            reply = {"session_id": "s", "staged": body.get("offset", 0) + len(body["history"])}
            reply |= {} if body.get("final") is False else {"seen": 2}
        else:
            reply = {"closed": "s"}
        return Response(orjson.dumps(reply), media_type="application/json")

    def app(self) -> Starlette:
        path = "/api/instance/sessions/{rest:path}"
        methods = ["POST", "PUT", "DELETE"]
        return Starlette(routes=[Route(path, self.handle, methods=methods)])


class Counting:
    """A session handler that counts its runs."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, payload: Any, context: HandlerContext) -> Any:
        self.runs += 1
        return {"payload": payload, "run": self.runs}


def _spec(url: str) -> InstanceSpec:
    return InstanceSpec(name="A", url=url)


async def test_fence_headers_go_out_on_every_session_call(
    serve: Serve, session: aiohttp.ClientSession, transport: TransportKind
) -> None:
    """A fenced send, paged restore (every page) and close carry the epoch, send and restore
    the seq; the send takes the lean path on the lean transport; unfenced calls carry none."""
    recorder = Recorder()
    spec = _spec(await serve(recorder.app()))
    pairs = [("p" * 40, "r" * 40)] * 3
    async with WorkerDriver(session, transport=transport, restore_page_bytes=100) as driver:
        await driver.session_send(spec, "s", 1, timeout=5, request_id="r", fence=Fence(7, 3))
        await driver.session_restore(spec, "s", pairs, timeout=5, request_id="r", fence=Fence(8, 2))
        await driver.session_close(spec, "s", timeout=5, fence=Fence(9))
        await driver.session_send(spec, "s", 1, timeout=5, request_id="r")
        await driver.session_close(spec, "s", timeout=5)
    fences = [(method, fence) for method, _, fence, _ in recorder.seen]
    epoch_seq = {"x-session-epoch": "8", "x-session-seq": "2"}
    assert fences == [
        ("POST", {"x-session-epoch": "7", "x-session-seq": "3"}),
        *[("PUT", epoch_seq)] * 3,
        ("DELETE", {"x-session-epoch": "9"}),
        ("POST", {}),
        ("DELETE", {}),
    ]
    assert recorder.seen[0][3] is (transport == "lean")


async def test_stale_epoch_and_seq_map_to_their_classes(serve: Serve, driver: WorkerDriver) -> None:
    """The reference instance's 409 stale_epoch and stale_seq arrive as StaleEpochError and
    StaleSeqError, naming the instance, 409 upstream, never retried."""
    spec = _spec(await serve(create_instance_app("A", Counting())))
    await driver.session_send(spec, "s", 1, timeout=5, request_id="r", fence=Fence(5, 2))
    with pytest.raises(StaleEpochError, match="epoch 4 < 5") as epoch:
        await driver.session_send(spec, "s", 1, timeout=5, request_id="r", fence=Fence(4, 3))
    with pytest.raises(StaleSeqError) as seq:
        await driver.session_send(spec, "s", 1, timeout=5, request_id="r", fence=Fence(5, 1))
    with pytest.raises(StaleEpochError):
        await driver.session_restore(spec, "s", [], timeout=5, request_id="r", fence=Fence(4))
    with pytest.raises(StaleEpochError):
        await driver.session_close(spec, "s", timeout=5, fence=Fence(4))
    for exc in (epoch.value, seq.value):
        assert isinstance(exc, InstanceError)
        assert not is_retryable(exc)
        assert (exc.instance, exc.status, exc.upstream_status) == ("A", 409, 409)
        assert exc.message.startswith("A: session s:")


async def test_a_redelivered_message_returns_the_first_result(
    serve: Serve, driver: WorkerDriver
) -> None:
    """The same seq again, under the next epoch, returns the first delivery's result and the
    handler runs once."""
    handler = Counting()
    spec = _spec(await serve(create_instance_app("A", handler)))
    first = await driver.session_send(spec, "s", "x", timeout=5, request_id="r", fence=Fence(1, 1))
    again = await driver.session_send(spec, "s", "x", timeout=5, request_id="r", fence=Fence(2, 1))
    assert (again, handler.runs) == (first, 1)


@pytest.mark.parametrize("kind", ["lean", "aiohttp"])
async def test_the_transports_report_a_replayed_reply(
    serve: Serve, session: aiohttp.ClientSession, kind: TransportKind
) -> None:
    """``Reply.replayed`` is true for the reply of a redelivered seq, false for the first."""
    spec = _spec(await serve(create_instance_app("A", Counting())))
    path = "/api/instance/sessions/s/messages"
    transport = open_transport(kind, session)
    try:
        replies = [
            await transport.exchange(
                InstanceRequest("POST", spec, path, b'{"payload":1}', 5, "r", 10_000, True, fence)
            )
            for fence in (Fence(1, 1), Fence(1, 1))
        ]
    finally:
        await transport.aclose()
    assert [(r.status, r.replayed) for r in replies] == [(200, False), (200, True)]
    assert replies[0].body == replies[1].body


async def test_the_openclaw_driver_accepts_a_fence_and_sends_nothing_of_it(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """Gateways have no fencing: the OpenClaw driver's session calls take a fence, work as
    without one, and send no fence header."""
    headers: list[dict[str, str]] = []

    async def gateway(request: Request) -> Response:
        headers.append(dict(request.headers))
        if request.url.path == "/tools/invoke":
            reply: Any = {"ok": True, "result": {"details": {"sessions": []}}}
        else:
            message = {"role": "assistant", "content": "hi"}
            reply = {"model": "openclaw", "choices": [{"index": 0, "message": message}]}
        return Response(orjson.dumps(reply), media_type="application/json")

    app = Starlette(
        routes=[
            Route(p, gateway, methods=["POST"]) for p in ("/tools/invoke", "/v1/chat/completions")
        ]
    )
    spec = InstanceSpec(name="G", url=await serve(app), driver="openclaw")
    async with OpenClawDriver(session) as openclaw:
        driver: InstanceDriver = openclaw  # the protocol, fence included
        fence = Fence(3, 1)
        reply = await driver.session_send(
            spec, "s", "hello", timeout=5, request_id="r", fence=fence
        )
        await driver.session_restore(
            spec, "s", [("a", "b")], timeout=5, request_id="r", fence=fence
        )
        await driver.session_close(spec, "s", timeout=5, fence=fence)
    assert reply["text"] == "hi"
    assert len(headers) == 4  # a turn; a list and a turn for the restore; a list to close
    assert not any(h.keys() & set(FENCE_HEADERS) for h in headers)
