"""The reference instance over raw HTTP: envelopes, limits, auth, faults, registration.

Every test that serves an instance runs twice: with the fast task path and with Starlette
alone (``create_instance_app(..., fast_path=False)``).
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openclaw_orchestrator.devtools.reference import (
    FaultConfig,
    HandlerContext,
    HandlerError,
    Registrar,
    Registration,
    create_instance_app,
    registration_lifespan,
    resolve_handler,
    run_instance,
)
from openclaw_orchestrator.devtools.reference.faults import Faults
from openclaw_orchestrator.devtools.reference.handlers import Invoker, echo
from openclaw_orchestrator.devtools.reference.runner import local_url
from openclaw_orchestrator.devtools.reference.search import SearchHandler, Shard
from openclaw_orchestrator.server.hosting import running

Serve = Callable[[Any], Awaitable[str]]
TASK = "/api/instance/task"
HEALTH = "/api/health/check"
FAULTS = "/api/instance/faults"
FAST_PATH = {"fast_path": True, "framework_only": False}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Both sides of the fast task path for every test that serves an instance."""
    if "serve" in metafunc.fixturenames:
        metafunc.parametrize(
            "fast_path", list(FAST_PATH.values()), ids=list(FAST_PATH), indirect=True
        )


@pytest.fixture(autouse=True)
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The side of this test: ``create_instance_app`` here builds apps with it."""
    side: bool = getattr(request, "param", True)
    build = functools.partial(create_instance_app, fast_path=side)
    monkeypatch.setattr(sys.modules[__name__], "create_instance_app", build)
    return side


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, Any]:
    """``(status, parsed JSON body, headers)`` of one request."""
    async with session.request(method, url, **kwargs) as resp:
        return resp.status, orjson.loads(await resp.read()), resp.headers


def _error_code(body: Any) -> str:
    return str(body["error"]["code"])


async def test_request_id_is_echoed(serve: Serve, session: aiohttp.ClientSession) -> None:
    """X-Request-ID comes back as sent, and the task reply has the documented shape."""
    url = await serve(create_instance_app("A", echo))
    headers = {"X-Request-ID": "req-42"}
    status, body, got = await _call(
        session, "POST", url + TASK, json={"payload": 1}, headers=headers
    )
    assert (status, got["X-Request-ID"]) == (200, "req-42")
    assert body == {"result": {"instance": "A", "payload": 1}, "instance": "A"}


async def test_request_id_is_generated(serve: Serve, session: aiohttp.ClientSession) -> None:
    """Without X-Request-ID one is generated (uuid4 hex), even on an error reply."""
    url = await serve(create_instance_app("A", echo))
    status, body, headers = await _call(session, "GET", url + "/missing")
    assert status == 404
    assert _error_code(body) == "not_found"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])


async def test_wrong_method_has_envelope(serve: Serve, session: aiohttp.ClientSession) -> None:
    """A wrong method is a 405 with the error envelope."""
    url = await serve(create_instance_app("A", echo))
    status, body, _ = await _call(session, "GET", url + TASK)
    assert (status, _error_code(body)) == (405, "method_not_allowed")


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "invalid_request", "payload"),
        (b'{"input": 1}', "invalid_request", "payload"),
    ],
)
async def test_bad_bodies_are_400(
    serve: Serve, session: aiohttp.ClientSession, data: bytes, code: str, words: str
) -> None:
    """Bad JSON or a body without ``payload`` is a 400 naming the problem, no traceback."""
    url = await serve(create_instance_app("A", echo))
    status, body, _ = await _call(session, "POST", url + TASK, data=data)
    assert (status, _error_code(body)) == (400, code)
    assert words in body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]


async def test_declared_body_over_limit_is_413(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """A Content-Length over the limit is refused with 413 and the envelope."""
    url = await serve(create_instance_app("A", echo, max_body_bytes=1000))
    data = orjson.dumps({"payload": "x" * 2000})
    status, body, _ = await _call(session, "POST", url + TASK, data=data)
    assert (status, _error_code(body)) == (413, "payload_too_large")


async def test_streamed_body_over_limit_is_413(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """A chunked body (no Content-Length) is cut off at the limit too."""
    url = await serve(create_instance_app("A", echo, max_body_bytes=1000))

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"payload": "'
        for _ in range(4):
            yield b"x" * 500
        yield b'"}'

    status, body, _ = await _call(session, "POST", url + TASK, data=chunks())
    assert (status, _error_code(body)) == (413, "payload_too_large")


async def test_token_guards_tasks_not_health(serve: Serve, session: aiohttp.ClientSession) -> None:
    """With a token, tasks need it (401 + WWW-Authenticate otherwise); health stays open."""
    url = await serve(create_instance_app("A", echo, token="tok"))
    status, body, headers = await _call(session, "POST", url + TASK, json={"payload": 1})
    assert (status, _error_code(body), headers["WWW-Authenticate"]) == (
        401,
        "unauthorized",
        "Bearer",
    )
    good = {"Authorization": "Bearer tok"}
    status, _, _ = await _call(session, "POST", url + TASK, json={"payload": 1}, headers=good)
    assert status == 200
    status, body, _ = await _call(session, "GET", url + HEALTH)
    assert (status, body["status"]) == (200, "healthy")


async def test_bad_deadline_header_is_400(serve: Serve, session: aiohttp.ClientSession) -> None:
    """A non-integer X-Deadline-Ms is a 400 naming the header."""
    url = await serve(create_instance_app("A", echo))
    headers = {"X-Deadline-Ms": "soon"}
    status, body, _ = await _call(session, "POST", url + TASK, json={"payload": 1}, headers=headers)
    assert status == 400
    assert "X-Deadline-Ms" in body["error"]["message"]


async def test_handler_past_deadline_is_abandoned(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """A handler still running after X-Deadline-Ms (+ grace) is cancelled with a 504."""
    cancelled = asyncio.Event()

    async def slow(payload: Any) -> Any:
        try:
            await asyncio.sleep(30)
        finally:
            cancelled.set()

    url = await serve(create_instance_app("A", slow))
    headers = {"X-Deadline-Ms": "10"}
    status, body, _ = await _call(session, "POST", url + TASK, json={"payload": 1}, headers=headers)
    assert (status, _error_code(body)) == (504, "deadline_exceeded")
    assert cancelled.is_set()


async def test_unserializable_result_is_500(serve: Serve, session: aiohttp.ClientSession) -> None:
    """A result that is not JSON is the handler's failure: 500 handler_error."""
    url = await serve(create_instance_app("A", lambda payload: {1, 2}))
    status, body, _ = await _call(session, "POST", url + TASK, json={"payload": 1})
    assert (status, _error_code(body)) == (500, "handler_error")


