"""WorkerDriver against real reference instances over real sockets, on both transports."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openclaw_orchestrator.devtools.reference import (
    FaultConfig,
    HandlerContext,
    HandlerError,
    create_instance_app,
    resolve_handler,
)
from openclaw_orchestrator.devtools.reference.handlers import echo
from openclaw_orchestrator.devtools.reference.search import search_corpus
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
from openclaw_orchestrator.server.drivers.instance_transport import TransportKind
from openclaw_orchestrator.server.drivers.worker import encode_task, parse_retry_after

Serve = Callable[[Any], Awaitable[str]]

TOKEN = "s3cret-token"


def spec(url: str, name: str = "A", **kwargs: Any) -> InstanceSpec:
    """An InstanceSpec for a served instance."""
    return InstanceSpec(name=name, url=url, **kwargs)


async def _invoke(driver: WorkerDriver, url: str, payload: Any = None, **kwargs: Any) -> Any:
    return await driver.invoke(spec(url, **kwargs), payload, timeout=5.0, request_id="req-1")


def sync_handler(payload: Any) -> Any:
    """A blocking handler: must run off the event loop's thread."""
    return {"doubled": payload * 2, "thread": threading.current_thread().name}


async def async_handler(payload: Any) -> Any:
    """A one-parameter async handler."""
    await asyncio.sleep(0)
    return {"seen": payload}


def context_handler(payload: Any, context: HandlerContext) -> Any:
    """A two-parameter handler reporting what the driver sent."""
    return {"request_id": context.request_id, "time_left": context.time_left()}


def rejecting_handler(payload: Any) -> Any:
    """Refuses every payload with a 400 of its choosing."""
    raise HandlerError(400, "bad_payload", "payload must be a number")


def crashing_handler(payload: Any) -> Any:
    """Fails like a bug would."""
    return 1 / 0


async def throttling_handler(payload: Any) -> Any:
    """Asks the caller to come back later."""
    raise HandlerError(429, "busy", "too many tasks", retry_after=2)


async def test_echo_round_trip(serve: Serve, driver: WorkerDriver) -> None:
    """The built-in echo returns the payload tagged with the instance name."""
    url = await serve(create_instance_app("A", echo))
    assert await _invoke(driver, url, {"x": [1, "two"]}) == {
        "instance": "A",
        "payload": {"x": [1, "two"]},
    }


async def test_driver_sends_request_id_and_deadline(serve: Serve, driver: WorkerDriver) -> None:
    """The handler context carries the caller's request id and a deadline within the timeout."""
    url = await serve(create_instance_app("A", context_handler))
    result = await driver.invoke(spec(url), None, timeout=2.0, request_id="abc123")
    assert result["request_id"] == "abc123"
    assert 0 < result["time_left"] <= 2.0


async def test_sync_handler_runs_in_worker_thread(serve: Serve, driver: WorkerDriver) -> None:
    """A sync handler gets the payload and runs off the event loop's thread."""
    url = await serve(create_instance_app("A", sync_handler))
    result = await _invoke(driver, url, 21)
    assert result["doubled"] == 42
    assert result["thread"] != threading.current_thread().name


async def test_async_handler(serve: Serve, driver: WorkerDriver) -> None:
    """A one-parameter async handler is awaited with the payload only."""
    url = await serve(create_instance_app("A", async_handler))
    assert await _invoke(driver, url, "hi") == {"seen": "hi"}


async def test_resolved_stdlib_handler(serve: Serve, driver: WorkerDriver) -> None:
    """``json:dumps`` resolved by name serves as a handler returning a JSON string."""
    url = await serve(create_instance_app("A", resolve_handler("json:dumps")))
    assert await _invoke(driver, url, {"a": 1}) == '{"a": 1}'


async def test_good_token_is_accepted(serve: Serve, driver: WorkerDriver) -> None:
    """With matching credentials the task runs."""
    url = await serve(create_instance_app("A", echo, token=TOKEN))
    result = await _invoke(driver, url, 1, credentials=SecretStr(TOKEN))
    assert result == {"instance": "A", "payload": 1}


