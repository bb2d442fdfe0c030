"""A small synchronous HTTP transport on the standard library (``http.client``).

For one-shot request/response calls where importing aiohttp (≈ 130 ms with its SSL context)
would cost more than the call itself: the CLI's quick commands use it. Failures map onto the
same error tree, with the same messages, as :class:`~.client.AsyncClient`::

    connection refused, DNS, reset     -> ConnectionFailedError
    the client-side deadline passed    -> TimeoutExceededError
    a non-2xx reply                    -> the class named by its JSON ``code`` (error_from_body)
    a reply that is not JSON           -> OrchestratorError

One connection is kept alive between calls on the same :class:`SyncTransport`.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode, urlsplit

import orjson

from .__about__ import __version__
from .errors import (
    ConnectionFailedError,
    OrchestratorError,
    TimeoutExceededError,
    error_from_body,
)

__all__ = ["SyncTransport", "UnsupportedURLError", "decode_error", "display_url", "os_reason"]

USER_AGENT = f"openclaw-orchestrator-sdk/{__version__}"
_USERINFO = re.compile(r"//[^/@]*@")


class UnsupportedURLError(ValueError):
    """A URL this transport does not handle (userinfo, another scheme); use the full client."""


def display_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, fit for messages and reprs."""
    return _USERINFO.sub("//", url)


def os_reason(error: OSError) -> str:
    """``Connection refused`` rather than ``[Errno 111] Connection refused``."""
    if isinstance(error, socket.gaierror) or not error.errno:
        return error.strerror or str(error)
    return os.strerror(error.errno)


def decode_error(status: int, raw: bytes) -> OrchestratorError:
    """The typed error of a non-2xx reply; a body that is not JSON keeps only the status."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        snippet = raw[:200].decode("utf-8", "replace").strip()
        return OrchestratorError(
            f"HTTP {status} from the orchestrator: {snippet or '(empty body)'}",
            upstream_status=status,
        )
    return error_from_body(body, status=status)


class SyncTransport:
    """Blocking JSON calls to one orchestrator over one kept-alive ``http.client`` connection."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        try:
            parts = urlsplit(self.url)
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise UnsupportedURLError(f"not a valid URL: {display_url(url)}") from exc
        if parts.scheme not in ("http", "https") or not host:
            raise UnsupportedURLError(f"not an http(s) URL: {display_url(url)}")
        if parts.username is not None or parts.password is not None:
            raise UnsupportedURLError("URLs with user:password@ need the full client")
        self._https = parts.scheme == "https"
        self._host = host
        self._port = port
        self._prefix = parts.path
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept-alive connection, if any. Safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request and return its decoded JSON; every failure is an OrchestratorError.
        ``deadline``: the server-side one, waited for with a margin; ``headers``: extra ones."""
        target = self._prefix + path
        if params:
            target += "?" + urlencode(params, safe=",:")
        headers = {**self._headers, **(headers or {})}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        waited = self.timeout if deadline is None else deadline + 5.0
        status, raw = self._exchange(method, target, data, headers, waited)
        if status >= 400:
            raise decode_error(status, raw)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise OrchestratorError(
                f"the orchestrator sent a reply that is not JSON: {exc}", upstream_status=status
            ) from exc

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn

    def _exchange(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str], waited: float
    ) -> tuple[int, bytes]:
        """One round trip; a kept-alive connection the server closed is retried once afresh."""
        where = display_url(self.url)
        for attempt in (1, 2):
            conn = self._connection(waited)
            reused = conn.sock is not None
            try:
                conn.request(method, target, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except TimeoutError as exc:
                self.close()
                raise TimeoutExceededError(
                    f"no answer from the orchestrator at {where} within {waited:g}s"
                ) from exc
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the server dropped an idle kept-alive connection
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
            if response.will_close:
                self.close()
            return response.status, raw
        raise AssertionError("unreachable")  # pragma: no cover
