"""Sessions on the reference instance over raw HTTP: counting, order, replay, limits, auth."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from openclaw_orchestrator.devtools.reference import (
    Exchange,
    HandlerContext,
    HandlerError,
    SessionContext,
    create_instance_app,
    resolve_handler,
)
from openclaw_orchestrator.devtools.reference.handlers import echo
from openclaw_orchestrator.devtools.reference.sessions import (
    SessionStore,
    is_valid_session_id,
    parse_history,
)

Serve = Callable[[Any], Awaitable[str]]
SESSIONS = "/api/instance/sessions"
HEALTH = "/api/health/check"
FAULTS = "/api/instance/faults"


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, Any]:
    """``(status, parsed JSON body, headers)`` of one request; ``url`` is sent as encoded."""
    async with session.request(method, URL(url, encoded=True), **kwargs) as resp:
        return resp.status, orjson.loads(await resp.read()), resp.headers


async def _send(
    session: aiohttp.ClientSession, url: str, sid: str, payload: Any, **kwargs: Any
) -> tuple[int, Any]:
    """One session message; ``(status, body)``."""
    status, body, _ = await _call(
        session, "POST", f"{url}{SESSIONS}/{sid}/messages", json={"payload": payload}, **kwargs
    )
    return status, body


async def _history(session: aiohttp.ClientSession, url: str, sid: str) -> Any:
    """The instance's view of session ``sid`` (asserting it exists)."""
    status, body, _ = await _call(session, "GET", f"{url}{SESSIONS}/{sid}")
    assert status == 200, body
    return body


def _code(body: Any) -> str:
    return str(body["error"]["code"])


def context_report(payload: Any, context: HandlerContext) -> Any:
    """What a handler sees of its session: how much history, the count and the last payload."""
    assert context.session is not None
    history = context.session.history
    return {
        "kept": len(history),
        "seen": context.session.seen,
        "trimmed": context.session.trimmed,
        "last": history[-1].payload if history else None,
    }


