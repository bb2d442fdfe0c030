"""``BoundedRequestProtocol``: request headers bounded in bytes and in time, on a real uvicorn
server and raw sockets; keep-alive, pipelining and slow responses work as before."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from openclaw_orchestrator.server.hosting import running, uvicorn_config
from openclaw_orchestrator.server.http_protocol import BoundedRequestProtocol, RequestLimits

LIMITS = RequestLimits(max_bytes=4096, timeout=0.3, body_timeout=0.5)


async def fast(request: Request) -> PlainTextResponse:
    """Answers at once, with the request's path."""
    return PlainTextResponse(request.url.path)


async def slow(request: Request) -> PlainTextResponse:
    """Answers after several header timeouts' worth of time."""
    await asyncio.sleep(LIMITS.timeout * 3)
    return PlainTextResponse("slow")


async def echo(request: Request) -> PlainTextResponse:
    """Answers with the request's body, once it has all arrived."""
    return PlainTextResponse(await request.body())


APP = Starlette(
    routes=[Route("/fast/{n}", fast), Route("/slow", slow), Route("/echo", echo, methods=["POST"])]
)


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """The port of ``APP`` served with :data:`LIMITS`."""
    async with running(APP, request_limits=LIMITS) as url:
        yield int(url.rsplit(":", 1)[1])


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response off the stream: (status, body), by its Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), body


def get(path: str, **headers: str) -> bytes:
    """A keep-alive GET request."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


async def test_keep_alive_and_pipelined_requests_are_served(port: int) -> None:
    """Pipelined requests are answered in order; a later request on the same connection too,
    even when the connection's headers add up to more than the per-request limit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/fast/1") + get("/fast/2") + get("/fast/3"))
    assert [await read_response(reader) for _ in range(3)] == [
        (200, b"/fast/1"),
        (200, b"/fast/2"),
        (200, b"/fast/3"),
    ]
    for n in range(4):  # 4 x 3 KB of headers on one connection: each request is within
        writer.write(get(f"/fast/{n}", **{"X-Pad": "p" * 3000}))
        assert await read_response(reader) == (200, f"/fast/{n}".encode())
    writer.close()


async def test_a_slow_response_is_not_cut_by_the_header_timer(port: int) -> None:
    """The application's time is not header time: a response slower than the header timeout
    arrives whole, and the connection serves the next request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/slow"))
    assert await read_response(reader) == (200, b"slow")
    writer.write(get("/fast/after"))
    assert await read_response(reader) == (200, b"/fast/after")
    writer.close()


@pytest.mark.parametrize("chunk", [1 << 20, 512])
async def test_headers_over_the_limit_get_431_and_the_connection_closes(
    port: int, chunk: int
) -> None:
    """Past 4 KiB of request line and headers, in one piece or dribbled: 431 with the JSON
    error naming ``headers``, then EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = get("/fast/x", **{"X-Big": "b" * 20_000})
    for start in range(0, len(request), chunk):
        writer.write(request[start : start + chunk])
        await writer.drain()
    status, body = await read_response(reader)
    assert status == 431
    assert json.loads(body)["error"] == {
        "code": "invalid_request",
        "message": "the request line and headers exceed 4096 bytes",
        "field": "headers",
    }
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_headers_that_take_too_long_get_408(port: int) -> None:
    """Half a request line, then silence: 408 once the header timeout has passed, then EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /fast/1 HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    status, body = await read_response(reader)
    assert status == 408
    assert json.loads(body)["error"]["field"] == "headers"
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_a_connection_that_never_sends_is_closed(port: int) -> None:
    """A connection opened and left silent is closed (no reply: nothing was asked)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_the_header_timer_starts_again_after_each_response(port: int) -> None:
    """After a response, the next request's headers are timed too: half a request there is
    a 408 (uvicorn's keep-alive timer stops at its first byte)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in range(2):
        writer.write(get(f"/fast/{n}"))
        assert await read_response(reader) == (200, f"/fast/{n}".encode())
    writer.write(b"GET /fast/3 HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    assert (await read_response(reader))[0] == 408
    writer.close()


def test_uvicorn_config_bounds_headers_by_default() -> None:
    """Every server started through ``uvicorn_config`` (serve, up, the reference instance,
    tests) uses the bounded protocol, with the configured limits when given."""
    default: Any = uvicorn_config(APP).http
    assert default is BoundedRequestProtocol
    configured: Any = uvicorn_config(APP, request_limits=LIMITS).http
    assert issubclass(configured, BoundedRequestProtocol)
    assert configured.limits == LIMITS


def post_head(length: int) -> bytes:
    """The request line and headers of a keep-alive POST /echo with a ``length``-byte body."""
    return f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()


async def test_a_body_in_pieces_within_the_body_timeout_is_served(port: int) -> None:
    """A body sent in pieces, all within the body timeout, reaches the application whole, and
    the connection serves the next request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post_head(6))
    for piece in (b"ab", b"cd", b"ef"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(LIMITS.body_timeout / 10)
    assert await read_response(reader) == (200, b"abcdef")
    writer.write(get("/fast/next"))
    assert await read_response(reader) == (200, b"/fast/next")
    writer.close()


async def test_a_trickled_body_gets_408_at_the_body_timeout(port: int) -> None:
    """A body trickled a byte at a time, each in time for an idle timer but the whole too
    slow: 408 naming ``body`` once the body timeout has passed, then EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post_head(100))

    async def trickle() -> None:
        for _ in range(100):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(LIMITS.body_timeout / 5)

    trickling = asyncio.create_task(trickle())
    try:
        status, body = await read_response(reader)
    finally:
        trickling.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await trickling
    assert status == 408
    assert json.loads(body)["error"]["field"] == "body"
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
