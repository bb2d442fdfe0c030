"""Run callbacks end to end: a real ``openclaw orchestrator serve`` process (structlog set up
as in production, its log read from stderr) POSTs finished runs to a real receiver on
127.0.0.1 in the test's loop.

The receiver fails a path's first deliveries with 500 as told, then acknowledges: the
callback is signed (the docs' verification snippet accepts it), retried after each failure
with the same delivery id, acknowledged once, and every attempt is recorded; ``410 Gone``
ends a callback at once; a URL ``instances.deny`` refuses is a 400 naming ``callback.url``;
the secret shows in no response and no log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from .test_logs import API_KEY, Served, serve

pytestmark = pytest.mark.asyncio(loop_scope="module")

R = "/api/orchestrator/runs"
SECRET = "whsec-test-secret-4d9b1f27aa"
FAST = {
    "runs": {
        "poll_interval": "20ms",
        "callback_poll_interval": "20ms",
        "callback_backoff_base": "20ms",
        "callback_backoff_max": "50ms",
        "callback_timeout": "2s",
    }
}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


@dataclass
class Delivery:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers ``POST /hook/{name}``: the ``fail[name]`` first deliveries with ``status[name]``
    (500 unless told), then 204; records every delivery per name."""

    url: str = ""
    fail: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    seen: dict[str, list[Delivery]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        got = self.seen.setdefault(name, [])
        failing = len(got) < self.fail.get(name, 0)
        answer = self.status.get(name, 500) if failing else 204
        got.append(Delivery(answer, dict(request.headers), await request.read()))
        return web.Response(status=answer)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    box = Receiver()
    app = web.Application()
    app.router.add_post("/hook/{name}", box.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    box.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield box
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    async with serve(tmp_path_factory.mktemp("callbacks"), names="A", settings=FAST) as s:
        yield s


async def call(
    served: Served, method: str, path: str, body: Any = None, **extra: str
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **extra}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, served.url + path, data=orjson.dumps(body), headers=headers) as r,
    ):
        return r.status, await r.json()


async def until_final(served: Served, run_id: str) -> dict[str, Any]:
    """The run once its callback is no longer pending (within 10 s)."""
    for _ in range(500):
        status, run = await call(served, "GET", f"{R}/{run_id}")
        assert status == 200, run
        if run["callback"]["state"] != "pending":
            found: dict[str, Any] = run
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"callback still pending: {run['callback']}")


def docs_verifier() -> Any:
    """The ``verify`` function of docs/api.md's callbacks section, run as pasted."""
    text = DOCS.read_text()
    section = text[text.index("### Callbacks") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    scope: dict[str, Any] = {}
    exec(compile(match.group(1), "docs/api.md", "exec"), scope)  # noqa: S102  # our docs
    return scope["verify"]


async def test_a_callback_is_signed_retried_after_two_failures_and_delivered_once(
    served: Served, receiver: Receiver
) -> None:
    receiver.fail["retried"] = 2
    body = {
        "kind": "route",
        "instances": "A",
        "payload": {"n": 1},
        "callback": {"url": f"{receiver.url}/retried", "secret": SECRET},
    }
    status, submitted = await call(served, "POST", R, body)
    assert status == 202, submitted
    assert submitted["callback"]["state"] == "pending"
    assert "callback" not in submitted["request"]
    run = await until_final(served, submitted["run_id"])

    callback = run["callback"]
    assert callback["state"] == "delivered"
    assert callback["url"] == f"{receiver.url}/retried"
    assert [a["status"] for a in callback["attempts"]] == [500, 500, 204]
    assert [a["n"] for a in callback["attempts"]] == [1, 2, 3]
    assert all(a["latency_ms"] >= 0 and a["error"] is None for a in callback["attempts"])
    deliveries = receiver.seen["retried"]
    assert [d.status for d in deliveries] == [500, 500, 204]  # acknowledged once, then no more
    await asyncio.sleep(0.3)
    assert len(receiver.seen["retried"]) == 3

    ids = {d.headers["X-Orchestrator-Delivery"] for d in deliveries}
    assert ids == {callback["delivery_id"]}
    verify = docs_verifier()
    for d in deliveries:
        timestamp = d.headers["X-Orchestrator-Timestamp"]
        signature = d.headers["X-Orchestrator-Signature"]
        assert verify(SECRET, timestamp, d.body, signature)
        assert not verify("another-secret-0123456", timestamp, d.body, signature)
        assert not verify(SECRET, timestamp, d.body + b" ", signature)
        mac = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + d.body, hashlib.sha256)
        assert signature == "v1=" + mac.hexdigest()
        assert abs(int(timestamp) - time.time()) < 60
    posted = orjson.loads(deliveries[-1].body)
    assert posted["run_id"] == run["run_id"]
    assert posted["state"] == "succeeded"
    assert posted["result"]["instance"] == "A"
    assert posted["callback"] is None

    status, listed = await call(served, "GET", R)
    log_text = "\n".join(served.lines)
    assert '"callbacks.attempted"' in log_text
    for shown in (str(submitted), str(run), str(listed), log_text):
        assert SECRET not in shown
    assert "secret" not in run["callback"]


