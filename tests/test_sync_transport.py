"""The stdlib transport (:mod:`openclaw_orchestrator.sdk.sync_transport`) on real sockets: replies,
keep-alive, and the mapping of every failure onto the SDK's error tree and messages."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import orjson
import pytest

from openclaw_orchestrator.errors import (
    ConnectionFailedError,
    NotFoundError,
    OrchestratorError,
    TimeoutExceededError,
    UnauthorizedError,
)
from openclaw_orchestrator.sdk.calls import ApiCall
from openclaw_orchestrator.sdk.sync_transport import SyncTransport
from tests.ports import free_port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[dict[str, Any]]] = []
    peers: ClassVar[set[int]] = set()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        _Handler.peers.add(self.client_address[1])
        _Handler.seen.append({"path": self.path, "headers": dict(self.headers)})
        if self.path.startswith(("/ok", "/api/orchestrator/health")):
            self._reply(200, orjson.dumps({"A": "healthy"}))
        elif self.path == "/missing":
            body = {"error": {"code": "not_found", "message": "no instance Z"}}
            self._reply(404, orjson.dumps(body))
        elif self.path == "/auth":
            body = {"error": {"code": "unauthorized", "message": "bad key"}}
            self._reply(401, orjson.dumps(body))
        elif self.path == "/html":
            self._reply(502, b"<html>bad gateway</html>", "text/html")
        elif self.path == "/notjson":
            self._reply(200, b"not json", "text/plain")
        elif self.path == "/lines":  # chunked NDJSON, one line per chunk
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for n in range(3):
                line = b'{"n":%d}\n' % n
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow":
            threading.Event().wait(1.0)
            self._reply(200, b"{}")

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = orjson.loads(self.rfile.read(length))
        _Handler.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        self._reply(200, orjson.dumps({"echo": body}))


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.seen.clear()
    _Handler.peers.clear()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _call(method: str, path: str, **fields: Any) -> ApiCall[Any]:
    """A call whose reply is the decoded JSON as is."""
    return ApiCall(method, path, lambda data: data, **fields)


def test_get_with_params_headers_and_keep_alive(server: str) -> None:
    with SyncTransport(server + "/", api_key="k1") as transport:
        first = transport.request(
            _call("GET", "/ok", params={"instances": "A-C,E", "detail": "true"})
        )
        second = transport.request(_call("GET", "/ok"))
    assert first == second == {"A": "healthy"}
    assert _Handler.seen[0]["path"] == "/ok?instances=A-C,E&detail=true"
    headers = _Handler.seen[0]["headers"]
    assert headers["Authorization"] == "Bearer k1"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith("openclaw-orchestrator-sdk/")
    assert len(_Handler.peers) == 1  # one kept-alive connection for both calls


def test_post_sends_json(server: str) -> None:
    with SyncTransport(server) as transport:
        assert transport.request(_call("POST", "/x", body={"a": 1})) == {"echo": {"a": 1}}
    assert _Handler.seen[0]["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in _Handler.seen[0]["headers"]


def test_a_calls_token_and_idempotency_key_go_out_as_headers(server: str) -> None:
    """A session token replaces the API key for its call only; the key is kept for others."""
    with SyncTransport(server, api_key="k1") as transport:
        call = _call("POST", "/x", body={}, idempotency_key="job-1").with_token("ocs_t")
        transport.request(call)
        transport.request(_call("POST", "/x", body={}))
    first, second = (seen["headers"] for seen in _Handler.seen)
    assert (first["Authorization"], first["Idempotency-Key"]) == ("Bearer ocs_t", "job-1")
    assert second["Authorization"] == "Bearer k1"
    assert "Idempotency-Key" not in second


def test_error_bodies_map_to_their_classes(server: str) -> None:
    with SyncTransport(server) as transport:
        with pytest.raises(NotFoundError, match="no instance Z") as missing:
            transport.request(_call("GET", "/missing"))
        assert missing.value.code == "not_found"
        with pytest.raises(UnauthorizedError, match="bad key"):
            transport.request(_call("GET", "/auth"))
        with pytest.raises(OrchestratorError, match="HTTP 502 from the orchestrator: <html>"):
            transport.request(_call("GET", "/html"))
        with pytest.raises(OrchestratorError, match="reply that is not JSON"):
            transport.request(_call("GET", "/notjson"))
        assert transport.request(_call("GET", "/ok")) == {"A": "healthy"}  # still usable


def test_refused_connection_is_connection_failed() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with SyncTransport(url) as transport, pytest.raises(ConnectionFailedError) as caught:
        transport.request(_call("GET", "/ok"))
    assert str(caught.value.message) == (
        f"cannot reach the orchestrator at {url}: Connection refused"
    )


def test_deadline_is_timeout_exceeded(server: str) -> None:
    with SyncTransport(server, timeout=0.2) as transport:
        with pytest.raises(TimeoutExceededError) as caught:
            transport.request(_call("GET", "/slow"))
        assert caught.value.message == f"no answer from the orchestrator at {server} within 0.2s"
        assert transport.request(_call("GET", "/ok")) == {"A": "healthy"}  # reconnects


def test_a_dropped_idle_connection_is_retried_once(server: str) -> None:
    with SyncTransport(server) as transport:
        transport.request(_call("GET", "/ok"))
        assert transport._conn is not None
        assert transport._conn.sock is not None
        transport._conn.sock.shutdown(socket.SHUT_RDWR)  # as if the server closed it
        assert transport.request(_call("GET", "/ok")) == {"A": "healthy"}


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "http://127.0.0.1:99999", "x", "http://[::1"])
def test_invalid_urls_fail_on_the_first_call_as_the_async_client(url: str) -> None:
    """A URL that is not http(s) is ConnectionFailedError "not a valid URL" at the first
    call, the message aiohttp's InvalidURL gives AsyncClient (no ValueError at construction)."""
    with SyncTransport(url) as transport, pytest.raises(ConnectionFailedError) as caught:
        transport.request(_call("GET", "/ok"))
    assert str(caught.value).endswith(": not a valid URL")