async def test_health_reports_inflight(serve: Serve, session: aiohttp.ClientSession) -> None:
    """The health reply counts tasks in progress and carries the documented fields."""
    release = asyncio.Event()

    async def gated(payload: Any) -> Any:
        await release.wait()
        return payload

    url = await serve(create_instance_app("B", gated))
    task = asyncio.create_task(_call(session, "POST", url + TASK, json={"payload": 7}))
    for _ in range(200):
        _, body, _ = await _call(session, "GET", url + HEALTH)
        if body["inflight"]:
            break
        await asyncio.sleep(0.005)
    assert body["inflight"] == 1
    assert (body["status"], body["instance"]) == ("healthy", "B")
    assert body["uptime_s"] >= 0
    release.set()
    status, reply, _ = await task
    assert (status, reply["result"]) == (200, 7)


async def test_fault_api_changes_behaviour(serve: Serve, session: aiohttp.ClientSession) -> None:
    """PUT /api/instance/faults makes tasks fail mid-run, GET shows it, and PUT heals it."""
    url = await serve(create_instance_app("A", echo, fault_api=True))
    status, body, _ = await _call(session, "GET", url + FAULTS)
    assert (status, body["fail_rate"], body["fail_status"]) == (200, 0.0, 503)
    change = {"fail_rate": 1, "retry_after": 3, "health_fail": True}
    status, body, _ = await _call(session, "PUT", url + FAULTS, json=change)
    assert (status, body["fail_rate"], body["retry_after"]) == (200, 1, 3)
    status, body, headers = await _call(session, "POST", url + TASK, json={"payload": 1})
    assert (status, _error_code(body), headers["Retry-After"]) == (503, "injected_fault", "3")
    status, body, _ = await _call(session, "GET", url + HEALTH)
    assert (status, body["status"]) == (503, "unhealthy")
    await _call(session, "PUT", url + FAULTS, json={"fail_rate": 0, "health_fail": False})
    status, _, _ = await _call(session, "POST", url + TASK, json={"payload": 1})
    assert status == 200


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"fail_rate": 2}, "fail_rate"),
        ({"fail_status": 200}, "fail_status"),
        ({"latency": -1}, "latency"),
        ({"latency": None}, "latency"),
        ({"seed": 1.5}, "seed"),
        ({"hang": "yes"}, "hang"),
        ({"explode": True}, "explode"),
    ],
)
async def test_fault_api_rejects_bad_fields(
    serve: Serve, session: aiohttp.ClientSession, change: dict[str, Any], field: str
) -> None:
    """An invalid or unknown fault field is a 400 naming it, and changes nothing."""
    url = await serve(create_instance_app("A", echo, fault_api=True))
    status, body, _ = await _call(session, "PUT", url + FAULTS, json=change)
    assert status == 400
    assert body["error"]["message"].startswith(field)
    _, current, _ = await _call(session, "GET", url + FAULTS)
    assert current == FaultConfig().to_dict()


