"""``health --watch`` and ``top`` as users run them: real ``openclaw`` processes against a
live orchestrator and reference instances (``start_cluster``) on 127.0.0.1.

Proves: the watched health redraws when an instance goes down (in place on a terminal, a
new JSON line for a script), ``top`` shows a slow call in flight, and Ctrl-C ends both with
exit 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pty
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.api.conftest import Cluster, start_cluster
from tests.cli.test_cli_live import BIN, cluster_env

READ_TIMEOUT = 20.0
INTERRUPTED = 130

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    """A, B and C (B and C are each stopped by one test)."""
    async with start_cluster("ABC") as c:
        yield c


async def spawn(
    cluster: Cluster, *args: str, stdout: Any, **env: str
) -> asyncio.subprocess.Process:
    """``openclaw orchestrator ARGS`` pointed at ``cluster``."""
    return await asyncio.create_subprocess_exec(
        str(BIN / "openclaw"), "orchestrator", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=asyncio.subprocess.PIPE,
        env=cluster_env(cluster, **env),
    )  # fmt: skip


async def interrupt(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """Ctrl-C the command; its exit code and stderr."""
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), READ_TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def json_lines_until(proc: asyncio.subprocess.Process, done: Any) -> list[dict[str, Any]]:
    """JSON lines from the command's stdout until ``done(line)`` holds."""
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    async with asyncio.timeout(READ_TIMEOUT):
        while True:
            raw = await proc.stdout.readline()
            assert raw, f"the command ended: {lines}"
            lines.append(json.loads(raw))
            if done(lines[-1]):
                return lines


async def test_watch_prints_a_line_per_change_and_ends_on_ctrl_c(cluster: Cluster) -> None:
    """For a script: the states once, then a new line only when one changes; Ctrl-C is 130."""
    proc = await spawn(
        cluster, "health", "--watch", "--interval", "100ms", "--instances", "A,B",
        "--output", "json", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        [first] = await json_lines_until(proc, lambda line: True)
        assert first == {"A": "healthy", "B": "healthy"}
        await asyncio.sleep(0.5)  # several polls, no change: nothing printed
        await cluster.stop_instance("B")
        lines = await json_lines_until(proc, lambda line: line["B"] == "down")
        assert all(line["A"] == "healthy" for line in lines)
        changes = [first, *lines]  # B may pass through degraded: each line is a change
        assert all(a != b for a, b in itertools.pairwise(changes)), changes
    finally:
        code, err = await interrupt(proc)
    assert code == INTERRUPTED, err
    assert "interrupted" in err
    assert "Traceback" not in err


def read_until(fd: int, wanted: bytes, seen: bytearray) -> None:
    """Read the terminal into ``seen`` until ``wanted`` shows up after what was there."""
    start = len(seen)
    while wanted not in seen[start:]:
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"the terminal closed before {wanted!r}: {bytes(seen)!r}")
        seen += chunk


async def test_watch_redraws_the_table_in_place_on_a_terminal(cluster: Cluster) -> None:
    """On a terminal the table is drawn, then redrawn over itself (cursor moved up) when C
    goes down: the screen ends with C down, with no reload of the command."""
    leader, follower = pty.openpty()
    seen = bytearray()
    try:
        proc = await spawn(
            cluster, "health", "--watch", "--interval", "100ms", "--instances", "A,C",
            stdout=follower, TERM="xterm-256color", NO_COLOR="1",
        )  # fmt: skip
        os.close(follower)
        follower = -1
        await asyncio.wait_for(
            asyncio.to_thread(read_until, leader, b"healthy", seen), READ_TIMEOUT
        )
        before = len(seen)
        await cluster.stop_instance("C")
        await asyncio.wait_for(asyncio.to_thread(read_until, leader, b"down", seen), READ_TIMEOUT)
        code, err = await interrupt(proc)
    finally:
        with contextlib.suppress(OSError):
            os.close(leader)
        if follower != -1:
            os.close(follower)
    redraw = bytes(seen[before:])
    assert b"\x1b[" in redraw  # cursor control: the table is redrawn over the old one
    assert b"\x1b[2K" in redraw or b"\x1b[1A" in redraw or b"\x1b[A" in redraw, redraw
    assert code == INTERRUPTED, err


async def test_top_shows_in_flight_work(cluster: Cluster) -> None:
    """A call that takes a while shows as in flight on its instance in ``top``."""
    proc = await spawn(
        cluster, "top", "--interval", "100ms", "--output", "json", stdout=asyncio.subprocess.PIPE
    )
    await json_lines_until(proc, lambda line: True)  # it runs: now make A busy
    await cluster.set_faults("A", latency=3.0)
    call = asyncio.create_task(
        cluster.post("/api/orchestrator/route", {"instances": ["A"], "payload": {}})
    )
    try:

        def busy(line: dict[str, Any]) -> bool:
            return any(i["name"] == "A" and i["in_flight"] >= 1 for i in line["instances"])

        lines = await json_lines_until(proc, busy)
        assert {i["name"] for i in lines[-1]["instances"]} == {"A", "B", "C"}
    finally:
        code, err = await interrupt(proc)
        await cluster.set_faults("A", latency=0)
        await call
    assert code == INTERRUPTED, err


async def test_top_draws_a_table_on_a_terminal(cluster: Cluster) -> None:
    """On a terminal ``top`` draws its table of instances and their in-flight counts."""
    leader, follower = pty.openpty()
    seen = bytearray()
    try:
        proc = await spawn(
            cluster, "top", "--interval", "100ms", stdout=follower, TERM="xterm-256color"
        )
        os.close(follower)
        follower = -1
        await asyncio.wait_for(
            asyncio.to_thread(read_until, leader, b"in flight", seen), READ_TIMEOUT
        )
        await asyncio.wait_for(
            asyncio.to_thread(read_until, leader, b"in flight", seen), READ_TIMEOUT
        )
        code, err = await interrupt(proc)
    finally:
        with contextlib.suppress(OSError):
            os.close(leader)
        if follower != -1:
            os.close(follower)
    assert b"instance" in seen
    assert code == INTERRUPTED, err
