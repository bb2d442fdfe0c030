"""``POST /api/orchestrator/runs`` on the fast path answers exactly as the FastAPI route does.

Each comparison sends the same request twice: as ``application/json``, which the fast path
serves when it can, and as ``application/vnd.test+json``, which it never serves but the
app reads as JSON all the same, so the route behind it answers. Status, body (run ids and
times aside) and every header, in order, must agree: the 202 and its ``Location``, a key's
replay (200, ``Idempotent-Replayed``), a reused key's 409, ``Preference-Applied``, and
every 400, 401, 403 and 413. A direct call of :class:`FastPaths` shows which requests it
serves itself. Like the whole API suite, the module runs with the fast paths and without
(one cluster per side).
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from pydantic import SecretStr
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from openclaw_orchestrator.server.api.fastpath import RUNS_PATH, FastPaths
from openclaw_orchestrator.server.api.security import Authenticator

from .conftest import Cluster, asgi_post, start_cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

JSON = "application/json"
OTHER_JSON = "application/vnd.test+json"  # JSON to the app, never served by the fast path
SECRET = "whsec-fastpath-secret-0a1b2c"
CALLBACK = {"url": "http://127.0.0.1:9/hook", "secret": SECRET}  # nobody listens: retried
_VARYING = {"run_id", "created_at", "updated_at", "deadline_at", "delivery_id"}
_RUN_LOCATION = re.compile(r"/api/orchestrator/runs/run_[A-Za-z0-9_-]+")


@pytest.fixture(scope="module")
def fast_paths(request: pytest.FixtureRequest) -> bool:
    """The side of the fast paths this module's cluster is on (overrides the conftest's
    per-test fixture, so each side starts one cluster for the whole module)."""
    return bool(getattr(request, "param", True))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(fast_paths: bool) -> AsyncIterator[Cluster]:
    """Echo instances A and B, and C that never answers a task (its runs stay running, so
    a replay shows them as they were), behind an orchestrator; a session ``s-fast`` on A."""
    async with start_cluster("ABC", fast_paths=fast_paths) as c:
        await c.set_faults("C", hang=True)
        status, spawned = await c.post(
            "/api/orchestrator/sessions/spawn", {"sessionId": "s-fast", "instance": "A"}
        )
        assert status == 201, spawned
        yield c


async def _running(live: Cluster, run_id: str) -> None:
    """Wait until the run works on C (where it stays until its deadline)."""
    for _ in range(250):
        _, run = await live.get(f"{RUNS_PATH}/{run_id}")
        if run["state"] == "running":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} is {run['state']}, not running")


Answer = tuple[int, list[tuple[str, str]], Any]


async def _post(live: Cluster, body: bytes, content_type: str, **headers: str) -> Answer:
    """POST ``body`` to the runs endpoint: status, headers in order (as sent), JSON body."""
    sent = {**live.headers, "Content-Type": content_type, "X-Request-ID": "same-id", **headers}
    data = io.BytesIO(body) if len(body) > 65536 else body
    async with live.http.post(live.url + RUNS_PATH, data=data, headers=sent) as resp:
        raw = await resp.read()
        listed = [(k.decode().lower(), v.decode()) for k, v in resp.raw_headers]
    assert dict(listed)["content-length"] == str(len(raw))
    return resp.status, listed, orjson.loads(raw)


def _same(answer: Answer) -> Answer:
    """``answer`` with what differs from one run to the next left out: ids, times, the
    server's date and the length (times print shorter on a round microsecond)."""
    status, headers, body = answer
    kept = [
        (k, _RUN_LOCATION.sub("/api/orchestrator/runs/RUN", v))
        for k, v in headers
        if k not in {"date", "server", "content-length"}
    ]
    return status, kept, _without_varying(body)


def _without_varying(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "-" if k in _VARYING else _without_varying(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_varying(v) for v in value]
    return value


async def _both(live: Cluster, body: bytes, **headers: str) -> tuple[Answer, Answer]:
    """The answer to ``body`` as the fast path gives it, and as the route does."""
    return await _post(live, body, JSON, **headers), await _post(live, body, OTHER_JSON, **headers)


async def _agree(live: Cluster, body: bytes, **headers: str) -> Answer:
    """The fast path's answer, once it was found to be the route's."""
    fast, full = await _both(live, body, **headers)
    assert _same(fast) == _same(full)
    return fast


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"kind": "route", "instances": ["B"], "payload": {"n": 1}}, {}),
        ({"kind": "fanout", "targets": "A,B", "payload": [1, 2], "aggregate": "array"}, {}),
        ({"kind": "session_send", "sessionId": "s-fast", "data": "hi"}, {}),
        ({"kind": "route", "payload": 1, "timeout": "20s", "callback": CALLBACK}, {}),
        ({"kind": "route", "payload": 2}, {"Prefer": "wait=5, Respond-Async"}),
    ],
    ids=["route", "fanout", "session_send", "timeout_and_callback", "prefer_async"],
)
async def test_a_submit_is_a_202_with_the_run_as_the_route_gives_it(
    live: Cluster, body: dict[str, Any], headers: dict[str, str]
) -> None:
    status, listed, reply = await _agree(live, orjson.dumps(body), **headers)
    assert status == 202, reply
    assert (reply["kind"], reply["state"], reply["attempts"]) == (body["kind"], "queued", 0)
    shown = dict(listed)
    assert shown["location"] == f"{RUNS_PATH}/{reply['run_id']}"
    assert shown["x-request-id"] == "same-id"
    assert shown["content-type"] == JSON
    assert "idempotent-replayed" not in shown
    assert ("preference-applied" in shown) is ("Prefer" in headers)
    assert "kind" not in reply["request"]
    if "callback" in body:
        assert reply["callback"]["state"] == "pending"
        assert SECRET not in str(reply)