@pytest.mark.parametrize("credentials", [None, SecretStr("wrong-token")])
async def test_bad_token_is_rejected_without_leaking(
    serve: Serve, driver: WorkerDriver, credentials: SecretStr | None
) -> None:
    """A missing or wrong token is a 401 rejection whose message never holds a credential."""
    url = await serve(create_instance_app("A", echo, token=TOKEN))
    with pytest.raises(InstanceRejectedError) as info:
        await _invoke(driver, url, 1, credentials=credentials)
    assert info.value.upstream_status == 401
    assert info.value.instance == "A"
    shown = f"{info.value} {info.value!r} {info.value.to_dict()}"
    assert TOKEN not in shown
    assert "wrong-token" not in shown


async def test_body_over_limit_is_rejected(serve: Serve, driver: WorkerDriver) -> None:
    """A body over max_body_bytes is a 413 rejection, not a retryable failure."""
    url = await serve(create_instance_app("A", echo, max_body_bytes=1024))
    with pytest.raises(InstanceRejectedError) as info:
        await _invoke(driver, url, "x" * 2048)
    assert info.value.upstream_status == 413


async def test_handler_error_is_rejection(serve: Serve, driver: WorkerDriver) -> None:
    """HandlerError(400) becomes InstanceRejectedError with the instance's message."""
    url = await serve(create_instance_app("A", rejecting_handler))
    with pytest.raises(InstanceRejectedError) as info:
        await _invoke(driver, url, "x")
    assert info.value.message == "A: payload must be a number"
    assert info.value.upstream_status == 400
    assert info.value.details == {"upstream_code": "bad_payload"}


async def test_handler_crash_is_instance_error(serve: Serve, driver: WorkerDriver) -> None:
    """A crashing handler is a plain InstanceError with upstream 500 and the exception type."""
    url = await serve(create_instance_app("A", crashing_handler))
    with pytest.raises(InstanceError) as info:
        await _invoke(driver, url, 1)
    assert type(info.value) is InstanceError
    assert info.value.upstream_status == 500
    assert info.value.message == "A: ZeroDivisionError: division by zero"
    assert info.value.details == {"upstream_code": "handler_error"}


async def test_injected_failure_carries_retry_after(serve: Serve, driver: WorkerDriver) -> None:
    """fail_rate=1 with 503 and retry_after gives InstanceError with retry_after parsed."""
    faults = FaultConfig(fail_rate=1.0, fail_status=503, retry_after=1.5)
    url = await serve(create_instance_app("A", echo, faults=faults))
    with pytest.raises(InstanceError) as info:
        await _invoke(driver, url, 1)
    assert type(info.value) is InstanceError
    assert (info.value.upstream_status, info.value.retry_after) == (503, 1.5)


async def test_429_is_not_a_rejection(serve: Serve, driver: WorkerDriver) -> None:
    """429 maps to InstanceError (retryable family) with its Retry-After."""
    url = await serve(create_instance_app("A", throttling_handler))
    with pytest.raises(InstanceError) as info:
        await _invoke(driver, url, 1)
    assert not isinstance(info.value, InstanceRejectedError)
    assert (info.value.upstream_status, info.value.retry_after) == (429, 2.0)


async def test_hang_times_out(serve: Serve, driver: WorkerDriver) -> None:
    """A hanging instance and a short timeout give TimeoutExceededError."""
    url = await serve(create_instance_app("A", echo, faults=FaultConfig(hang=True)))
    with pytest.raises(TimeoutExceededError) as info:
        await driver.invoke(spec(url), 1, timeout=0.2, request_id="r")
    assert info.value.instance == "A"


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


async def test_connection_refused_is_down(driver: WorkerDriver) -> None:
    """A port nobody listens on gives InstanceDownError, for tasks and probes alike."""
    url = _closed_port_url()
    with pytest.raises(InstanceDownError):
        await _invoke(driver, url, 1)
    with pytest.raises(InstanceDownError):
        await driver.probe(spec(url), timeout=1.0)


async def test_probe_healthy(serve: Serve, driver: WorkerDriver) -> None:
    """A healthy instance probes as not degraded, with a measured latency."""
    url = await serve(create_instance_app("A", echo))
    result = await driver.probe(spec(url), timeout=1.0)
    assert not result.degraded
    assert result.latency_s > 0


