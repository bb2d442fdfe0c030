"""Streamed routes and session sends over HTTP, against a live orchestrator and real reference
instances running the built-in ``stream`` handler (one cluster for the whole module).

The instance's text comes back as ``delta`` events in order, then one ``result`` event with
the usual body; failures before the stream begins stay JSON errors, after it an ``error``
event; a client that goes away stops the work on the instance; a durable run records the
deltas as its own events."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from pydantic import SecretStr
from starlette.datastructures import State
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openclaw_orchestrator.sdk.events import RunEvent, SseParser
from openclaw_orchestrator.server.api import event_stream
from openclaw_orchestrator.server.api.fastpath import FastPaths
from openclaw_orchestrator.server.api.security import Authenticator
from openclaw_orchestrator.server.direct_body import DIRECT_BODY, DirectBody
from tests.api.conftest import ORCHESTRATOR, Cluster, start_cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = "the quick brown fox jumps over the lazy dog"
WORDS = ["the ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog"]
SSE = "text/event-stream"


@pytest.fixture(scope="module")
def fast_paths(request: pytest.FixtureRequest) -> bool:
    """The side of the fast paths this module's cluster is on (overrides the conftest's
    per-test fixture, so each side starts one cluster for the whole module)."""
    return bool(getattr(request, "param", True))


@pytest.fixture(scope="module", params=[True, False], ids=["direct", "asgi"])
def direct(request: pytest.FixtureRequest) -> bool:
    """The side of the relay's seam this module's cluster is on: deltas written from the
    instance connection's callback through the server's ``DirectBody`` (``direct``), or
    with the extension taken out of the scope, through the ASGI ``send`` (``asgi``), as
    under a server that does not offer it."""
    return bool(request.param)


class _NoDirectBody:
    """Middleware taking the ``DirectBody`` extension out of every request's scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if k != DIRECT_BODY}
        await self.app({**scope, "extensions": extensions}, receive, send)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(fast_paths: bool, direct: bool) -> AsyncIterator[Cluster]:
    """Two reference instances A and B (``stream`` handler) behind an orchestrator."""
    middleware = [] if direct else [Middleware(_NoDirectBody)]
    async with start_cluster(
        "AB", handler="stream", fast_paths=fast_paths, middleware=middleware
    ) as c:
        yield c


async def events(
    live: Cluster, path: str, body: Any, *, token: str | None = None, **headers: str
) -> tuple[int, str, Any]:
    """POST ``body``: (status, content type, the events of a stream or the JSON body)."""
    auth = {"Authorization": f"Bearer {token}"} if token else live.headers
    async with live.http.post(
        live.url + path,
        data=orjson.dumps(body),
        headers={**auth, "Content-Type": "application/json", **headers},
    ) as resp:
        kind = resp.headers.get("Content-Type", "").split(";")[0]
        raw = await resp.read()
    if kind != SSE:
        return resp.status, kind, orjson.loads(raw)
    return resp.status, kind, list(SseParser().feed(raw))


def texts(got: list[RunEvent], instance: str) -> list[str]:
    """The text of every delta event, each checked to come from ``instance``."""
    assert all(e.data["instance"] == instance for e in got if e.type == "delta")
    return [e.data["delta"]["text"] for e in got if e.type == "delta"]


async def test_route_relays_the_instance_output_then_the_result(live: Cluster) -> None:
    status, kind, got = await events(
        live,
        "/api/orchestrator/route",
        {"payload": {"text": TEXT}, "instances": "A", "stream": True},
    )
    assert (status, kind) == (200, SSE)
    assert texts(got, "A") == WORDS
    last = got[-1]
    assert [e.type for e in got].count("result") == 1
    assert last.type == "result"
    assert (last.data["instance"], last.data["result"]) == ("A", {"text": TEXT})
    assert [a["outcome"] for a in last.data["attempts"]] == ["ok"]


async def test_the_accept_header_asks_for_the_stream_too(live: Cluster) -> None:
    body = {"payload": {"text": TEXT, "chunks": 3}, "instances": "B"}
    status, kind, got = await events(live, "/api/orchestrator/route", body, Accept=SSE)
    assert (status, kind) == (200, SSE)
    assert "".join(texts(got, "B")) == TEXT
    assert len(texts(got, "B")) == 3
    status, kind, plain = await events(live, "/api/orchestrator/route", body)
    assert (status, kind, plain["result"]) == (200, "application/json", {"text": TEXT})


