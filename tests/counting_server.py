"""A TCP server on 127.0.0.1 that only counts connections: proof that a refused connect
(instances.allow/deny) never reached the address."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def counting_server() -> AsyncIterator[tuple[int, list[int]]]:
    """Yields ``(port, accepted)``; ``accepted`` gains an item per connection (each dropped)."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], accepted