def test_userinfo_in_the_url_is_sent_as_basic_credentials(server: str) -> None:
    """``user:pw@`` becomes a Basic header (as aiohttp sends it) and stays out of the URL."""
    with SyncTransport(server.replace("//", "//us%40er:p%3Aw@")) as transport:
        assert transport.request(_call("GET", "/ok")) == {"A": "healthy"}
        assert transport.url.startswith("http://us%40er:p%3Aw@")
    sent = _Handler.seen[-1]["headers"]["Authorization"]
    assert base64.b64decode(sent.removeprefix("Basic ")) == b"us@er:p:w"


def test_stream_yields_chunks_and_keeps_the_connection_when_read_to_the_end(
    server: str,
) -> None:
    """stream() gives the body as it arrives; read to the end, the connection is reused."""
    with SyncTransport(server) as transport:
        body = b"".join(transport.stream(_call("GET", "/lines")))
        assert body.splitlines() == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        assert transport.request(_call("GET", "/ok")) == {"A": "healthy"}
    assert len(_Handler.peers) == 1


def test_stream_left_early_drops_its_connection(server: str) -> None:
    """Closing a stream before its end closes the connection; the next call opens another."""
    with SyncTransport(server) as transport:
        chunks = transport.stream(_call("GET", "/lines"))
        next(chunks)
        chunks.close()
        assert transport.request(_call("GET", "/ok")) == {"A": "healthy"}
    assert len(_Handler.peers) == 2


def test_stream_error_reply_raises_its_class(server: str) -> None:
    """A non-2xx reply to a stream raises the class of its JSON code before any chunk."""
    with SyncTransport(server) as transport, pytest.raises(NotFoundError):
        next(transport.stream(_call("GET", "/missing")))


