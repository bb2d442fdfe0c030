"""Writing a streamed response's body from a callback, without an ASGI ``send``.

The relay of issue 12 passes each chunk an instance streams on to its client. Through ASGI
every chunk costs a task wake-up (the driver's read loop) and an awaited ``send`` through
the middleware wrappers and uvicorn's response cycle; without them the relay takes about a
tenth less CPU a chunk and 0.1 ms less at p99 (docs/performance.md). Our server protocol
(:mod:`.http_protocol`) offers each request a :class:`DirectBody` as the ASGI scope extension
:data:`DIRECT_BODY`: with it, the instance connection's own callback writes the client's
chunk (:mod:`.drivers.event_tap`).

:meth:`DirectBody.write` writes only when that is exactly what an awaited ``send`` of the
same bytes would do at once: the response has started, is chunked, has not ended, the client
is still there and its connection is not paused for back-pressure. Otherwise it writes
nothing and says so, and the caller takes the ASGI way, which waits. The bytes go out as one
HTTP/1.1 chunk, as uvicorn frames them.

The extension is ours, offered only by our protocol: a server without it (another ASGI
server, an in-process test client) leaves the relay on ASGI. Writing beside ``send`` skips
the middleware wrappers, so a middleware that rewrites response bodies (compression) must
remove the extension from the scope it passes on; none of ours does (they read the start
message only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

__all__ = ["DIRECT_BODY", "DirectBody", "direct_body"]

DIRECT_BODY = "openclaw.direct_body"
"""The scope extension's name: ``scope["extensions"][DIRECT_BODY]`` is a :class:`DirectBody`."""


class DirectBody:
    """One request's response body, written straight to its connection (module docstring)."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    def __repr__(self) -> str:
        return f"<DirectBody writable={self.writable}>"

    @property
    def writable(self) -> bool:
        """Whether :meth:`write` would write now."""
        cycle = self._cycle
        return (
            cycle.response_started
            and cycle.chunked_encoding is True
            and not cycle.response_complete
            and not cycle.disconnected
            and not cycle.flow.write_paused
            and not cycle.transport.is_closing()
            and cycle.scope["method"] != "HEAD"
        )

    def write(self, body: bytes) -> bool:
        """Write ``body`` as one chunk of the response and return True, or write nothing and
        return False when an ASGI ``send`` would have to wait or would not write it."""
        if not body or not self.writable:
            return False
        self._cycle.transport.write(b"%x\r\n%s\r\n" % (len(body), body))
        return True


def direct_body(scope: dict[str, Any] | Any) -> DirectBody | None:
    """The request's :class:`DirectBody`, when its server offers one."""
    extensions = scope.get("extensions")
    if not extensions:
        return None
    found = extensions.get(DIRECT_BODY)
    return found if isinstance(found, DirectBody) else None