async def test_fault_api_absent_by_default(serve: Serve, session: aiohttp.ClientSession) -> None:
    """Without fault_api the route does not exist."""
    url = await serve(create_instance_app("A", echo))
    status, body, _ = await _call(session, "PUT", url + FAULTS, json={"hang": True})
    assert (status, _error_code(body)) == (404, "not_found")


async def test_fault_api_needs_token(serve: Serve, session: aiohttp.ClientSession) -> None:
    """With a token configured, the fault API is guarded like tasks."""
    url = await serve(create_instance_app("A", echo, token="tok", fault_api=True))
    status, _, _ = await _call(session, "PUT", url + FAULTS, json={"hang": True})
    assert status == 401


def test_seeded_faults_repeat() -> None:
    """The same seed draws the same failures and delays."""
    config = FaultConfig(fail_rate=0.5, latency=0.1, latency_jitter=0.2, seed=7)
    first, second = Faults(config), Faults(config)
    draws = [(first.should_fail(), first.delay()) for _ in range(20)]
    assert draws == [(second.should_fail(), second.delay()) for _ in range(20)]
    assert {fail for fail, _ in draws} == {True, False}
    assert all(0.1 <= delay <= 0.3 for _, delay in draws)


def test_faults_repr_shows_active_knobs() -> None:
    """The repr names only the knobs that differ from the defaults."""
    assert repr(Faults()) == "<Faults none>"
    assert repr(Faults(FaultConfig(hang=True))) == "<Faults hang=True>"


def test_handler_error_needs_error_status() -> None:
    """HandlerError refuses a status that is not 4xx/5xx."""
    with pytest.raises(ValueError, match="4xx or 5xx"):
        HandlerError(200, "ok", "fine")


def test_resolve_builtins_and_functions() -> None:
    """Built-in names and ``module:function`` resolve to callables."""
    assert resolve_handler("echo") is echo
    assert isinstance(resolve_handler("search"), SearchHandler)
    assert resolve_handler("search", shard="2/4").shard == Shard(2, 4)  # type: ignore[attr-defined]
    assert resolve_handler("json:dumps")({"a": 1}) == '{"a": 1}'
    assert resolve_handler("os.path:join")("a", "b").endswith("b")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("nonsense", "expected 'echo', 'search', 'demo' or 'module:function'"),
        ("json:", "expected"),
        ("no_such_module_xyz:run", "cannot import module 'no_such_module_xyz'"),
        ("json:nothing_here", "has no attribute 'nothing_here'"),
        ("json:__doc__", "is not callable"),
    ],
)
def test_resolve_bad_specs(spec: str, words: str) -> None:
    """Bad handler specs raise ValueError with a message a person can act on."""
    with pytest.raises(ValueError, match=re.escape(words)):
        resolve_handler(spec)


def test_shard_only_for_search() -> None:
    """``--shard`` with a handler other than search is refused."""
    with pytest.raises(ValueError, match="search"):
        resolve_handler("echo", shard="0/2")


class _AsyncCallable:
    async def __call__(self, payload: Any) -> Any:
        return payload


def _two(payload: Any, context: HandlerContext) -> Any:
    return payload