def test_sync_client_runs_without_an_event_loop_or_aiohttp(server: str) -> None:
    """Client sends over the stdlib transport: a call neither starts an event loop (no
    asyncio at all) nor imports aiohttp."""
    code = (
        "import sys; from openclaw_orchestrator.sdk.sync_client import Client\n"
        "with Client(sys.argv[1]) as client: states = client.health(['A'])\n"
        "print(states, sorted(m for m in ('asyncio', 'aiohttp') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("orchestrator_")}
    done = subprocess.run(
        [sys.executable, "-c", code, server], capture_output=True, text=True, check=True, env=env
    )
    assert done.stdout.strip() == "{'A': 'healthy'} []"


def test_cli_fast_path_prints_json_and_defers_the_rest(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from openclaw_orchestrator.cli.fastpath import try_fast_path

    code = try_fast_path(
        ["health", "--instances", "A", "--instances", "B", "--url", server, "-o", "json"]
    )
    assert code == 0
    assert orjson.loads(capsys.readouterr().out) == {"A": "healthy"}
    assert _Handler.seen[-1]["path"] == "/api/orchestrator/health?instances=A,B"
    for argv in (
        ["health", "--output", "table"],
        ["health", "--help"],
        ["health", "--config", "x.json", "-o", "json"],
        ["health", "--bogus", "-o", "json"],
        ["health", "--url", "a", "--url", "b", "-o", "json"],
        ["route", "--payload", "-", "-o", "json"],  # stdin: read once, by the Typer command
        ["route", "--retry", "11", "-o", "json"],
        ["route", "--retry=--5", "-o", "json"],
        ["fanout", "--quorum=two", "-o", "json"],
        ["route", "--timeout", "soon", "-o", "json"],
        ["fanout", "--stream", "-o", "json"],
        ["fanout", "--top-k", "0", "-o", "json"],
        ["sessions_send", "-o", "json"],  # no --id: Typer's usage error
        ["sessions_send", "--id", "bad id", "-o", "json"],
        ["sessions_send", "--id", "s1", "--token-env", "SURELY_NOT_SET_VAR", "-o", "json"],
    ):
        assert try_fast_path(argv) is None, argv


def test_cli_fast_path_errors_exit_like_the_app(capsys: pytest.CaptureFixture[str]) -> None:
    from openclaw_orchestrator.cli.fastpath import try_fast_path

    url = f"http://127.0.0.1:{free_port()}"
    assert try_fast_path(["health", "--url", url, "-o", "json"]) == 4
    assert f"error: connection_failed: cannot reach the orchestrator at {url}" in (
        capsys.readouterr().err
    )
    for command in (
        ["route", "--instances", "A"],
        ["fanout", "--targets", "A-C"],
        ["sessions_send", "--id", "s1", "--data", "[1]"],
    ):
        assert try_fast_path([*command, "--url", url, "-o", "json"]) == 4, command
        assert "error: connection_failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        ({}, None),
        ({"ORCHESTRATOR_URL": "http://h:1", "ORCHESTRATOR_API_KEY": "k"}, None),
        ({"orchestrator_url": "http://h:2", "Orchestrator_Api_Key": "k2"}, None),
        ({"ORCHESTRATOR_URL": "http://h:1"}, "http://flag:3"),
        ({"ORCHESTRATOR_URL": "http://h:1"}, ""),
        ({"ORCHESTRATOR_API_KEY": "k", "OTHER": "x"}, None),
    ],
)
def test_client_env_agrees_with_the_full_settings(
    environ: dict[str, str], url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openclaw_orchestrator.sdk.env import client_env
    from openclaw_orchestrator.settings import load_client_settings

    for name in [n for n in os_environ() if n.lower().startswith("orchestrator_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    light = client_env(url, environ)
    full = load_client_settings(None, url=url)
    key = full.api_key
    assert light == (full.url, None if key is None else key.get_secret_value())


@pytest.mark.parametrize(
    "environ",
    [
        {"ORCHESTRATOR_URL": ""},
        {"ORCHESTRATOR_API_KEY": ""},
        {"ORCHESTRATOR_API_KEY": "a", "orchestrator_api_key": "b"},
    ],
)
def test_client_env_defers_when_unsure(environ: dict[str, str]) -> None:
    from openclaw_orchestrator.sdk.env import client_env

    assert client_env(None, environ) is None


def test_client_env_default_url_is_the_settings_default() -> None:
    from openclaw_orchestrator import settings
    from openclaw_orchestrator.sdk import env

    assert env.DEFAULT_URL == settings.DEFAULT_URL


def os_environ() -> list[str]:
    import os

    return list(os.environ)
