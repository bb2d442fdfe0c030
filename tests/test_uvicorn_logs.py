"""Every line a server writes to stderr is one JSON object (issue 9, item 9): uvicorn's own
errors and asyncio's, tracebacks included, go through our log format, not as plain text."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from openclaw_orchestrator.server.hosting import bind_socket

SERVER = """
import asyncio, gc, sys, threading
from openclaw_orchestrator.server.logs import configure_logging
from openclaw_orchestrator.server.hosting import serve_forever

async def fail():
    raise ValueError("never retrieved")

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/thread":
        thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
        thread.start()
        thread.join()
    if scope["path"] == "/task":
        task = asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0.01)
        del task
        gc.collect()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"10")]})
    raise RuntimeError("boom after the response started")

configure_logging("info", "json")
serve_forever(app, host="127.0.0.1", port=int(sys.argv[1]))
"""


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; what comes back until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return reply


async def wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    """Until ``port`` accepts connections (the child is up)."""
    for _ in range(600):
        assert process.returncode is None, "the server exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError("the server did not start")


async def test_uvicorn_and_asyncio_errors_are_json_lines(tmp_path: Path) -> None:
    """An app failing after its response started, a garbled request line, a task whose
    exception nobody retrieved and a thread that raised: each is one JSON line, the
    traceback in ``exception``."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(port),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_listening(port, process)
        await exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await exchange(port, b"NOT HTTP AT ALL\x00\r\n\r\n")).startswith(b"HTTP/1.1 400")
        await exchange(port, b"GET /task HTTP/1.1\r\nHost: t\r\n\r\n")
        await exchange(port, b"GET /thread HTTP/1.1\r\nHost: t\r\n\r\n")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
    records = []
    for line in err.decode().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}\n{err.decode()}") from None
    by_event = {r["event"]: r for r in records}
    asgi = by_event["Exception in ASGI application"]
    assert asgi["logger"] == "uvicorn.error"
    assert asgi["level"] == "error"
    assert "RuntimeError: boom after the response started" in asgi["exception"]
    assert by_event["Invalid HTTP request received."]["level"] == "warning"
    task = next(r for r in records if r["logger"] == "asyncio")
    assert "ValueError: never retrieved" in task["exception"]
    thread = by_event["thread doomed failed"]
    assert "ZeroDivisionError" in thread["exception"]
