"""The reference instance's fast task path answers exactly as its Starlette routes would.

``TaskFastPath`` serves the ordinary ``POST /api/instance/task`` before Starlette's layers.
Each test sends the same request to the app and to the same app built without the fast path
(``create_instance_app(..., fast_path=False)``), and compares what comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from openclaw_orchestrator.devtools.reference import (
    FaultConfig,
    HandlerContext,
    create_instance_app,
)
from openclaw_orchestrator.devtools.reference.app import InstanceApp
from openclaw_orchestrator.devtools.reference.handlers import echo

Serve = Callable[[Any], Awaitable[str]]
TASK = "/api/instance/task"
COMPARED_HEADERS = ("Content-Type", "Retry-After", "WWW-Authenticate")


async def _both(
    serve: Serve,
    session: aiohttp.ClientSession,
    make: Callable[[bool], InstanceApp],
    **request: Any,
) -> list[tuple[int, Any, dict[str, str]]]:
    urls = [await serve(make(True)), await serve(make(False))]
    replies = []
    for url in urls:
        async with session.post(url + TASK, **request) as resp:
            headers = {
                h: resp.headers[h] for h in (*COMPARED_HEADERS, "X-Request-ID") if h in resp.headers
            }
            replies.append((resp.status, orjson.loads(await resp.read()), headers))
    return replies


async def slow(payload: Any, context: HandlerContext) -> Any:
    """Sleeps past any short deadline."""
    await asyncio.sleep(5)
    return payload


async def unserializable(payload: Any) -> Any:
    """A result orjson cannot encode."""
    return {1j}


@pytest.mark.parametrize(
    ("handler", "faults", "token", "request_kwargs", "status"),
    [
        (echo, None, None, {"json": {"payload": {"n": 1}}}, 200),
        (
            echo,
            None,
            "t0k",
            {"json": {"payload": 1}, "headers": {"Authorization": "Bearer t0k"}},
            200,
        ),
        (
            echo,
            None,
            "t0k",
            {"json": {"payload": 1}, "headers": {"Authorization": "Bearer no"}},
            401,
        ),
        (
            echo,
            FaultConfig(fail_rate=1.0, fail_status=503, retry_after=2.0),
            None,
            {"json": {"payload": 1}},
            503,
        ),
        (slow, None, None, {"json": {"payload": 1}, "headers": {"X-Deadline-Ms": "20"}}, 504),
        (unserializable, None, None, {"json": {"payload": 1}}, 500),
        (
            echo,
            None,
            None,
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        (echo, None, None, {"json": {"nopayload": 1}}, 400),
        (echo, None, None, {"json": {"payload": 1}, "headers": {"X-Deadline-Ms": "soon"}}, 400),
    ],
)
async def test_fast_and_framework_paths_agree(
    serve: Serve,
    session: aiohttp.ClientSession,
    handler: Any,
    faults: FaultConfig | None,
    token: str | None,
    request_kwargs: dict[str, Any],
    status: int,
) -> None:
    """Status, body, content type, Retry-After, WWW-Authenticate and request id: equal."""

    def make(fast_path: bool) -> InstanceApp:
        return create_instance_app("A", handler, token=token, faults=faults, fast_path=fast_path)

    headers = {**request_kwargs.pop("headers", {}), "X-Request-ID": "rid-1"}
    fast, full = await _both(serve, session, make, headers=headers, **request_kwargs)
    assert fast == full
    assert fast[0] == status
    assert fast[2]["X-Request-ID"] == "rid-1"


async def test_ordinary_task_never_reaches_starlette(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Starlette's router broken, the ordinary task still works; other paths don't."""
    app = create_instance_app("A", echo)
    url = await serve(app)

    async def broken(self: Router, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raise RuntimeError("the framework was called")
        await original(self, scope, receive, send)

    original = Router.__call__
    monkeypatch.setattr(Router, "__call__", broken)
    async with session.post(url + TASK, json={"payload": 7}) as resp:
        assert resp.status == 200
        assert (await resp.json())["result"]["payload"] == 7
    async with session.get(url + "/api/health/check") as resp:
        assert resp.status == 500  # went to the (broken) framework


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "framework_only"])
async def test_middleware_added_later_sees_the_task(
    serve: Serve, session: aiohttp.ClientSession, fast_path: bool
) -> None:
    """A middleware added to the app after it is built sees the task the fast path serves."""
    app = create_instance_app("A", echo, fast_path=fast_path)
    seen: list[str] = []
    app.add_middleware(_Recorder, seen=seen)
    url = await serve(app)
    async with session.post(url + TASK, json={"payload": 1}) as resp:
        assert resp.status == 200
    assert seen == [TASK]
    assert app.has_fast_path is fast_path


class _Recorder:
    """Middleware that notes the path of every HTTP request it sees."""

    def __init__(self, app: ASGIApp, *, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


async def test_a_generated_request_id_is_hex(serve: Serve, session: aiohttp.ClientSession) -> None:
    """Without X-Request-ID the fast path makes one up and returns it."""
    url = await serve(create_instance_app("A", echo))
    async with session.post(url + TASK, json={"payload": 1}) as resp:
        assert resp.status == 200
        assert len(resp.headers["X-Request-ID"]) == 32
        int(resp.headers["X-Request-ID"], 16)


async def test_a_body_over_the_limit_in_one_piece_is_413() -> None:
    """No Content-Length, and the whole (valid) body in one message: still over the limit."""
    app = create_instance_app("A", echo, max_body_bytes=100)
    body = orjson.dumps({"payload": "x" * 200})
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": TASK,
        "root_path": "",
        "headers": [(b"transfer-encoding", b"chunked")],
        "query_string": b"",
        "app": app,
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"