@pytest.mark.parametrize(
    ("handler", "is_async", "wants_context"),
    [
        (lambda payload: payload, False, False),
        (_two, False, True),
        (lambda *args: args, False, True),
        (echo, True, True),
        (_AsyncCallable(), True, False),
        (functools.partial(_two, 1), False, False),
        (len, False, False),
    ],
)
def test_invoker_inspects_handler(handler: Any, is_async: bool, wants_context: bool) -> None:
    """The Invoker tells sync from async and one parameter from two, once."""
    invoker = Invoker(handler)
    assert (invoker.is_async, invoker.wants_context) == (is_async, wants_context)


def test_run_instance_rejects_bad_name() -> None:
    """A bad instance name fails before anything is bound."""
    with pytest.raises(ValueError, match="instance name"):
        run_instance(name="bad name!", port=0)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:80"),
        ("0.0.0.0", "http://127.0.0.1:80"),  # noqa: S104  # a string under test, never bound
        ("::1", "http://[::1]:80"),
        ("example.org", "http://example.org:80"),
    ],
)
def test_local_url(host: str, url: str) -> None:
    """The announced URL never uses a wildcard address and brackets IPv6."""
    assert local_url(host, 80) == url


def test_registration_hides_secrets() -> None:
    """The register body carries the instance token as credentials; the repr shows neither."""
    reg = Registration("http://o", "A", "http://a", api_key="key-1", token="tok-1")
    assert reg.body() == {
        "name": "A",
        "url": "http://a",
        "driver": "worker",
        "heartbeat_ttl": 30.0,
        "credentials": "tok-1",
    }
    assert "key-1" not in repr(reg)
    assert "tok-1" not in repr(reg)
    assert "credentials" not in Registration("http://o", "A", "http://a").body()


class _Recorder:
    """A stand-in orchestrator that records register/deregister calls."""

    def __init__(self, *, fail_first: int = 0) -> None:
        self.calls: list[tuple[str, str, Any, str | None]] = []
        self.fail_first = fail_first

    async def register(self, request: Request) -> Response:
        self.calls.append(
            ("POST", request.url.path, await request.json(), request.headers.get("authorization"))
        )
        if len(self.calls) <= self.fail_first:
            return Response(b"not yet", 503)
        return Response(b"{}", 200, media_type="application/json")

    async def deregister(self, request: Request) -> Response:
        self.calls.append(("DELETE", request.url.path, None, request.headers.get("authorization")))
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/cluster/register", self.register, methods=["POST"]),
                Route("/api/cluster/instances/{name}", self.deregister, methods=["DELETE"]),
            ]
        )


async def test_registration_heartbeats_and_deregisters(serve: Serve) -> None:
    """The lifespan registers, re-POSTs every ttl/3 through a failure, and deletes at shutdown."""
    recorder = _Recorder(fail_first=1)
    orchestrator = await serve(recorder.app())
    reg = Registration(orchestrator, "A", "http://127.0.0.1:9", api_key="key", heartbeat_ttl=0.3)
    async with running(create_instance_app("A", echo, lifespan=registration_lifespan(reg))):
        for _ in range(100):
            if len(recorder.calls) >= 3:
                break
            await asyncio.sleep(0.02)
    posts = [c for c in recorder.calls if c[0] == "POST"]
    assert len(posts) >= 3
    assert all(c[1:] == ("/api/cluster/register", reg.body(), "Bearer key") for c in posts)
    assert recorder.calls[-1] == ("DELETE", "/api/cluster/instances/A", None, "Bearer key")


async def test_registrar_survives_missing_orchestrator() -> None:
    """With nobody listening, registering fails quietly and shutdown still completes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    reg = Registration(f"http://127.0.0.1:{port}", "A", "http://a", heartbeat_ttl=0.15)
    async with Registrar(reg) as registrar:
        await asyncio.sleep(0.12)
        assert "beating" in repr(registrar)
    assert registrar.failures >= 2
    assert registrar.beats == 0
    assert "idle" in repr(registrar)


async def test_demo_handler_searches_or_echoes() -> None:
    """The demo handler searches when the payload has a query and echoes otherwise."""
    from openclaw_orchestrator.devtools.reference.handlers import HandlerContext

    demo = resolve_handler("demo")
    ctx = HandlerContext(instance="A", request_id="r")
    assert await demo({"data": "task"}, ctx) == {"instance": "A", "payload": {"data": "task"}}
    found = await demo({"query": "raft consensus", "k": 2}, ctx)
    assert found["instance"] == "A"
    assert found["shard"] == "0/8"
    assert len(found["matches"]) <= 2