async def test_messages_count_up_and_echo_shows_session(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """Each message's ``seen`` counts up from 1 and echo tags its result with the session."""
    url = await serve(create_instance_app("A", echo))
    for n in (1, 2, 3):
        headers = {"X-Request-ID": f"m-{n}"}
        status, body, got = await _call(
            session,
            "POST",
            f"{url}{SESSIONS}/s1/messages",
            json={"payload": {"n": n}},
            headers=headers,
        )
        assert (status, got["X-Request-ID"]) == (200, f"m-{n}")
        assert body == {
            "result": {"instance": "A", "payload": {"n": n}, "session": {"id": "s1", "seen": n}},
            "instance": "A",
            "seen": n,
        }


async def test_sessions_are_independent(serve: Serve, session: aiohttp.ClientSession) -> None:
    """Two sessions count separately and plain tasks touch neither."""
    url = await serve(create_instance_app("A", echo))
    seen = [(await _send(session, url, sid, 0))[1]["seen"] for sid in ("a", "b", "a", "a", "b")]
    assert seen == [1, 1, 2, 3, 2]
    await _call(session, "POST", url + "/api/instance/task", json={"payload": 1})
    assert (await _history(session, url, "a"))["seen"] == 3
    assert (await _history(session, url, "b"))["seen"] == 2


async def test_concurrent_sends_are_serialized(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """50 concurrent sends run one at a time; seen is 1..50 and history follows seen."""
    active = 0
    most = 0

    async def careful(payload: Any, context: HandlerContext) -> Any:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.001)
        active -= 1
        assert context.session is not None
        return context.session.seen

    url = await serve(create_instance_app("A", careful))
    replies = await asyncio.gather(*(_send(session, url, "busy", i) for i in range(50)))
    assert all(status == 200 for status, _ in replies)
    assert sorted(body["seen"] for _, body in replies) == list(range(1, 51))
    assert all(body["result"] == body["seen"] - 1 for _, body in replies)
    history = (await _history(session, url, "busy"))["history"]
    for i, (_, body) in enumerate(replies):
        assert history[body["seen"] - 1] == {"payload": i, "result": body["seen"] - 1}
    assert most == 1


async def _wait_inflight(session: aiohttp.ClientSession, url: str, count: int) -> None:
    """Poll the health check until ``count`` requests are in progress."""
    for _ in range(400):
        _, body, _ = await _call(session, "GET", url + HEALTH)
        if body["inflight"] >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never saw {count} requests in flight")


async def test_queued_messages_run_in_arrival_order(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """Messages that queue behind a busy one run in the order they arrived."""
    release = asyncio.Event()

    async def gated(payload: Any) -> Any:
        if payload == "first":
            await release.wait()
        return payload

    url = await serve(create_instance_app("A", gated))
    sends = [asyncio.create_task(_send(session, url, "q", "first"))]
    await _wait_inflight(session, url, 1)
    for n in range(2, 7):
        sends.append(asyncio.create_task(_send(session, url, "q", n)))
        await _wait_inflight(session, url, n)
    release.set()
    replies = [body for _, body in await asyncio.gather(*sends)]
    assert [(b["result"], b["seen"]) for b in replies] == [
        ("first", 1),
        *((n, n) for n in range(2, 7)),
    ]


async def test_restore_replaces_state_without_running_handlers(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """PUT replaces what the session saw; the next message sees the replayed items, seen=4."""
    calls = 0

    def counting(payload: Any, context: HandlerContext) -> Any:
        nonlocal calls
        calls += 1
        return context_report(payload, context)

    url = await serve(create_instance_app("A", counting))
    for n in range(5):
        await _send(session, url, "m", n)
    history = [{"payload": f"p{n}", "result": f"r{n}"} for n in range(3)]
    status, body, _ = await _call(session, "PUT", f"{url}{SESSIONS}/m", json={"history": history})
    assert (status, body) == (200, {"session_id": "m", "seen": 3})
    assert calls == 5
    status, body = await _send(session, url, "m", "next")
    assert body["seen"] == 4
    assert body["result"] == {"kept": 3, "seen": 3, "trimmed": 0, "last": "p2"}
    kept = (await _history(session, url, "m"))["history"]
    assert kept == [*history, {"payload": "next", "result": body["result"]}]


async def test_restore_creates_unknown_session(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """PUT of a session the instance never saw creates it (a migration target)."""
    url = await serve(create_instance_app("B", echo))
    history = [{"payload": 1, "result": {"x": 1}}]
    status, body, _ = await _call(session, "PUT", f"{url}{SESSIONS}/new", json={"history": history})
    assert (status, body["seen"]) == (200, 1)
    _, body = await _send(session, url, "new", 2)
    assert body["result"]["session"] == {"id": "new", "seen": 2}


BAD_RESTORES = [
    (b"[]", "history"),
    (b'{"history": {}}', "history"),
    (b'{"history": [{"payload": 1, "result": 1}, {"payload": 2}]}', "history[1]"),
    (b'{"history": [3]}', "history[0]"),
    (b"{nope", "request body"),
]


async def test_bad_restore_body_is_400(serve: Serve, session: aiohttp.ClientSession) -> None:
    """A restore body that is not a list of exchanges is a 400 naming the bad item."""
    url = await serve(create_instance_app("A", echo))
    for data, field in BAD_RESTORES:
        status, body, _ = await _call(session, "PUT", f"{url}{SESSIONS}/s", data=data)
        assert status == 400, data
        assert body["error"]["message"].startswith(field), data
    status, _, _ = await _call(session, "GET", f"{url}{SESSIONS}/s")
    assert status == 404


async def test_close_then_send_starts_fresh(serve: Serve, session: aiohttp.ClientSession) -> None:
    """DELETE forgets the session: GET is a 404 and the next message has seen=1."""
    url = await serve(create_instance_app("A", echo))
    await _send(session, url, "c", 1)
    await _send(session, url, "c", 2)
    status, body, _ = await _call(session, "DELETE", f"{url}{SESSIONS}/c")
    assert (status, body) == (200, {"closed": "c"})
    status, body, _ = await _call(session, "GET", f"{url}{SESSIONS}/c")
    assert (status, _code(body)) == (404, "not_found")
    _, body = await _send(session, url, "c", 3)
    assert body["seen"] == 1


async def test_close_unknown_is_200(serve: Serve, session: aiohttp.ClientSession) -> None:
    """Closing a session the instance never saw succeeds (idempotent close)."""
    url = await serve(create_instance_app("A", echo))
    for _ in range(2):
        status, body, _ = await _call(session, "DELETE", f"{url}{SESSIONS}/ghost")
        assert (status, body) == (200, {"closed": "ghost"})


async def test_get_shows_history(serve: Serve, session: aiohttp.ClientSession) -> None:
    """GET returns the id, the count and the exchanges oldest first."""
    url = await serve(create_instance_app("A", lambda payload: payload * 2))
    for n in (1, 2):
        await _send(session, url, "g", n)
    assert await _history(session, url, "g") == {
        "session_id": "g",
        "seen": 2,
        "history": [{"payload": 1, "result": 2}, {"payload": 2, "result": 4}],
    }


BAD_IDS = ["-lead", ".hidden", "a%20b", "a%2Fb", "%C3%A9", "x" * 129, "a;b", "%2E%2E", ""]
"""Path segments as sent (percent-encoded): each decodes to an id outside the form."""


async def test_bad_session_id_is_400(serve: Serve, session: aiohttp.ClientSession) -> None:
    """A session id outside the documented form is a 400 naming session_id, on every route."""
    url = await serve(create_instance_app("A", echo))
    for sid in BAD_IDS:
        status, body = await _send(session, url, sid, 1)
        assert (status, _code(body)) == (400, "invalid_request"), sid
        assert body["error"]["message"].startswith("session_id"), sid
    for method in ("GET", "PUT", "DELETE"):
        target = f"{url}{SESSIONS}/a%20b"
        status, body, _ = await _call(session, method, target, json={"history": []})
        assert status == 400, method
        assert body["error"]["message"].startswith("session_id"), method


async def test_good_session_ids(serve: Serve, session: aiohttp.ClientSession) -> None:
    """Ids of the documented form, up to 128 characters, are accepted."""
    url = await serve(create_instance_app("A", echo))
    for sid in ("a", "0", "User_1.chat:42-x", "x" * 128):
        status, body = await _send(session, url, sid, 1)
        assert (status, body["result"]["session"]["id"]) == (200, sid)


async def test_lru_session_is_evicted(serve: Serve, session: aiohttp.ClientSession) -> None:
    """Past max_sessions the least recently *used* session is forgotten; GET is not use."""
    app = create_instance_app("A", echo, max_sessions=2)
    url = await serve(app)
    await _send(session, url, "s1", 1)
    await _send(session, url, "s2", 1)
    await _send(session, url, "s1", 2)
    await _history(session, url, "s2")
    await _send(session, url, "s3", 1)
    status, _, _ = await _call(session, "GET", f"{url}{SESSIONS}/s2")
    assert status == 404
    assert (await _history(session, url, "s1"))["seen"] == 2
    assert repr(app.state.instance.sessions) == (
        "<SessionStore open=2 evicted=1 tombstones=0 max_sessions=2 max_history=1000>"
    )
    _, body = await _send(session, url, "s2", 2)
    assert body["seen"] == 1


async def test_history_is_trimmed_but_counted(serve: Serve, session: aiohttp.ClientSession) -> None:
    """Past max_history the oldest exchanges go; seen still counts every message."""
    url = await serve(create_instance_app("A", context_report, max_history=3))
    replies = [(await _send(session, url, "t", n))[1] for n in range(5)]
    assert [r["seen"] for r in replies] == [1, 2, 3, 4, 5]
    assert replies[-1]["result"] == {"kept": 3, "seen": 4, "trimmed": 1, "last": 3}
    kept = await _history(session, url, "t")
    assert kept["seen"] == 5
    assert [e["payload"] for e in kept["history"]] == [2, 3, 4]
    history = [{"payload": n, "result": n} for n in range(5)]
    status, body, _ = await _call(session, "PUT", f"{url}{SESSIONS}/t", json={"history": history})
    assert (status, body["seen"]) == (200, 5)
    kept = await _history(session, url, "t")
    assert [e["payload"] for e in kept["history"]] == [2, 3, 4]


async def test_token_guards_session_routes(serve: Serve, session: aiohttp.ClientSession) -> None:
    """With a token, every session route answers 401 without it and works with it."""
    url = await serve(create_instance_app("A", echo, token="tok"))
    good = {"Authorization": "Bearer tok"}
    calls = [
        ("POST", f"{url}{SESSIONS}/s/messages", {"payload": 1}),
        ("PUT", f"{url}{SESSIONS}/s", {"history": []}),
        ("GET", f"{url}{SESSIONS}/s", None),
        ("DELETE", f"{url}{SESSIONS}/s", None),
    ]
    for method, target, body in calls:
        status, reply, headers = await _call(session, method, target, json=body)
        assert (status, _code(reply), headers["WWW-Authenticate"]) == (
            401,
            "unauthorized",
            "Bearer",
        )
        status, _, _ = await _call(session, method, target, json=body, headers=good)
        assert status == 200, (method, target)


async def test_failed_message_leaves_session_unchanged(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """Injected faults, handler errors and non-JSON results answer as for tasks, unrecorded."""

    def picky(payload: Any) -> Any:
        if payload == "bad":
            raise HandlerError(422, "bad_payload", "no")
        return {1, 2} if payload == "set" else payload

    url = await serve(create_instance_app("A", picky, fault_api=True))
    assert (await _send(session, url, "f", "ok"))[1]["seen"] == 1
    await _call(session, "PUT", url + FAULTS, json={"fail_rate": 1, "retry_after": 2})
    status, body, headers = await _call(
        session, "POST", f"{url}{SESSIONS}/f/messages", json={"payload": "ok"}
    )
    assert (status, _code(body), headers["Retry-After"]) == (503, "injected_fault", "2")
    await _call(session, "PUT", url + FAULTS, json={"fail_rate": 0})
    status, body = await _send(session, url, "f", "bad")
    assert (status, _code(body)) == (422, "bad_payload")
    status, body = await _send(session, url, "f", "set")
    assert (status, _code(body)) == (500, "handler_error")
    assert (await _send(session, url, "f", "ok"))[1]["seen"] == 2
    assert (await _history(session, url, "f"))["seen"] == 2


async def test_message_queued_past_deadline_never_runs(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """A message still waiting for its session's turn at its deadline is a 504, not run."""
    release = asyncio.Event()
    ran: list[Any] = []

    async def gated(payload: Any) -> Any:
        ran.append(payload)
        if payload == "slow":
            await release.wait()
        return payload

    url = await serve(create_instance_app("A", gated))
    slow = asyncio.create_task(_send(session, url, "d", "slow"))
    await _wait_inflight(session, url, 1)
    status, body = await _send(session, url, "d", "late", headers={"X-Deadline-Ms": "20"})
    assert (status, _code(body)) == (504, "deadline_exceeded")
    release.set()
    assert (await slow)[1]["seen"] == 1
    assert (await _send(session, url, "d", "next"))[1]["seen"] == 2
    assert ran == ["slow", "next"]


async def test_message_body_over_limit_is_413(serve: Serve, session: aiohttp.ClientSession) -> None:
    """The body limit applies to session messages like tasks."""
    url = await serve(create_instance_app("A", echo, max_body_bytes=100))
    status, body = await _send(session, url, "s", "x" * 200)
    assert (status, _code(body)) == (413, "payload_too_large")


async def test_demo_in_a_session_echoes_with_session(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """The demo handler echoes like echo in a session, and its search ignores the session."""
    url = await serve(create_instance_app("A", resolve_handler("demo")))
    _, body = await _send(session, url, "d", "hi")
    assert body["result"]["session"] == {"id": "d", "seen": 1}
    _, body = await _send(session, url, "d", {"query": "raft", "k": 1})
    assert set(body["result"]) == {"instance", "shard", "matches"}
    assert body["seen"] == 2


def test_session_context_seen_counts_trimmed() -> None:
    """SessionContext.seen is the kept history plus what was trimmed; plain tasks have none."""
    context = SessionContext("s", (Exchange(1, 2),), trimmed=4)
    assert context.seen == 5
    assert SessionContext("s").seen == 0
    assert HandlerContext("A", "r").session is None


def test_store_limits_must_be_positive() -> None:
    """Zero limits are refused when the app is built."""
    with pytest.raises(ValueError, match="max_sessions"):
        create_instance_app("A", echo, max_sessions=0)
    with pytest.raises(ValueError, match="max_history"):
        SessionStore(max_history=0)


def test_store_repr_and_open() -> None:
    """open() creates once and returns the same session; the reprs show live state."""
    store = SessionStore(max_sessions=5, max_history=2)
    first = store.open("a")
    assert store.open("a") is first
    first.record("p", "r")
    assert repr(first) == "<Session a seen=1 kept=1 idle>"
    assert "a" in store
    assert store.close("a")
    assert not store.close("a")
    assert repr(store) == (
        "<SessionStore open=0 evicted=0 tombstones=0 max_sessions=5 max_history=2>"
    )


@pytest.mark.parametrize(
    ("text", "valid"),
    [("a", True), ("9z", True), ("a.b:c-d_e", True), ("_a", False), ("a\n", False), ("", False)],
)
def test_is_valid_session_id(text: str, valid: bool) -> None:
    """Session ids start with a letter or digit; a trailing newline does not sneak through."""
    assert is_valid_session_id(text) is valid


def test_parse_history_keeps_order() -> None:
    """parse_history turns exchanges into Exchange values in order."""
    body = {"history": [{"payload": 1, "result": "a"}, {"payload": None, "result": None}]}
    assert parse_history(body) == [Exchange(1, "a"), Exchange(None, None)]