async def test_a_key_replays_the_run_and_a_reused_key_is_a_409(live: Cluster) -> None:
    body = orjson.dumps({"kind": "route", "instances": ["C"], "payload": {"k": 1}})
    key = {"Idempotency-Key": "fast-key-1"}
    status, _, first = await _post(live, body, JSON, **key)
    assert status == 202, first
    await _running(live, first["run_id"])
    fast, full = await _both(live, body, **key)
    assert _same(fast) == _same(full)
    assert fast[2] == full[2]  # the very same run
    assert fast[0] == 200
    assert dict(fast[1])["idempotent-replayed"] == "true"
    assert fast[2]["run_id"] == first["run_id"]
    other = orjson.dumps({"kind": "route", "instances": ["C"], "payload": {"k": 2}})
    fast, full = await _both(live, other, **key)
    assert _same(fast) == _same(full)
    assert fast[2] == full[2]
    assert fast[0] == 409, fast
    assert (fast[2]["error"]["field"], fast[2]["error"]["details"]) == (
        "Idempotency-Key",
        {"run_id": first["run_id"]},
    )


async def test_a_replay_keeps_the_first_callback(live: Cluster) -> None:
    key = {"Idempotency-Key": "fast-key-callback"}
    body = {"kind": "route", "instances": "C", "payload": 3, "callback": CALLBACK}
    status, _, first = await _post(live, orjson.dumps(body), JSON, **key)
    assert status == 202, first
    await _running(live, first["run_id"])
    body["callback"] = {"url": "http://127.0.0.1:9/other", "secret": SECRET + "x"}
    fast, full = await _both(live, orjson.dumps(body), **key)
    assert _same(fast) == _same(full)
    assert fast[2] == full[2]
    assert fast[0] == 200
    assert fast[2]["callback"]["url"] == CALLBACK["url"]
    assert fast[2]["callback"]["delivery_id"] == first["callback"]["delivery_id"]


def _callback(**fields: str) -> bytes:
    """A route run's body with the callback ``fields``."""
    return orjson.dumps({"kind": "route", "callback": fields})


BAD_BODIES: list[tuple[bytes, str]] = [
    (b"{not json", "body"),
    (b'{"kind": "route", "payload": NaN}', "payload"),
    (b'{"kind": "route", "payload": {"x": [1, Infinity]}}', "payload.x.1"),
    (b"", "body"),
    (b"null", "body"),
    (b"[1, 2]", "body"),
    (b'{"payload": 1}', "body"),
    (b'{"kind": "teleport"}', "body"),
    (b'{"kind": 7}', "body"),
    (b'{"kind": "route", "bogus": true}', "bogus"),
    (b'{"kind": "route", "targets": "A"}', "targets"),
    (b'{"kind": "fanout", "targets": 5}', "targets.str"),
    (b'{"kind": "session_send", "data": 1}', "sessionId"),
    (b'{"kind": "session_send", "sessionId": "a b", "data": 1}', "sessionId"),
    (b'{"kind": "route", "timeout": "9h"}', "timeout"),
    (b'{"kind": "route", "timeout": "soon"}', "timeout"),
    (_callback(url="ftp://127.0.0.1/x", secret=SECRET), "callback.url"),
    (_callback(url="http://u:p@127.0.0.1/", secret=SECRET), "callback.url"),
    (_callback(url="http://169.254.169.254/", secret=SECRET), "callback.url"),
    (_callback(url="http://127.0.0.1:9/x", secret="short"), "callback.secret"),
    (_callback(url="http://127.0.0.1:9/x"), "callback.secret"),
    (b'{"kind": "route", "callback": "http://127.0.0.1:9/x"}', "callback"),
]