async def test_an_instance_that_does_not_stream_gives_one_result_event(live: Cluster) -> None:
    """The ``stream`` handler emits nothing for an empty text: the instance answers plain
    JSON, and the caller gets the result as the only event."""
    status, _, got = await events(
        live, "/api/orchestrator/route", {"payload": {"text": ""}, "stream": True}
    )
    assert status == 200
    assert [e.type for e in got] == ["result"]
    assert got[0].data["result"] == {"text": ""}


async def test_failures_before_the_stream_are_json(live: Cluster) -> None:
    status, kind, body = await events(
        live, "/api/orchestrator/route", {"payload": {}, "instances": "Z", "stream": True}
    )
    assert (status, kind, body["error"]["field"]) == (400, "application/json", "instances")
    status, kind, body = await events(
        live, "/api/orchestrator/sessions/nope/send", {"data": {}, "stream": True}
    )
    assert (status, kind, body["error"]["code"]) == (404, "application/json", "not_found")


async def test_a_failure_once_streaming_is_the_last_event(live: Cluster) -> None:
    """The instance refuses the payload after the attempt began: an ``error`` event with
    the error's JSON shape and status ends the stream."""
    status, _, got = await events(
        live, "/api/orchestrator/route", {"payload": {"text": 7}, "instances": "A", "stream": True}
    )
    assert status == 200
    assert [e.type for e in got] == ["error"]
    error = got[0].data
    assert (error["status"], error["error"]["code"], error["error"]["upstream_status"]) == (
        400,
        "invalid_request",
        400,
    )
    assert [a["instance"] for a in error["error"]["details"]["attempts"]] == ["A"]


async def test_session_send_streams_and_records_the_reply(live: Cluster) -> None:
    status, spawned = await live.post("/api/orchestrator/sessions/spawn", {"instance": "A"})
    assert status == 201
    sid, token = spawned["session_id"], spawned["token"]
    path = f"/api/orchestrator/sessions/{sid}/send"
    status, kind, got = await events(
        live, path, {"data": {"text": TEXT}, "stream": True}, token=token
    )
    assert (status, kind) == (200, SSE)
    assert texts(got, "A") == WORDS
    assert (got[-1].type, got[-1].data["seq"], got[-1].data["reply"]) == (
        "result",
        1,
        {"text": TEXT},
    )
    seed = {"sessionId": sid, "data": {"text": "two words"}}
    status, kind, got = await events(
        live, "/api/orchestrator/sessions/send", seed, token=token, Accept=SSE
    )
    assert (status, kind, texts(got, "A")) == (200, SSE, ["two ", "words"])
    assert got[-1].data["seq"] == 2
    status, page = await live.get(f"/api/orchestrator/sessions/{sid}/history")
    assert [(m["data"]["text"], m["reply"]["text"]) for m in page["messages"]] == [
        (TEXT, TEXT),
        ("two words", "two words"),
    ]


async def test_a_client_that_goes_away_stops_the_work(live: Cluster) -> None:
    """The caller drops the connection after the first delta of a slow stream (ten pieces,
    five seconds apart): the orchestrator's attempt and the instance's task end long before
    the stream would have."""
    instance = live.servers["A"].url
    body = {"payload": {"text": "x" * 10, "chunks": 10, "delay_ms": 5000}, "instances": "A"}
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            live.url + "/api/orchestrator/route",
            data=orjson.dumps({**body, "stream": True}),
            headers={**live.headers, "Content-Type": "application/json"},
        )
        parser, first = SseParser(), None
        async for chunk in resp.content.iter_any():
            if got := list(parser.feed(chunk)):
                first = got[0]
                break
        resp.close()
    assert first is not None
    assert first.type == "delta"
    record = live.service.registry.get("A")
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 20  # well before the 45 s the stream would take
    while True:
        async with live.http.get(instance + "/api/health/check") as r:
            health = await r.json()
        if (record.outstanding, health["inflight"]) == (0, 0) or loop.time() > give_up:
            break
        await asyncio.sleep(0.02)
    assert (record.outstanding, health["inflight"]) == (0, 0)


