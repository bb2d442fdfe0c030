"""LeanHttp's bounds, on raw loopback sockets: connections per host (requests queue for a
free one within their deadline) and reply size (reading stops at the limit)."""

from __future__ import annotations

import asyncio
import contextlib
import errno

import pytest

from openclaw_orchestrator.errors import OverloadedError, ReplyTooLargeError
from openclaw_orchestrator.server.drivers.base import map_client_errors
from openclaw_orchestrator.server.drivers.lean import (
    LeanHttp,
    PoolExhausted,
    ReplyTooLarge,
    Target,
    map_lean_errors,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


async def _server(
    reply: bytes, *, delay: float = 0.0, hold_first: bool = False
) -> tuple[asyncio.Server, list[int]]:
    """A server answering ``reply`` after ``delay`` (the first connection never, with
    ``hold_first``); the list counts connections accepted."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        first = len(accepted) == 1
        while await reader.read(65536):
            if hold_first and first:
                continue
            await asyncio.sleep(delay)
            writer.write(reply)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), accepted


def _target(server: asyncio.Server) -> Target:
    port = server.sockets[0].getsockname()[1]
    return Target("127.0.0.1", port, b"/", f"127.0.0.1:{port}".encode())


async def test_requests_over_max_connections_wait_for_a_free_one() -> None:
    """Four concurrent posts with max_connections=1 all succeed over one connection."""
    server, accepted = await _server(OK, delay=0.02)
    lean = LeanHttp(max_connections=1)
    async with server:
        replies = await asyncio.gather(
            *(lean.post(_target(server), b"", b"{}", timeout=5) for _ in range(4))
        )
        assert [r.status for r in replies] == [200] * 4
        assert len(accepted) == 1
    await lean.aclose()


async def test_no_free_connection_before_the_deadline_is_overloaded() -> None:
    """With the one allowed connection stuck, the next post gives up at its deadline as the
    orchestrator's overload, not the instance's timeout; the queue is left empty."""
    server, _ = await _server(OK, hold_first=True)
    lean = LeanHttp(max_connections=1)
    async with server:
        stuck = asyncio.create_task(lean.post(_target(server), b"", b"{}", timeout=5))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolExhausted):
            await lean.post(_target(server), b"", b"{}", timeout=0.1)
        with pytest.raises(OverloadedError, match=r"all 1 \(instances.max_connections\)"):
            with map_lean_errors("A"):
                await lean.post(_target(server), b"", b"{}", timeout=0.1)
        assert "0 waiting" in repr(lean)
        stuck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stuck  # its connection is closed, so the server's handler ends too
        await lean.aclose()
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["declared", "chunked"],
)
async def test_a_reply_over_the_limit_stops_and_drops_the_connection(head: bytes) -> None:
    """A 10 MB reply over a 64 KiB limit: ReplyTooLarge (reply_too_large), the connection
    closed, and the next post opens a new one."""
    if b"chunked" in head:
        body = b"".join(b"%x\r\n%s\r\n" % (65536, b"x" * 65536) for _ in range(160))
    else:
        body = b"x" * 10_000_000
    server, accepted = await _server(head + body)
    lean = LeanHttp()
    async with server:
        with pytest.raises(ReplyTooLarge):
            await lean.post(_target(server), b"", b"{}", timeout=5, max_reply=65536)
        with pytest.raises(ReplyTooLargeError, match="limit of 65536 bytes"):
            with map_lean_errors("A"):
                await lean.post(_target(server), b"", b"{}", timeout=5, max_reply=65536)
        assert len(accepted) == 2
        assert repr(lean).startswith("<LeanHttp [0 busy, 0 idle")
    await lean.aclose()


@pytest.mark.parametrize(
    "exc",
    [OSError(code, "out of it") for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS)]
    + [OSError(errno.ENOMEM, "out of it"), MemoryError()],
)
def test_local_resource_errors_are_overloaded_not_instance_down(exc: Exception) -> None:
    """EMFILE/ENFILE/ENOBUFS/ENOMEM (or MemoryError) reaching an instance are the
    orchestrator's overload, in both clients' error maps."""
    for mapping in (map_lean_errors, map_client_errors):
        with pytest.raises(OverloadedError) as info, mapping("A"):
            raise exc
        assert info.value.retry_after == 1.0
