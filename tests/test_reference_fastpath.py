"""The reference instance's fast task path answers exactly as its Starlette routes would.

``InstanceApp`` serves the ordinary ``POST /api/instance/task`` before Starlette runs. Each
test sends the same request to the app and to the same app with the fast path bypassed
(Starlette's own ``__call__``), and compares what comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from openclaw_orchestrator.reference import FaultConfig, HandlerContext, create_instance_app
from openclaw_orchestrator.reference.app import InstanceApp
from openclaw_orchestrator.reference.handlers import echo

Serve = Callable[[Any], Awaitable[str]]
TASK = "/api/instance/task"
COMPARED_HEADERS = ("Content-Type", "Retry-After", "WWW-Authenticate")


def _framework_only(app: InstanceApp) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """``app`` with its fast path bypassed: every request goes through Starlette."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        await Starlette.__call__(app, scope, receive, send)

    return call


async def _both(
    serve: Serve, session: aiohttp.ClientSession, app: InstanceApp, **request: Any
) -> list[tuple[int, Any, dict[str, str]]]:
    urls = [await serve(app), await serve(_framework_only(app))]
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
    app = create_instance_app("A", handler, token=token, faults=faults)
    assert isinstance(app, InstanceApp)
    headers = {**request_kwargs.pop("headers", {}), "X-Request-ID": "rid-1"}
    fast, full = await _both(serve, session, app, headers=headers, **request_kwargs)
    assert fast == full
    assert fast[0] == status
    assert fast[2]["X-Request-ID"] == "rid-1"


async def test_ordinary_task_never_reaches_starlette(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Starlette's own entry broken, the ordinary task still works; other paths don't."""
    app = create_instance_app("A", echo)
    url = await serve(app)

    async def broken(self: Starlette, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raise RuntimeError("the framework was called")
        await original(self, scope, receive, send)

    original = Starlette.__call__
    monkeypatch.setattr(Starlette, "__call__", broken)
    async with session.post(url + TASK, json={"payload": 7}) as resp:
        assert resp.status == 200
        assert (await resp.json())["result"]["payload"] == 7
    async with session.get(url + "/api/health/check") as resp:
        assert resp.status == 500  # went to the (broken) framework


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
