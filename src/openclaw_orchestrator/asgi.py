"""Raw ASGI helpers shared by the two fast paths (the orchestrator's hot endpoints and the
reference instance's task): read a request body under a size limit, and hand what was read
on to the full application as if it had never been read."""

from __future__ import annotations

from starlette.types import Message, Receive

__all__ = ["read_body", "replay"]


async def read_body(receive: Receive, limit: int) -> tuple[bytes, bool] | None:
    """``(body, more)``: the whole body (``more`` False), or what was read once it passed
    ``limit`` bytes while the client was still sending (``more`` True); None when the
    client left. A body longer than ``limit`` is the full app's to refuse (413): check
    ``more or len(body) > limit`` — one message may bring more than the limit at once."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        seen += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False
        if seen > limit:
            return b"".join(chunks), True


def replay(body: bytes, receive: Receive, *, more: bool = False) -> Receive:
    """A ``receive`` that hands ``body`` out once (``more``: the rest is still to come),
    then defers to the real one."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": more}

    return replayed