class _DirectWrites:
    """Every ``DirectBody.write``'s result, in order (patched in for the test); ``refused``
    is set at the first False."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.results: list[bool] = []
        self.refused = asyncio.Event()
        write = DirectBody.write

        def spying(direct: DirectBody, body: bytes) -> bool:
            written = write(direct, body)
            self.results.append(written)
            if not written:
                self.refused.set()
            return written

        monkeypatch.setattr(DirectBody, "write", spying)


async def test_the_relay_writes_from_the_callback_where_the_server_offers_it(
    live: Cluster, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the server's ``DirectBody`` the deltas of a paced stream are written through
    it; without, none are (they go through the ASGI ``send``); the events are the same."""
    writes = _DirectWrites(monkeypatch)
    body = {"payload": {"text": TEXT, "delay_ms": 5}, "instances": "A", "stream": True}
    status, _, got = await events(live, "/api/orchestrator/route", body)
    assert status == 200
    assert texts(got, "A") == WORDS
    assert got[-1].type == "result"
    assert (True in writes.results) is direct  # the first may come with the head: not all
    assert all(writes.results)


async def test_a_client_that_reads_slowly_misses_nothing(
    fast_paths: bool, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that reads nothing for a while, behind small socket buffers: the relay's
    writes back up (the direct writes stop and the awaited ``send`` waits, the instance's
    stream is paused behind it), and once it reads, every delta is there, in order. (Its
    own cluster: the orchestrator's accepted sockets get an 8 KiB send buffer.)"""
    writes = _DirectWrites(monkeypatch)
    text = "".join(f"w{i:04d}-" + "x" * 1000 + " " for i in range(300))  # 300 KB
    paced = {"text": text, "chunks": 300, "delay_ms": 2}  # the read loop waits between them
    body = {"payload": paced, "instances": "B", "stream": True}
    middleware = [] if direct else [Middleware(_NoDirectBody)]

    async with start_cluster(
        "B", handler="stream", fast_paths=fast_paths, middleware=middleware
    ) as small:
        listener = small.servers[ORCHESTRATOR].listening_socket
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        raw = await _read_slowly(small, orjson.dumps(body), writes.refused if direct else None)
    assert raw.startswith(b"HTTP/1.1 200")
    got = list(SseParser().feed(_unchunk(raw[raw.index(b"\r\n\r\n") + 4 :])))
    assert "".join(texts(got, "B")) == text
    assert got[-1].type == "result"
    assert (True in writes.results, False in writes.results) == (direct, direct)  # both ways


async def _read_slowly(live: Cluster, request: bytes, backed_up: asyncio.Event | None) -> bytes:
    """POST a streamed route with a 4 KiB receive buffer, read nothing until ``backed_up``
    is set (at most 10 s; half a second when None), then read the whole raw reply
    (``Connection: close``)."""
    host, port = live.url.removeprefix("http://").split(":")
    head = (
        f"POST /api/orchestrator/route HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {live.api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(request)}\r\nConnection: close\r\n\r\n"
    )
    loop = asyncio.get_running_loop()
    raw = bytearray()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, head.encode() + request)
        async with asyncio.timeout(10):  # the relay fills the sockets and its buffer
            await (asyncio.sleep(0.5) if backed_up is None else backed_up.wait())
        async with asyncio.timeout(20):
            while chunk := await loop.sock_recv(sock, 65536):
                raw += chunk
    return bytes(raw)


def _unchunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body, decoded."""
    out, at = bytearray(), 0
    while True:
        line_end = body.index(b"\r\n", at)
        size = int(body[at:line_end], 16)
        if size == 0:
            return bytes(out)
        out += body[line_end + 2 : line_end + 2 + size]
        at = line_end + 2 + size + 2


async def test_a_streamed_run_records_delta_events(live: Cluster) -> None:
    status, run = await live.post(
        "/api/orchestrator/route",
        {"payload": {"text": TEXT}, "instances": "B", "async": True, "stream": True},
    )
    assert status == 202
    async with live.http.get(
        live.url + f"/api/orchestrator/runs/{run['run_id']}/events", headers=live.headers
    ) as resp:
        raw = await resp.read()
    got = list(SseParser().feed(raw))
    deltas = [e.data for e in got if e.type == "delta"]
    assert deltas
    assert all(d["instance"] == "B" for d in deltas)
    pieces = [piece for d in deltas for piece in d["deltas"]]
    assert "".join(p["text"] for p in pieces) == TEXT
    types = [e.type for e in got]
    assert types.index("result") > max(i for i, t in enumerate(types) if t == "delta")
    assert got[-1].data["result"]["result"] == {"text": TEXT}


async def test_a_streamed_send_run_records_delta_events(live: Cluster) -> None:
    status, spawned = await live.post("/api/orchestrator/sessions/spawn", {"instance": "B"})
    assert status == 201
    status, run = await live.post(
        f"/api/orchestrator/sessions/{spawned['session_id']}/send",
        {"data": {"text": "two words"}, "async": True, "stream": True},
    )
    assert status == 202
    async with live.http.get(
        live.url + f"/api/orchestrator/runs/{run['run_id']}/events", headers=live.headers
    ) as resp:
        got = list(SseParser().feed(await resp.read()))
    pieces = [p for e in got if e.type == "delta" for p in e.data["deltas"]]
    assert "".join(p["text"] for p in pieces) == "two words"
    assert got[-1].data["result"]["reply"] == {"text": "two words"}


async def test_a_streamed_route_takes_no_idempotency_key(live: Cluster) -> None:
    status, _, body = await events(
        live,
        "/api/orchestrator/route",
        {"payload": {"text": "a"}, "stream": True},
        **{"Idempotency-Key": "k1"},
    )
    assert (status, body["error"]["field"]) == (400, "Idempotency-Key")


async def test_keep_alive_comments_while_the_instance_is_quiet(
    live: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two deltas far apart the stream carries keep-alive comments (proxies close
    idle connections), and the events around them are whole."""
    monkeypatch.setattr(event_stream, "PING_EVERY", 0.05)
    body = {"payload": {"text": "ab", "chunks": 2, "delay_ms": 400}, "instances": "A"}
    async with live.http.post(
        live.url + "/api/orchestrator/route",
        data=orjson.dumps({**body, "stream": True}),
        headers={**live.headers, "Content-Type": "application/json"},
    ) as resp:
        raw = await resp.read()
    assert b": ping\r\n\r\n" in raw
    got = list(SseParser().feed(raw))
    assert [e.type for e in got] == ["delta", "delta", "result"]


async def test_a_streamed_route_never_reaches_the_framework(live: Cluster) -> None:
    """The fast path serves a streamed route itself (same events, a request id); a
    streamed route it cannot vouch for (an ``Idempotency-Key``) goes on to the app."""
    passed_on: list[Scope] = []

    async def framework(scope: Scope, receive: Receive, send: Send) -> None:
        passed_on.append(scope)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    state = State()
    state.orchestrator = live.service
    state.authenticator = Authenticator(SecretStr(live.api_key))
    paths = FastPaths(framework, state=state, max_body_bytes=4096)
    body = orjson.dumps({"instances": ["B"], "payload": {"text": "two words"}, "stream": True})
    headers = [
        (b"authorization", f"Bearer {live.api_key}".encode()),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"stream-1"),
    ]
    sent = await _asgi_stream(paths, body, headers)
    assert not passed_on
    assert sent[0]["status"] == 200
    head = dict(sent[0]["headers"])
    assert head[b"content-type"].startswith(b"text/event-stream")
    assert head[b"x-request-id"] == b"stream-1"
    got = list(SseParser().feed(b"".join(m.get("body", b"") for m in sent[1:])))
    assert [e.type for e in got] == ["delta", "delta", "result"]
    assert texts(got, "B") == ["two ", "words"]
    assert sent[-1].get("more_body", False) is False

    sent = await _asgi_stream(paths, body, [*headers, (b"idempotency-key", b"k")])
    assert (sent[0]["status"], len(passed_on)) == (299, 1)


async def _asgi_stream(
    app: FastPaths, body: bytes, headers: list[tuple[bytes, bytes]]
) -> list[Message]:
    """A streamed route through ``app`` as uvicorn would call it: the body, then a client
    that stays until the reply ends; the messages sent."""
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/orchestrator/route",
        "root_path": "",
        "headers": headers,
    }
    sent: list[Message] = []
    chunks: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    stays = asyncio.Event()

    async def receive() -> Message:
        if chunks:
            return chunks.pop(0)
        await stays.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    stays.set()
    return sent
