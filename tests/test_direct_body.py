"""``DirectBody``: a streamed response's chunks written beside ASGI ``send``, on a real uvicorn
server with our protocol and raw sockets. It writes only when an awaited ``send`` would write
at once, framed as ``send`` frames them, and writes nothing otherwise."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import uvicorn

from openclaw_orchestrator.server.direct_body import DIRECT_BODY, DirectBody, direct_body
from openclaw_orchestrator.server.hosting import BackgroundServer, bind_socket

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

WAIT = 5.0  # the bound on every wait: far above what any step takes
CHUNK = 64 * 1024


def asgi(handler: App) -> App:
    """A raw ASGI app: ``handler`` for HTTP requests, the lifespan protocol acknowledged."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await handler(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


def ours(scope: Scope) -> DirectBody:
    """The request's DirectBody, which our protocol always offers."""
    direct = direct_body(scope)
    assert direct is not None
    return direct


def start(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    """A 200 ``http.response.start`` message with ``headers``."""
    return {"type": "http.response.start", "status": 200, "headers": list(headers)}


def body(data: bytes, *, more: bool) -> dict[str, Any]:
    """An ``http.response.body`` message."""
    return {"type": "http.response.body", "body": data, "more_body": more}


def request(path: str = "/", *, method: str = "GET", close: bool = False) -> bytes:
    """A raw HTTP/1.1 request, keep-alive unless ``close``."""
    connection = "Connection: close\r\n" if close else ""
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{connection}\r\n".encode()


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection to the server at ``url``, closed afterwards."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> dict[str, str]:
    """A 200 response's head, strictly at the start of the stream: its headers."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    assert status.startswith("HTTP/1.1 200 "), head
    return {name.lower(): value for name, value in (line.split(": ", 1) for line in lines if line)}


async def read_chunks(reader: asyncio.StreamReader) -> list[bytes]:
    """A chunked body, parsed strictly, up to and including its last (empty) chunk."""
    chunks: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line[:-2], 16)
        data = await reader.readexactly(size + 2)
        assert data[size:] == b"\r\n", data[-10:]
        if size == 0:
            return chunks
        chunks.append(data[:size])


PIECES = [
    b"asgi-1",
    b"direct-2",
    b"direct-3" * 5,  # 40 bytes: a two-digit hex size
    b"from-callback-4",
    b"asgi-5",
    b"d6",
    b"asgi-7-last",
]


async def test_direct_writes_interleave_with_asgi_sends_as_chunks(
    session: aiohttp.ClientSession,
) -> None:
    """Chunks written through DirectBody between awaited sends (one from a loop callback, as
    the relay does) arrive in order, each as one HTTP/1.1 chunk, between the ASGI body
    messages; the response ends with the last chunk, an aiohttp client decodes the whole
    body, and the keep-alive connection serves a second request the same way."""
    written: list[bool] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        direct = ours(scope)
        loop = asyncio.get_running_loop()
        await send(start((b"content-type", b"application/octet-stream")))
        await send(body(PIECES[0], more=True))
        written.append(direct.write(PIECES[1]))
        written.append(direct.write(PIECES[2]))
        from_callback: asyncio.Future[bool] = loop.create_future()
        loop.call_soon(lambda: from_callback.set_result(direct.write(PIECES[3])))
        written.append(await from_callback)
        await send(body(PIECES[4], more=True))
        written.append(direct.write(PIECES[5]))
        await send(body(PIECES[6], more=False))

    async with BackgroundServer(asgi(handler)) as url, asyncio.timeout(WAIT):
        async with connect(url) as (reader, writer):
            for _ in range(2):
                writer.write(request())
                head = await read_head(reader)
                assert head["transfer-encoding"] == "chunked"
                assert "content-length" not in head
                assert await read_chunks(reader) == PIECES
        async with session.get(url) as response:
            assert response.status == 200
            assert await response.read() == b"".join(PIECES)
    assert written == [True] * 12


async def test_write_refuses_whenever_send_would_not_write_a_chunk() -> None:
    """``write`` returns False and writes nothing before ``http.response.start``, after the
    response completed, for a Content-Length (not chunked) response, and for HEAD even with
    ``transfer-encoding: chunked``; in the midst of the chunked response it writes, but an
    earlier request's DirectBody does not write into a later response on the connection.
    Every response parses strictly off one keep-alive connection, which ends at EOF right
    after the last one: no stray bytes anywhere."""
    seen: list[tuple[str, list[bool]]] = []
    earlier: list[DirectBody] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        direct = ours(scope)
        path = scope["path"]
        if path == "/chunked":
            before = [direct.writable, direct.write(b"before")]
            await send(start())
            during = [direct.writable, direct.write(b"during")]
            during += [stale.write(b"stale") for stale in earlier]
            earlier.append(direct)
            await send(body(b"end", more=False))
            seen.append((path, [*before, *during, direct.writable, direct.write(b"after")]))
        elif path == "/fixed":
            await send(start((b"content-length", b"5")))
            seen.append((path, [direct.writable, direct.write(b"x")]))
            await send(body(b"fixed", more=False))
        else:  # HEAD /head: chunked announced, but a HEAD response has no body
            await send(start((b"transfer-encoding", b"chunked")))
            seen.append((f"{scope['method']} {path}", [direct.writable, direct.write(b"x")]))
            await send(body(b"", more=False))

    async with (
        BackgroundServer(asgi(handler)) as url,
        asyncio.timeout(WAIT),
        connect(url) as (reader, writer),
    ):
        writer.write(request("/chunked"))
        assert (await read_head(reader))["transfer-encoding"] == "chunked"
        assert await read_chunks(reader) == [b"during", b"end"]
        writer.write(request("/fixed"))
        assert (await read_head(reader))["content-length"] == "5"
        assert await reader.readexactly(5) == b"fixed"
        writer.write(request("/head", method="HEAD"))
        assert (await read_head(reader))["transfer-encoding"] == "chunked"
        writer.write(request("/chunked"))
        await read_head(reader)
        assert await read_chunks(reader) == [b"during", b"end"]
        writer.write(request("/fixed", close=True))
        await read_head(reader)
        assert await reader.read() == b"fixed"  # then EOF: nothing else was written
    assert seen == [
        ("/chunked", [False, False, True, True, False, False]),
        ("/fixed", [False, False]),
        ("HEAD /head", [False, False]),
        ("/chunked", [False, False, True, True, False, False, False]),  # the first's: False
        ("/fixed", [False, False]),
    ]


def numbered(index: int) -> bytes:
    """A 64 KiB chunk made of its own index, so order and completeness show."""
    return index.to_bytes(4, "big") * (CHUNK // 4)


async def test_write_stops_at_back_pressure_and_send_waits_for_drain() -> None:
    """While the client reads nothing, direct writes of 64 KiB chunks are accepted until the
    connection is paused for back-pressure (well within 2,000 chunks); then ``write`` returns
    False, and an awaited ``send`` of the next chunk waits. Once the client reads, the send
    completes, ``write`` works again, and every chunk arrives whole and in order."""
    most = 2000
    paused = asyncio.Event()
    state: dict[str, Any] = {}

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        direct = ours(scope)
        await send(start())
        count = 0
        while count < most and direct.write(numbered(count)):
            count += 1
            await asyncio.sleep(0)  # let the client take what it will before it stops
        state.update(count=count, writable=direct.writable)
        paused.set()
        await send(body(numbered(count), more=True))
        state["sent"] = True
        state["resumed"] = [direct.writable, direct.write(numbered(count + 1))]
        await send(body(b"", more=False))

    async with (
        BackgroundServer(asgi(handler)) as url,
        asyncio.timeout(WAIT),
        connect(url) as (reader, writer),
    ):
        writer.write(request())
        await paused.wait()
        await asyncio.sleep(0.05)  # room for a send that wrongly ignores back-pressure
        assert "sent" not in state
        assert await read_head(reader)
        chunks = await read_chunks(reader)
    count = state["count"]
    assert 0 < count < most
    assert state["writable"] is False
    assert state["resumed"] == [True, True]
    assert len(chunks) == count + 2
    assert [i for i, chunk in enumerate(chunks) if chunk != numbered(i)] == []


async def test_write_refuses_once_the_client_has_gone() -> None:
    """After the client disconnects mid-response (seen by the app as ``http.disconnect``
    from ``receive``), ``write`` returns False; before that it wrote."""
    first_sent = asyncio.Event()
    done = asyncio.Event()
    state: dict[str, bool] = {}

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        direct = ours(scope)
        await send(start())
        await send(body(b"first", more=True))
        state["before"] = direct.write(b"second")
        first_sent.set()
        async with asyncio.timeout(WAIT):
            while (await receive())["type"] != "http.disconnect":
                pass
        state.update(writable=direct.writable, after=direct.write(b"late"))
        done.set()

    async with BackgroundServer(asgi(handler)) as url, asyncio.timeout(WAIT):
        async with connect(url) as (reader, writer):
            writer.write(request())
            await first_sent.wait()
            await read_head(reader)
            for expected in (b"first", b"second"):
                size = await reader.readuntil(b"\r\n")
                assert await reader.readexactly(int(size[:-2], 16) + 2) == expected + b"\r\n"
        await done.wait()
    assert state == {"before": True, "writable": False, "after": False}


class _PlainServer(uvicorn.Server):
    """Plain uvicorn in the test's loop, leaving the process's signals alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def test_no_direct_body_without_our_protocol() -> None:
    """``direct_body`` finds nothing in a scope without extensions, without ours, or with
    something else under our name; and plain uvicorn (httptools, not our protocol) offers
    no DirectBody, so callers stay on ASGI ``send``."""
    assert direct_body({"type": "http"}) is None
    assert direct_body({"type": "http", "extensions": {}}) is None
    assert direct_body({"type": "http", "extensions": {"http.response.trailers": {}}}) is None
    assert direct_body({"type": "http", "extensions": {DIRECT_BODY: object()}}) is None

    found: list[DirectBody | None] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        found.append(direct_body(scope))
        await send(start((b"content-length", b"2")))
        await send(body(b"ok", more=False))

    config = uvicorn.Config(asgi(handler), http="httptools", lifespan="off", log_config=None)
    server = _PlainServer(config)
    sock = bind_socket("127.0.0.1", 0)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(WAIT):  # the socket listens already: no wait for startup
            async with connect(f"http://127.0.0.1:{sock.getsockname()[1]}") as (reader, writer):
                writer.write(request(close=True))
                await read_head(reader)
                assert await reader.read() == b"ok"
    finally:
        server.should_exit = True
        async with asyncio.timeout(WAIT):
            await task
        sock.close()
    assert found == [None]