async def test_probe_degraded(serve: Serve, driver: WorkerDriver) -> None:
    """``"status": "degraded"`` in a 200 marks the probe degraded."""
    faults = FaultConfig(health_degraded=True)
    url = await serve(create_instance_app("A", echo, faults=faults))
    result = await driver.probe(spec(url), timeout=1.0)
    assert (result.degraded, result.detail) == (True, "degraded")


async def test_probe_failing_health(serve: Serve, driver: WorkerDriver) -> None:
    """health_fail answers 503, which the probe raises as InstanceError with the status."""
    url = await serve(create_instance_app("A", echo, faults=FaultConfig(health_fail=True)))
    with pytest.raises(InstanceError) as info:
        await driver.probe(spec(url), timeout=1.0)
    assert info.value.upstream_status == 503


async def test_probe_uses_health_path(serve: Serve, driver: WorkerDriver) -> None:
    """A configured health_path is probed instead of the default (here: a 404)."""
    url = await serve(create_instance_app("A", echo))
    with pytest.raises(InstanceError) as info:
        await driver.probe(spec(url, health_path="/nope"), timeout=1.0)
    assert info.value.upstream_status == 404


async def _garbage(request: Request) -> Response:
    kind = request.path_params["kind"]
    if kind == "text":
        return Response(b"<html>hello</html>", 200)
    if kind == "noresult":
        return Response(b'{"answer": 1}', 200, media_type="application/json")
    if kind == "redirect":
        return Response(b"", 302, headers={"Location": "/elsewhere"})
    return Response(b"<html>Bad Gateway</html>", 502)


def _garbage_app() -> Starlette:
    return Starlette(routes=[Route("/{kind}/api/instance/task", _garbage, methods=["POST"])])


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("text", InstanceProtocolError, None),
        ("noresult", InstanceProtocolError, None),
        ("redirect", InstanceProtocolError, 302),
        ("proxy", InstanceError, 502),
    ],
)
async def test_non_protocol_replies(
    serve: Serve,
    driver: WorkerDriver,
    kind: str,
    error: type[InstanceError],
    status: int | None,
) -> None:
    """Non-JSON or result-less 200s and 3xx are protocol errors; an HTML 502 stays a 502."""
    url = await serve(_garbage_app())
    with pytest.raises(InstanceError) as info:
        await _invoke(driver, f"{url}/{kind}")
    assert type(info.value) is error
    assert info.value.upstream_status == status


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2", 2.0),
        ("0.5", 0.5),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    """Retry-After is seconds; HTTP-dates, negatives and garbage are ignored."""
    assert parse_retry_after(header) == seconds


def test_unencodable_payload_is_invalid_request() -> None:
    """An integer orjson cannot encode is the caller's error, named by field."""
    with pytest.raises(InvalidRequestError) as info:
        encode_task(2**70)
    assert info.value.field == "payload"


async def test_aclose_keeps_shared_session(
    session: aiohttp.ClientSession, transport: TransportKind
) -> None:
    """aclose and the context manager leave the caller's session open."""
    async with WorkerDriver(session, transport=transport) as driver:
        assert driver.kind == "worker"
    assert not session.closed


async def test_search_shards_merge_to_global_ranking(serve: Serve, driver: WorkerDriver) -> None:
    """Searching A..H over the wire and merging by score equals one search of the corpus."""
    names = "ABCDEFGH"
    urls = [await serve(create_instance_app(n, resolve_handler("search"))) for n in names]
    query = "consensus leader log replication"
    payload = {"query": query, "k": 3}
    replies = await asyncio.gather(
        *(
            driver.invoke(spec(u, n), payload, timeout=5.0, request_id="s")
            for u, n in zip(urls, names, strict=True)
        )
    )
    assert [r["shard"] for r in replies] == [f"{i}/8" for i in range(8)]
    merged = sorted(
        (m for r in replies for m in r["matches"]), key=lambda m: (-m["score"], m["id"])
    )
    expected = search_corpus(query, k=3)
    assert [(m["id"], m["score"]) for m in merged[:3]] == [(m["id"], m["score"]) for m in expected]
    assert all(m["instance"] == r["instance"] for r in replies for m in r["matches"])
