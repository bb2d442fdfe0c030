"""A small synchronous HTTP transport on the standard library (``http.client``).

The I/O of the sync :class:`~.sync_client.Client` (and so of the CLI's fast path): no event
loop, and no aiohttp to import (≈ 130 ms with its SSL context). Failures map onto the same
error tree, with the same messages, as :class:`~.client.AsyncClient`::

    connection refused, DNS, reset     -> ConnectionFailedError
    not an http(s) URL                 -> ConnectionFailedError   (on the first call, as aiohttp)
    the client-side deadline passed    -> TimeoutExceededError
    a non-2xx reply                    -> the class named by its JSON ``code`` (decode_error)
    a reply that is not JSON           -> OrchestratorError

One connection is kept alive between calls on the same :class:`SyncTransport`; a stream left
before its end closes it, so the next call starts on a fresh one.
"""

from __future__ import annotations

import base64
import http.client
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlencode, urlsplit

import orjson

from ..errors import ConnectionFailedError, TimeoutExceededError
from .calls import (
    DEFAULT_TIMEOUT,
    ApiCall,
    base_headers,
    decode_error,
    decode_reply,
    display_url,
    os_reason,
)
from .closing import ClosesOnExit

__all__ = ["SyncTransport"]

R = TypeVar("R")
_STREAM_CHUNK = 64 * 1024
_DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class _Origin(NamedTuple):
    """Where requests go: scheme, host, port and the path prefix of the base URL."""

    https: bool
    host: str
    port: int | None
    prefix: str


class SyncTransport(ClosesOnExit):
    """Blocking JSON calls to one orchestrator over one kept-alive ``http.client`` connection.

    ``api_key`` is sent as a bearer token; without one, a ``user:password@`` in ``url`` is sent
    as basic credentials (as aiohttp does) and never shown in messages.
    """

    def __init__(
        self, url: str, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._where = display_url(self.url)
        self._origin, basic = _parse_origin(self.url)
        self._headers = base_headers(f"Bearer {api_key}" if api_key is not None else basic)
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the kept-alive connection, if any. Safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def request(self, call: ApiCall[R]) -> R:
        """Send ``call`` and return its parsed reply; every failure is an OrchestratorError."""
        waited = call.wait(self.timeout)
        with self._mapped_errors(waited):
            response = self._open(call, waited)
            raw = response.read()
        self._release(response)
        return call.parse(decode_reply(response.status, raw))

    def stream(self, call: ApiCall[Any]) -> Generator[bytes, None, None]:
        """Send ``call`` and yield its body in chunks as they arrive (a non-2xx reply raises
        its typed error); closing the generator early drops the connection."""
        waited = call.wait(self.timeout)
        finished = False
        try:
            with self._mapped_errors(waited):
                response = self._open(call, waited)
                if response.status >= 400:
                    raise decode_error(response.status, response.read())
            while True:
                with self._mapped_errors(waited):
                    chunk = response.read1(_STREAM_CHUNK)
                if not chunk:
                    break
                yield chunk
            finished = True
            self._release(response)
        finally:
            if not finished:
                self.close()

    def _open(self, call: ApiCall[Any], waited: float) -> http.client.HTTPResponse:
        """Send the request and read the status line and headers; a kept-alive connection
        the server closed meanwhile is retried once afresh."""
        origin = self._require_origin()
        target = origin.prefix + call.path
        if call.params:
            target += "?" + urlencode(call.params, safe=",:")
        headers = {**self._headers, **call.headers()}
        data = None
        if call.body is not None:
            data = orjson.dumps(call.body)
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = self._connection(origin, waited)
            reused = conn.sock is not None
            try:
                conn.request(call.method, target, body=data, headers=headers)
                return conn.getresponse()
            except _DROPPED:
                self.close()
                if not (reused and attempt == 1):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _release(self, response: http.client.HTTPResponse) -> None:
        """Keep the connection for the next call unless the server is closing it."""
        if response.will_close:
            self.close()

    def _require_origin(self) -> _Origin:
        if self._origin is None:
            raise ConnectionFailedError(
                f"cannot reach the orchestrator at {self._where}: not a valid URL"
            )
        return self._origin

    def _connection(self, origin: _Origin, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if origin.https else http.client.HTTPConnection
            self._conn = kind(origin.host, origin.port, timeout=timeout)
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn

    @contextmanager
    def _mapped_errors(self, waited: float) -> Iterator[None]:
        """Translate socket and ``http.client`` failures into the error tree, most specific
        first; the connection is closed, so the next call starts afresh."""
        where = self._where
        try:
            yield
        except TimeoutError as exc:
            self.close()
            raise TimeoutExceededError(
                f"no answer from the orchestrator at {where} within {waited:g}s"
            ) from exc
        except _DROPPED as exc:
            self.close()
            raise ConnectionFailedError(
                f"connection to the orchestrator at {where} failed: {exc}"
            ) from exc
        except OSError as exc:
            self.close()
            raise ConnectionFailedError(
                f"cannot reach the orchestrator at {where}: {os_reason(exc)}"
            ) from exc
        except http.client.HTTPException as exc:
            self.close()
            raise ConnectionFailedError(
                f"connection to the orchestrator at {where} failed: {exc}"
            ) from exc


def _parse_origin(url: str) -> tuple[_Origin | None, str | None]:
    """The origin of ``url`` (None when it is not an http(s) URL) and the basic credentials
    its ``user:password@`` part gives, as a header value."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None, None
    if parts.scheme not in ("http", "https") or not host:
        return None, None
    basic = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        basic = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return _Origin(parts.scheme == "https", host, port, parts.path), basic
