"""``instance serve`` says where it listens, so ``--port 0`` is usable from a script."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
LISTENING = re.compile(r"instance A listening on (http://127\.0\.0\.1:\d+)\n")


async def test_instance_serve_prints_its_url() -> None:
    """With port 0 the one stdout line names the chosen port, and that URL answers."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "openclaw"), "orchestrator", "instance", "serve", "--name", "A", "--port", "0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
        found = LISTENING.fullmatch(line)
        assert found, line
        async with (
            aiohttp.ClientSession() as http,
            http.get(found[1] + "/api/health/check") as resp,
        ):
            assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
        assert rest == b""  # one line, nothing more
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
