"""LeanHttp, the keep-alive HTTP/1.1 client of the worker driver's hot calls, on raw sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from openclaw_orchestrator.errors import InstanceDownError, InstanceError, TimeoutExceededError
from openclaw_orchestrator.server.drivers.instance_transport import lean_base
from openclaw_orchestrator.server.drivers.lean import (
    BadResponse,
    ConnectFailed,
    LeanHttp,
    Target,
    map_lean_errors,
)

OK = b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\nRetry-After: 3\r\n\r\n{"ok": true}'


async def _serve(answer: Callable[[bytes], bytes | None], *, close: bool = False) -> asyncio.Server:
    """A loopback server answering each request (read as one chunk) with ``answer(request)``;
    None means never answer. ``close`` closes the connection after each reply."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            reply = answer(data)
            if reply is None:
                continue  # never answer; the loop ends when the client hangs up
            writer.write(reply)
            await writer.drain()
            if close:
                writer.close()
                return
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _target(server: asyncio.Server) -> Target:
    port = server.sockets[0].getsockname()[1]
    return Target("127.0.0.1", port, b"/api/instance/task", f"127.0.0.1:{port}".encode())


@pytest.fixture
async def lean() -> AsyncIterator[LeanHttp]:
    """A client closed after the test."""
    client = LeanHttp()
    yield client
    await client.aclose()


async def test_keeps_one_connection_alive_across_requests(lean: LeanHttp) -> None:
    """Two sequential posts share one pooled connection; status, Retry-After, body intact."""
    seen: list[bytes] = []
    server = await _serve(lambda req: seen.append(req) or OK)
    async with server:
        for _ in range(2):
            reply = await lean.post(_target(server), b"X-Request-ID: r1\r\n", b"{}", timeout=2)
            assert (reply.status, reply.retry_after, reply.body) == (200, "3", b'{"ok": true}')
        assert repr(lean) == "<LeanHttp [0 busy, 1 idle connections, 0 waiting, 1 hosts]>"
    assert seen[0].startswith(b"POST /api/instance/task HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length: 2\r\n" in seen[0]
    assert b"X-Request-ID: r1\r\n" in seen[0]
    assert seen[0].endswith(b"\r\n\r\n{}")


async def test_chunked_and_close_delimited_replies(lean: LeanHttp) -> None:
    """A chunked body is reassembled; a body ended by closing the connection is complete."""
    chunked = (
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n5\r\n": 1}\r\n0\r\n\r\n'
    )
    async with await _serve(lambda _: chunked) as server:
        assert (await lean.post(_target(server), b"", b"{}", timeout=2)).body == b'{"a": 1}'
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[1]"
    async with await _serve(lambda _: until_close, close=True) as server:
        assert (await lean.post(_target(server), b"", b"{}", timeout=2)).body == b"[1]"
        idle_chunked_only = "<LeanHttp [0 busy, 1 idle connections, 0 waiting, 2 hosts]>"
        assert repr(lean) == idle_chunked_only


async def test_timeout_closes_the_connection(lean: LeanHttp) -> None:
    """A server that never answers: TimeoutError at the deadline, nothing left in the pool."""
    async with await _serve(lambda _: None) as server:
        with pytest.raises(TimeoutError):
            await lean.post(_target(server), b"", b"{}", timeout=0.1)
    assert repr(lean).startswith("<LeanHttp [0 busy, 0 idle")


async def test_failures_map_to_the_error_tree(lean: LeanHttp) -> None:
    """Refused -> instance_down; closed mid-reply -> instance_down; garbage -> instance error;
    the deadline -> timeout."""
    async with await _serve(lambda _: b"") as server:
        dead = _target(server)
    with pytest.raises(ConnectFailed):
        await lean.post(dead, b"", b"{}", timeout=2)
    with (
        pytest.raises(InstanceDownError, match="cannot connect to instance A"),
        map_lean_errors("A"),
    ):
        await lean.post(dead, b"", b"{}", timeout=2)
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"
    async with await _serve(lambda _: cut, close=True) as server:
        with pytest.raises(InstanceDownError, match="connection to instance A failed"):
            with map_lean_errors("A"):
                await lean.post(_target(server), b"", b"{}", timeout=2)
    async with await _serve(lambda _: b"NOT HTTP AT ALL\r\n\r\n") as server:
        with pytest.raises(InstanceError, match="instance A failed") as info, map_lean_errors("A"):
            await lean.post(_target(server), b"", b"{}", timeout=2)
        assert isinstance(info.value.__cause__, BadResponse)
    with pytest.raises(TimeoutExceededError), map_lean_errors("A"):
        raise TimeoutError


@pytest.mark.parametrize(
    ("base", "lean_parts"),
    [
        ("http://127.0.0.1:8001", ("127.0.0.1", 8001, b"127.0.0.1:8001", b"")),
        ("http://localhost/prefix/", ("localhost", 80, b"localhost", b"/prefix")),
        ("http://[::1]:9000", ("::1", 9000, b"[::1]:9000", b"")),
        ("https://127.0.0.1:8001", None),
        ("http://user:secret@127.0.0.1:8001", None),
        ("http://127.0.0.1:8001/?q=1", None),
    ],
)
def test_which_urls_go_lean(base: str, lean_parts: tuple[object, ...] | None) -> None:
    """Plain http URLs go through the lean client; https, userinfo and queries through aiohttp."""
    assert lean_base(base) == lean_parts


async def test_closed_client_refuses_misuse() -> None:
    """Posting after aclose is a programming error, not an instance failure."""
    client = LeanHttp()
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.post(Target("127.0.0.1", 9, b"/", b"x"), b"", b"{}", timeout=1)
