"""A stalled log reader never stalls the server (issue 9, item 4): lines wait in a bounded
queue, the overflow is dropped and counted, and the count is logged once the writer catches
up. Unit tests on ``LineSink`` with a file that blocks, then a real ``serve`` whose stderr
is a pipe the test does not read."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.server.hosting import BackgroundServer, bind_socket
from openclaw_orchestrator.server.logs import LineSink


class StalledFile(io.StringIO):
    """A file whose writes block until :attr:`release` is set (a pipe nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.release.wait(30)
        return super().write(text)


def test_a_stalled_file_never_blocks_the_caller_and_drops_are_counted() -> None:
    """With the writer stuck, 1,000 lines are taken at once; what does not fit in the queue
    is dropped, and once the file moves again the kept lines come in order, then one
    ``logs.dropped`` line with the count: kept + dropped = every line."""
    out = StalledFile()
    sink = LineSink(out, max_queued_bytes=10_000)
    sink.info("first")
    assert out.writing.wait(10)  # the writer is now stuck inside write()
    for i in range(1000):
        sink.info(f"line {i:04d}")  # returns at once: a blocked caller would hang the test
    out.release.set()
    assert sink.flush(10)
    lines = out.getvalue().splitlines()
    report = json.loads(lines[-1])
    assert report["event"] == "logs.dropped"
    kept = lines[1:-1]
    assert kept == [f"line {i:04d}" for i in range(len(kept))]
    assert 0 < len(kept) < 1000
    assert len(kept) + report["dropped"] == 1000


def test_flush_gives_up_on_a_stalled_file() -> None:
    """Shutdown must not hang on a stderr nobody reads: flush waits its timeout, then says
    the lines could not be written."""
    out = StalledFile()
    sink = LineSink(out)
    sink.info("stuck")
    assert out.writing.wait(10)
    assert sink.flush(0.05) is False
    out.release.set()
    assert sink.flush(10)
    assert out.getvalue() == "stuck\n"


@contextlib.asynccontextmanager
async def serve_with_unread_stderr(
    tmp_path: Path, instances: dict[str, str]
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """``serve`` at log level info, its stderr a pipe nobody reads until it has stopped;
    yields its URL and the process (a blocking Popen: asyncio's would read the pipe)."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    config = tmp_path / "orchestrator.json"
    settings = {
        "port": port,
        "data_dir": str(tmp_path / "data"),
        "log_level": "info",
        "instances": [{"name": n, "url": u} for n, u in instances.items()],
    }
    config.write_text(json.dumps(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    argv = [str(Path(sys.executable).parent / "openclaw"), "orchestrator", "serve"]
    process = subprocess.Popen(  # noqa: ASYNC220
        [*argv, "--config", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_answering(url)
        yield url, process
    finally:
        process.terminate()


async def wait_answering(url: str) -> None:
    """Until the liveness endpoint at ``url`` answers 200."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/api/health/check") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError("serve did not come up")


@pytest.mark.timeout(180)
async def test_a_server_whose_stderr_is_never_read_keeps_answering(tmp_path: Path) -> None:
    """``serve`` at log level info with stderr on a pipe the test leaves unread (it stopped
    after 329 requests before): 3,000 fanouts all answered; read afterwards, stderr holds
    JSON lines only, among them ``logs.dropped`` with the count, which the health check
    shows too."""
    request_id = "r" * 120  # long lines fill the pipe and the queue sooner
    answered = 0
    servers = [BackgroundServer(create_instance_app(n, resolve_handler("echo"))) for n in "ABC"]
    urls = {name: await server.start() for name, server in zip("ABC", servers, strict=True)}
    try:
        async with (
            serve_with_unread_stderr(tmp_path, urls) as (url, process),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        ):

            async def client(n: int) -> None:
                nonlocal answered
                for i in range(n):
                    body = {"targets": "A-C", "payload": {"i": i}}
                    headers = {"X-Request-ID": f"{request_id}{i:06d}"}
                    async with http.post(
                        url + "/api/orchestrator/fanout", json=body, headers=headers
                    ) as resp:
                        assert resp.status == 200
                        await resp.read()
                    answered += 1

            await asyncio.gather(*(client(375) for _ in range(8)))
            async with http.get(url + "/api/health/check") as resp:
                liveness = await resp.json()
        _, err = process.communicate(timeout=30)
    finally:
        for server in servers:
            await server.aclose()
    assert answered == 3000
    records = [json.loads(line) for line in err.decode().splitlines()]
    dropped = [r for r in records if r["event"] == "logs.dropped"]
    assert dropped, "no logs.dropped line"
    assert all(r["dropped"] > 0 for r in dropped)
    assert liveness["logs"]["dropped"] > 0  # the count is visible without reading the log
