"""The hot endpoints' fast path answers exactly as the FastAPI routes behind it would.

``FastPaths`` sits in front of the framework's layers (the middleware added before it
included), so what they give every request — an id, the body limit, the error envelope — it
must give too. Each test compares a request the fast path serves with one the full app
serves (an ``Idempotency-Key`` sends a route through FastAPI; the first such request answers
like a plain one). Like the whole API suite, they run with the fast paths and without.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from starlette.datastructures import State
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from openclaw_orchestrator.server.api.fastpath import FastPaths
from openclaw_orchestrator.server.api.security import Authenticator
from openclaw_orchestrator.server.core.orchestrator import Orchestrator

from .conftest import Cluster, asgi_post, start_cluster

ROUTE = "/api/orchestrator/route"
FANOUT = "/api/orchestrator/fanout"
SESSIONS = "/api/orchestrator/sessions"


async def _post(
    cluster: Cluster, path: str, body: bytes, **headers: str
) -> tuple[int, dict[str, str], Any]:
    async with cluster.http.post(
        cluster.url + path,
        data=io.BytesIO(body) if len(body) > 65536 else body,
        headers={**cluster.headers, "Content-Type": "application/json", **headers},
    ) as resp:
        return resp.status, dict(resp.headers), orjson.loads(await resp.read())


def _shape(value: Any) -> Any:
    """The structure of a reply with the values that differ per request left out."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k not in {"latency_ms", "total_ms"}}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return value


async def test_route_answers_as_the_framework_route_does(cluster: Cluster) -> None:
    """Same status, content type, body (timings aside) and request-id header either way."""
    body = orjson.dumps({"instances": ["B"], "payload": {"n": 1}})
    fast = await _post(cluster, ROUTE, body, **{"X-Request-ID": "same-id"})
    full = await _post(cluster, ROUTE, body, **{"X-Request-ID": "same-id", "Idempotency-Key": "k1"})
    assert fast[0] == full[0] == 200
    for _, headers, _ in (fast, full):
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Request-ID"] == "same-id"
        assert int(headers["Content-Length"]) > 0
    assert _shape(fast[2]) == _shape(full[2])
    assert fast[2]["result"]["instance"] == "B"


async def test_fresh_request_ids_are_128_bit_hex(cluster: Cluster) -> None:
    """Without a usable X-Request-ID the fast path makes one, and tells the caller."""
    body = orjson.dumps({"instances": ["A"], "payload": {}})
    ids = set()
    for incoming in (None, "bad id with spaces", "x" * 129):
        extra = {} if incoming is None else {"X-Request-ID": incoming}
        status, headers, reply = await _post(cluster, ROUTE, body, **extra)
        assert status == 200
        assert headers["X-Request-ID"] == reply["request_id"]
        assert len(reply["request_id"]) == 32
        int(reply["request_id"], 16)
        ids.add(reply["request_id"])
    assert len(ids) == 3


async def test_errors_keep_the_envelope_and_headers(cluster: Cluster) -> None:
    """An orchestrator error on the fast path: its status, envelope and request id."""
    await cluster.stop_instance("C")
    body = orjson.dumps({"instances": ["C"], "payload": {}, "retry": 0})
    status, headers, reply = await _post(cluster, ROUTE, body, **{"X-Request-ID": "err-1"})
    assert status == 503
    assert reply["error"]["code"] == "instance_down"
    assert headers["X-Request-ID"] == "err-1"
    assert headers["Content-Type"] == "application/json"


async def test_a_bug_is_a_500_envelope_without_details(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception in the service: the generic 500, nothing of the exception."""

    async def broken(self: Orchestrator, request: Any, *, request_id: str) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Orchestrator, "route", broken)
    body = orjson.dumps({"instances": ["A"], "payload": {}})
    status, headers, reply = await _post(cluster, ROUTE, body)
    assert status == 500
    assert reply["error"]["code"] == "internal_error"
    assert "secret" not in orjson.dumps(reply).decode()
    assert "X-Request-ID" in headers


async def test_declared_length_over_the_limit_is_413(cluster: Cluster) -> None:
    """Refused from the header alone, before any byte of the body is read."""
    big = orjson.dumps({"payload": {"blob": "x" * (1024 * 1024)}})
    status, _, reply = await _post(cluster, ROUTE, big)
    assert status == 413
    assert reply["error"]["code"] == "payload_too_large"


async def test_the_ordinary_request_never_reaches_the_framework(cluster: Cluster) -> None:
    """The plain route is served by the fast path; what it cannot vouch for goes on."""
    passed_on: list[Scope] = []

    async def framework(scope: Scope, receive: Receive, send: Send) -> None:
        passed_on.append(scope)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    state = State()
    state.orchestrator = cluster.service
    state.authenticator = Authenticator(SecretStr(cluster.api_key))
    paths = FastPaths(framework, state=state, max_body_bytes=1024)
    auth = {"Authorization": f"Bearer {cluster.api_key}", "Content-Type": "application/json"}
    good = orjson.dumps({"instances": ["A"], "payload": {}})

    sent = await asgi_post(paths, ROUTE, good, **auth)
    assert sent[0]["status"] == 200
    assert not passed_on
    assert orjson.loads(sent[1]["body"])["instance"] == "A"

    for body, headers in [
        (good, {**auth, "Authorization": "Bearer wrong"}),
        (good, {"Content-Type": "application/json"}),
        (good, {**auth, "Content-Type": "text/plain"}),
        (good, {**auth, "Idempotency-Key": "k"}),
        (b"{not json", auth),
        (b'{"instances": ["A"], "surprise": 1}', auth),
        (b"x" * 2048, auth),
        (orjson.dumps({"instances": ["A"], "payload": "x" * 2048}), auth),  # valid, too long
    ]:
        sent = await asgi_post(paths, ROUTE, body, **headers)
        assert sent[0]["status"] == 299
    assert len(passed_on) == 8


def test_forked_processes_make_different_request_ids() -> None:
    """Workers forked after import (gunicorn --preload) must not repeat each other's ids."""
    import os

    from openclaw_orchestrator.server.api.middleware import new_request_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != new_request_id()


class _Recorder:
    """Middleware that notes what it wraps and the method and path of every HTTP request
    it sees."""

    def __init__(self, app: ASGIApp, *, seen: list[str]) -> None:
        self.app = app
        self.seen = seen
        layer: object = app
        while layer is not None:  # what it wraps, however deep (metrics may wrap it too)
            seen.append(f"wraps {type(layer).__name__}")
            layer = getattr(layer, "app", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


async def test_middleware_added_later_sees_the_hot_endpoints(fast_paths: bool) -> None:
    """A middleware added to the built app sees route, fanout and session send, whether
    the fast paths serve them or the FastAPI routes do."""
    seen: list[str] = []
    async with start_cluster("AB", middleware=[Middleware(_Recorder, seen=seen)]) as cluster:
        assert (await cluster.post(ROUTE, {"instances": ["A"], "payload": 1}))[0] == 200
        assert (await cluster.post(FANOUT, {"payload": 1}))[0] == 200
        await cluster.post(f"{SESSIONS}/spawn", {"sessionId": "s1", "instance": "A"})
        assert (await cluster.post(f"{SESSIONS}/s1/send", {"data": 1}))[0] == 200
    hot = [f"POST {ROUTE}", f"POST {FANOUT}", f"POST {SESSIONS}/s1/send"]
    assert [line for line in seen if line in hot] == hot
    assert ("wraps FastPaths" in seen) is fast_paths
