"""An orchestrator in its own process (``openclaw orchestrator serve --config``), for tests
that measure what only a separate process shows: its memory (VmRSS) and its file
descriptors, with limits set on it alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.ports import free_port

__all__ = ["API_KEY", "OrchestratorProcess", "orchestrator_process"]

API_KEY = "process-test-key-0123456789"


@dataclass
class OrchestratorProcess:
    """A running orchestrator child: its URL, pid and the files it writes."""

    url: str
    process: asyncio.subprocess.Process
    data_dir: Path
    stderr: Path

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    @property
    def headers(self) -> dict[str, str]:
        """The API key header."""
        return {"Authorization": f"Bearer {API_KEY}"}

    def rss_kb(self) -> int:
        """Resident memory now (``VmRSS`` in /proc), in KiB."""
        return _status_field(self.pid, "VmRSS")

    def open_fds(self) -> int:
        """How many file descriptors the child has open."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def data_bytes(self) -> int:
        """Bytes of every file in the data folder (the SQLite database and its WAL)."""
        return sum(p.stat().st_size for p in self.data_dir.rglob("*") if p.is_file())


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


@contextlib.asynccontextmanager
async def orchestrator_process(
    tmp_path: Path,
    settings: dict[str, Any],
    *,
    preexec_fn: Callable[[], None] | None = None,
) -> AsyncIterator[OrchestratorProcess]:
    """Serve ``settings`` (plus a free port and a data folder in ``tmp_path``) from a child
    process until the block ends; its log goes to a file, never a pipe nobody reads."""
    port = free_port()
    data_dir = tmp_path / "data"
    config = tmp_path / "orchestrator.json"
    config.write_text(json.dumps({"port": port, "data_dir": str(data_dir), **settings}))
    stderr = tmp_path / "orchestrator.log"
    openclaw = str(Path(sys.executable).parent / "openclaw")
    env = {**os.environ, "ORCHESTRATOR_API_KEY": API_KEY}
    with stderr.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            openclaw, "orchestrator", "serve", "--config", str(config),
            env=env, stdout=log, stderr=log, preexec_fn=preexec_fn,
        )  # fmt: skip
    child = OrchestratorProcess(f"http://127.0.0.1:{port}", proc, data_dir, stderr)
    try:
        await _wait_up(child)
        yield child
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_up(child: OrchestratorProcess) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(400):
            if child.process.returncode is not None:
                raise AssertionError(f"orchestrator exited: {child.stderr.read_text()[-2000:]}")
            try:
                async with http.get(child.url + "/api/health/check") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("orchestrator did not come up")