async def test_a_replayed_submit_keeps_the_first_callback(
    served: Served, receiver: Receiver
) -> None:
    body = {
        "kind": "route",
        "instances": "A",
        "callback": {"url": f"{receiver.url}/first", "secret": SECRET},
    }
    headers = {"Idempotency-Key": "callback-replay-1"}
    status, first = await call(served, "POST", R, body, **headers)
    assert status == 202, first
    body["callback"] = {"url": f"{receiver.url}/second", "secret": SECRET + "x"}
    status, again = await call(served, "POST", R, body, **headers)
    assert status == 200, again
    assert again["run_id"] == first["run_id"]
    assert again["callback"]["url"] == f"{receiver.url}/first"
    assert again["callback"]["delivery_id"] == first["callback"]["delivery_id"]
    run = await until_final(served, first["run_id"])
    assert run["callback"]["state"] == "delivered"
    assert "second" not in receiver.seen


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/orchestrator/route", {"instances": "A", "payload": {"n": 2}}),
        ("/api/orchestrator/fanout", {"targets": "A", "payload": {"n": 3}}),
    ],
)
async def test_async_route_and_fanout_take_a_callback_and_sync_ones_refuse_it(
    served: Served, receiver: Receiver, path: str, body: dict[str, Any]
) -> None:
    name = path.rsplit("/", 1)[1]
    callback = {"url": f"{receiver.url}/{name}", "secret": SECRET}
    status, refused = await call(served, "POST", path, {**body, "callback": callback})
    assert status == 400, refused
    assert refused["error"]["field"] == "callback"
    status, submitted = await call(
        served, "POST", path, {**body, "async": True, "callback": callback}
    )
    assert status == 202, submitted
    run = await until_final(served, submitted["run_id"])
    assert run["callback"]["state"] == "delivered"
    assert orjson.loads(receiver.seen[name][0].body)["run_id"] == submitted["run_id"]


async def test_an_async_session_send_takes_a_callback(served: Served, receiver: Receiver) -> None:
    status, spawned = await call(
        served, "POST", "/api/orchestrator/sessions/spawn", {"sessionId": "s-cb", "instance": "A"}
    )
    assert status == 201, spawned
    body = {
        "data": "hi",
        "async": True,
        "callback": {"url": f"{receiver.url}/send", "secret": SECRET},
    }
    status, submitted = await call(served, "POST", "/api/orchestrator/sessions/s-cb/send", body)
    assert status == 202, submitted
    run = await until_final(served, submitted["run_id"])
    assert run["callback"]["state"] == "delivered"
    posted = orjson.loads(receiver.seen["send"][0].body)
    assert (posted["kind"], posted["result"]["seq"]) == ("session_send", 1)


async def test_410_gone_ends_a_callback_at_once(served: Served, receiver: Receiver) -> None:
    receiver.fail["gone"], receiver.status["gone"] = 5, 410
    body = {
        "kind": "route",
        "instances": "A",
        "callback": {"url": f"{receiver.url}/gone", "secret": SECRET},
    }
    status, submitted = await call(served, "POST", R, body)
    assert status == 202, submitted
    run = await until_final(served, submitted["run_id"])
    assert run["callback"]["state"] == "failed"
    assert [a["status"] for a in run["callback"]["attempts"]] == [410]
    assert run["callback"]["ended_at"] is not None


async def test_an_unreachable_receiver_is_retried_with_the_error_recorded(
    served: Served, receiver: Receiver
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        body = {
            "kind": "route",
            "instances": "A",
            "callback": {"url": f"http://127.0.0.1:{port}/x", "secret": SECRET},
        }
        status, submitted = await call(served, "POST", R, body)
        assert status == 202, submitted
        for _ in range(500):
            _, run = await call(served, "GET", f"{R}/{submitted['run_id']}")
            if len(run["callback"]["attempts"]) >= 2:
                break
            await asyncio.sleep(0.02)
    first = run["callback"]["attempts"][0]
    assert first["status"] is None
    assert first["error"].startswith("connect failed")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest", "instances.deny"),
        ("http://metadata.google.internal/hook", "instances.deny"),
        ("ftp://127.0.0.1/hook", "http"),
        ("http://user:pw@127.0.0.1/hook", "user"),
    ],
)
async def test_a_refused_callback_url_is_a_400_naming_it(
    served: Served, url: str, reason: str
) -> None:
    body = {"kind": "route", "instances": "A", "callback": {"url": url, "secret": SECRET}}
    status, reply = await call(served, "POST", R, body)
    assert status == 400, reply
    assert reply["error"]["field"] == "callback.url"
    assert reason in reply["error"]["message"]
    assert SECRET not in str(reply)


@pytest.mark.parametrize("secret", ["short", "x" * 257])
async def test_a_secret_outside_its_bounds_is_a_400_that_does_not_echo_it(
    served: Served, receiver: Receiver, secret: str
) -> None:
    body = {"kind": "route", "callback": {"url": f"{receiver.url}/s", "secret": secret}}
    status, reply = await call(served, "POST", R, body)
    assert status == 400, reply
    assert reply["error"]["field"] == "callback.secret"
    assert secret not in str(reply)
