"""HTTP/1.1 connections whose requests are bounded in header size and in upload time.

uvicorn's httptools protocol reads a request line and headers of any size (the parser keeps
them all in memory) and waits for them, and for a body, forever. :class:`BoundedRequestProtocol`
is that protocol with three limits, chosen through uvicorn's ``http=`` option
(:func:`bounded_protocol` makes the class for given :class:`RequestLimits`;
``server.uvicorn_config`` uses it):

- ``max_bytes``: the request line and headers of one request together. Past it the client
  gets ``431`` and the connection is closed. Bytes are counted as they arrive, before the
  parser keeps them, so a connection holds at most the limit plus one read (256 KiB); and
  headers that arrive whole in one read are measured once parsed, before the application
  sees the request.
- ``timeout``: how long a connection may take to deliver a request's headers, counted from
  the moment it opens or its previous response is complete. When it runs out the connection
  is closed, with ``408`` first if part of a request had come. The time an application
  takes to answer is not counted.
- ``body_timeout``: how long a request's body may take to arrive once its headers are in
  (the whole body, so a client trickling a byte at a time is cut off too). When it runs out
  before any reply started, the client gets ``408`` and the application sees the client
  leave; after a reply started, the connection is closed.

The refusals carry the API's JSON error envelope (``invalid_request``, field ``headers`` or
``body``).
After one, the connection lingers up to :data:`LINGER_SECONDS`, reading and discarding what
the client still sends: closing a socket with unread data resets the connection, and the
client would lose the reply it was just sent.

Each request's scope carries a :class:`~.direct_body.DirectBody` (the extension
:data:`~.direct_body.DIRECT_BODY`): the streaming relay writes its chunks through it.

Keep-alive, pipelining and flow control are uvicorn's, unchanged: the timer only runs while
the connection waits for headers with no response in progress.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..settings import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_HEADER_BYTES,
    Settings,
)
from .direct_body import DIRECT_BODY, DirectBody

__all__ = ["LINGER_SECONDS", "BoundedRequestProtocol", "RequestLimits", "bounded_protocol"]

LINGER_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Most bytes of a request line plus headers, most seconds to receive them, and most
    seconds to receive a body once the headers are in."""

    max_bytes: int = DEFAULT_MAX_HEADER_BYTES
    timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        """The limits ``max_header_bytes``, ``header_timeout`` and ``body_timeout``
        configure."""
        return cls(settings.max_header_bytes, settings.header_timeout, settings.body_timeout)


class BoundedRequestProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request headers and upload time (module
    docstring).

    As a class name for uvicorn's ``--http`` it applies the default :class:`RequestLimits`.
    """

    limits: ClassVar[RequestLimits] = RequestLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_bytes = 0  # what arrived since the headers were awaited
        self._oversized = False  # a request whose parsed headers are over the limit
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count what arrives while headers are awaited; refuse once past the limit."""
        if self._lingering:
            return  # refused already: read only to let the reply reach the client
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        unparsed = self._awaiting_headers and self._header_bytes > self.limits.max_bytes
        if unparsed or self._oversized:
            self._refuse(431, f"the request line and headers exceed {self.limits.max_bytes} bytes")

    def on_headers_complete(self) -> None:
        """Measure the parsed request line and headers; an oversized request never reaches
        the application (the parser goes on with the read, so the later callbacks ignore
        it, and :meth:`data_received` refuses once the read is parsed)."""
        self._awaiting_headers = False
        self._header_bytes = 0
        self._stop_header_timer()
        headers = self.headers
        size = len(self.url) + sum(len(name) + len(value) for name, value in headers)
        if self._oversized or size + 4 * len(headers) > self.limits.max_bytes:
            self._oversized = True
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not an upgrade: a request's cycle
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[DIRECT_BODY] = DirectBody(cycle)
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        if not self._oversized:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._stop_body_timer()
        if not self._oversized:
            super().on_message_complete()
        self._awaiting_headers = True  # the next request's headers may follow

    def on_response_complete(self) -> None:
        super().on_response_complete()
        idle = self.cycle is None or self.cycle.response_complete  # nothing pipelined started
        if idle and self._awaiting_headers and not self.transport.is_closing():
            self._start_header_timer()

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.limits.timeout, self._headers_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        """Cut off a body that took too long: 408 if nothing was answered yet (the
        application then sees the client leave), else just the close."""
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_started or self.transport.is_closing():
            self.transport.close()
            return
        cycle.disconnected = True  # the app's receive() says the client left; its send() is
        cycle.message_event.set()  # dropped, so nothing follows the 408 on this connection
        message = f"the request body did not arrive within {self.limits.body_timeout:g}s"
        self._write_refusal(408, message, "body")

    def _headers_timed_out(self) -> None:
        """Close a connection that took too long to send headers (408 if some came)."""
        self._header_timer = None
        if self._header_bytes == 0:
            self.transport.close()
            return
        self._refuse(408, f"the request headers did not arrive within {self.limits.timeout:g}s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with the API's error envelope and close the connection."""
        if self.transport.is_closing():
            return
        self._stop_header_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is being written: no room for another
            return
        self._write_refusal(status, message, "headers")

    def _write_refusal(self, status: int, message: str, field: str) -> None:
        """Write ``status`` with the error envelope naming ``field``, then linger and close."""
        self._stop_header_timer()
        self._stop_body_timer()
        error = {"code": "invalid_request", "message": message, "field": field}
        body = orjson.dumps({"error": error})
        head = [STATUS_LINE[status]]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._linger()

    def _linger(self) -> None:
        """Send EOF after the reply, discard what still comes, close after a moment."""
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._header_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)


def bounded_protocol(limits: RequestLimits) -> type[BoundedRequestProtocol]:
    """A :class:`BoundedRequestProtocol` class applying ``limits``, for uvicorn's ``http=``."""
    if limits == BoundedRequestProtocol.limits:
        return BoundedRequestProtocol

    class ConfiguredBoundedRequestProtocol(BoundedRequestProtocol):
        pass

    ConfiguredBoundedRequestProtocol.limits = limits
    return ConfiguredBoundedRequestProtocol