@pytest.mark.parametrize(("body", "named"), BAD_BODIES)
async def test_a_bad_body_is_the_routes_400_naming_the_field(
    live: Cluster, body: bytes, named: str
) -> None:
    status, _, reply = await _agree(live, body)
    assert status == 400, reply
    assert reply["error"]["code"] == "invalid_request"
    assert reply["error"]["field"] == named
    assert SECRET not in str(reply)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Idempotency-Key": "has space"}, 400),
        ({"Idempotency-Key": "k" * 256}, 400),
        ({"Authorization": "Bearer wrong-key"}, 401),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401),
        ({"Authorization": "Bearer ocs_a-session-token"}, 403),
    ],
    ids=["key_with_space", "key_too_long", "wrong_api_key", "not_bearer", "session_token"],
)
async def test_bad_headers_are_refused_as_the_route_refuses_them(
    live: Cluster, headers: dict[str, str], status: int
) -> None:
    body = orjson.dumps({"kind": "route", "payload": {"never": "stored"}})
    answer = await _agree(live, body, **headers)
    assert answer[0] == status, answer
    if status == 400:
        assert answer[2]["error"]["field"] == "Idempotency-Key"
    if status == 401:
        assert dict(answer[1])["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("hops", "status"), [("2", 202), ("3", 508), ("999", 400), ("two", 400)])
async def test_the_delegation_count_is_kept_or_refused_as_the_route_does(
    live: Cluster, hops: str, status: int
) -> None:
    """``X-Orchestrator-Hops``: a delegated run keeps its count; at ``delegation.max_hops``
    (3) it is refused; a value that is not a count is a 400 naming the header."""
    body = orjson.dumps({"kind": "route", "payload": {"delegated": hops}})
    answer = await _agree(live, body, **{"X-Orchestrator-Hops": hops})
    assert answer[0] == status, answer
    if status == 202:
        assert answer[2]["request"]["_hops"] == 2
    else:
        assert answer[2]["error"]["code"] == (
            "delegation_loop" if hops == "3" else "invalid_request"
        )


async def test_a_missing_api_key_is_a_401(live: Cluster) -> None:
    body = orjson.dumps({"kind": "route", "payload": 1})
    answers = []
    for content_type in (JSON, OTHER_JSON):
        sent = {"Content-Type": content_type, "X-Request-ID": "same-id"}
        async with live.http.post(live.url + RUNS_PATH, data=body, headers=sent) as resp:
            answers.append((resp.status, resp.headers.get("WWW-Authenticate"), await resp.read()))
    assert answers[0] == answers[1]
    assert answers[0][:2] == (401, "Bearer")


async def test_a_body_over_the_limit_is_a_413(live: Cluster) -> None:
    big = orjson.dumps({"kind": "route", "payload": "x" * (1024 * 1024)})
    status, _, reply = await _agree(live, big)
    assert status == 413
    assert reply["error"]["code"] == "payload_too_large"


async def test_the_fast_path_serves_submits_itself_and_hands_on_the_rest(live: Cluster) -> None:
    """Keys, replays, conflicts, callbacks and errors found after validation are the fast
    path's to answer; a body or header that does not validate goes to the route."""
    passed_on: list[Scope] = []

    async def framework(scope: Scope, receive: Receive, send: Send) -> None:
        passed_on.append(scope)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    state = State()
    state.orchestrator = live.service
    state.authenticator = Authenticator(SecretStr(live.api_key))
    paths = FastPaths(framework, state=state, max_body_bytes=4096)
    auth = {"Authorization": f"Bearer {live.api_key}", "Content-Type": JSON}
    plain = orjson.dumps({"kind": "route", "payload": {"direct": 1}})
    other = orjson.dumps({"kind": "route", "payload": {"direct": 2}})
    key = {**auth, "Idempotency-Key": "direct-1"}
    with_callback = orjson.dumps({"kind": "route", "callback": CALLBACK})
    denied = orjson.dumps(
        {"kind": "route", "callback": {"url": "http://169.254.169.254/", "secret": SECRET}}
    )
    served = [
        (plain, auth, 202),
        (plain, {**auth, "Prefer": "respond-async"}, 202),
        (with_callback, auth, 202),
        (plain, key, 202),
        (plain, key, 200),
        (other, key, 409),
        (orjson.dumps({"kind": "route", "timeout": "9h"}), auth, 400),
        (denied, auth, 400),
    ]
    for body, headers, status in served:
        sent = await asgi_post(paths, RUNS_PATH, body, **headers)
        assert sent[0]["status"] == status, orjson.loads(sent[1]["body"])
    assert not passed_on

    handed_on = [
        (b"{not json", auth),
        (b'{"kind": "teleport"}', auth),
        (b'{"kind": "route", "bogus": 1}', auth),
        (orjson.dumps({"kind": "route", "callback": {"url": "ftp://x/", "secret": SECRET}}), auth),
        (plain, {**auth, "Idempotency-Key": "has space"}),
        (plain, {**auth, "Authorization": "Bearer wrong"}),
        (plain, {"Content-Type": JSON}),
        (plain, {**auth, "Content-Type": OTHER_JSON}),
        (orjson.dumps({"kind": "route", "payload": "x" * 4096}), auth),  # valid, too long
    ]
    for body, headers in handed_on:
        sent = await asgi_post(paths, RUNS_PATH, body, **headers)
        assert sent[0]["status"] == 299
    assert len(passed_on) == len(handed_on)
