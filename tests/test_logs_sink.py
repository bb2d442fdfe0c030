"""``LineSink``: log lines batched per event-loop iteration, written by a writer thread,
never lost (unless the writer is stalled: then dropped and counted), never reordered."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from openclaw_orchestrator.server.gc_tuning import YOUNG_THRESHOLD, settle_after_startup
from openclaw_orchestrator.server.logs import LineSink, after_this_step


def _run(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (logging is configured once per process)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )


class CountingFile(io.StringIO):
    """A text file that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_of_one_loop_step_are_one_write_after_the_step() -> None:
    """Lines logged in one step reach the file together, in order, once the step is done."""
    out = CountingFile()
    sink = LineSink(out)
    for i in range(5):
        sink.info(f"line {i}")
    assert out.getvalue() == ""  # still in this step
    await asyncio.sleep(0)
    assert sink.flush()  # the writer thread has written what the step handed over
    assert out.getvalue() == "".join(f"line {i}\n" for i in range(5))
    assert out.writes == 1
    sink.info("later")
    await asyncio.sleep(0)
    assert sink.flush()
    assert out.getvalue().endswith("line 4\nlater\n")
    assert out.writes == 2


def test_without_a_loop_lines_are_written_at_once() -> None:
    """Start-up, shutdown and other threads have no loop step to wait for: the line goes to
    the writer at once (flush only waits for the writer thread)."""
    out = CountingFile()
    sink = LineSink(out)
    sink.error("now")
    assert sink.flush()
    assert out.getvalue() == "now\n"
    thread = threading.Thread(target=lambda: sink.info("from a thread"))
    thread.start()
    thread.join()
    assert sink.flush()
    assert out.getvalue() == "now\nfrom a thread\n"


def test_a_line_queued_on_a_loop_that_ended_is_written_by_the_next_one() -> None:
    """A loop closed before its flush ran: the next line (or exit) writes both, in order."""
    out = CountingFile()
    sink = LineSink(out)

    async def log_and_leave() -> None:
        sink.info("first")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log_and_leave())
    loop.close()  # the scheduled flush may never run
    asyncio.run(log_and_leave())
    sink.flush()
    assert out.getvalue().startswith("first\n")
    assert out.getvalue().count("first\n") == 2


def test_lines_still_queued_at_exit_are_written() -> None:
    """The interpreter's exit flushes what a last loop iteration left queued."""
    code = (
        "import asyncio\n"
        "from openclaw_orchestrator.server.logs import configure_logging, get_logger\n"
        "configure_logging('info', 'json')\n"
        "log = get_logger('t')\n"
        "async def main():\n"
        "    log.info('queued.line', n=1)\n"
        "loop = asyncio.new_event_loop()\n"
        "loop.run_until_complete(main())\n"
    )
    done = _run(code)
    assert '"event":"queued.line"' in done.stderr


def test_a_closed_file_never_breaks_the_caller() -> None:
    """Logging must not raise because stderr went away."""
    out = io.StringIO()
    out.close()
    LineSink(out).info("into the void")


def test_settle_after_startup_freezes_and_raises_the_young_threshold() -> None:
    """What exists at start-up is frozen; young collections happen less often."""
    before = gc.get_threshold()
    try:
        settle_after_startup()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_logger_made_before_configuration_follows_it() -> None:
    """Module loggers are made at import, often before configure_logging: they must still
    write JSON lines to the configured sink, with their name."""
    code = (
        "from openclaw_orchestrator.server.logs import configure_logging, get_logger\n"
        "early = get_logger('early.module')\n"
        "configure_logging('info', 'json')\n"
        "early.info('made.before', n=1)\n"
        "early.debug('filtered.out')\n"
    )
    done = _run(code)
    assert done.stdout == ""
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "made.before"
    assert lines[0]["logger"] == "early.module"
    assert lines[0]["level"] == "info"
    assert lines[0]["timestamp"].endswith("Z")


async def test_after_this_step_logs_once_the_step_is_done() -> None:
    """The deferred line comes after what the step still does, with the step's context."""
    order: list[str] = []

    def method(event: str, **fields: object) -> None:
        order.append(f"{event} {fields}")

    after_this_step(method, "late", n=1)
    order.append("reply sent")
    await asyncio.sleep(0)
    assert order == ["reply sent", "late {'n': 1}"]


def test_after_this_step_without_a_loop_logs_now() -> None:
    """No loop: nothing to wait for."""
    seen: list[str] = []
    after_this_step(lambda event, **_: seen.append(event), "now")
    assert seen == ["now"]


def test_a_frequent_event_writes_the_line_structlog_would() -> None:
    """Same fields and values (the timestamp aside), same sink, request id from context."""
    code = (
        "from openclaw_orchestrator.server.logs import FrequentEvent, bind_request_id,"
        " configure_logging, get_logger\n"
        "configure_logging('info', 'json')\n"
        "bind_request_id('rid-7')\n"
        "FrequentEvent('svc', 'svc.attempt')(instance='A', attempt=1, latency_ms=0.5)\n"
        "get_logger('svc').info('svc.attempt', instance='A', attempt=1, latency_ms=0.5)\n"
    )
    fast, slow = (json.loads(line) for line in _run(code).stderr.splitlines())
    assert fast.pop("timestamp").endswith("Z")
    slow.pop("timestamp")
    assert fast == slow
    assert fast == {
        "event": "svc.attempt",
        "logger": "svc",
        "request_id": "rid-7",
        "level": "info",
        "instance": "A",
        "attempt": 1,
        "latency_ms": 0.5,
    }


def test_a_frequent_event_follows_level_and_format() -> None:
    """Filtered out above info; console format when asked; structlog's own before any
    configuration."""
    quiet = _run(
        "from openclaw_orchestrator.server.logs import FrequentEvent, configure_logging\n"
        "configure_logging('warning', 'json')\n"
        "FrequentEvent('svc', 'svc.attempt')(n=1)\n"
    )
    assert quiet.stderr == ""
    console = _run(
        "from openclaw_orchestrator.server.logs import FrequentEvent, configure_logging\n"
        "configure_logging('info', 'console')\n"
        "FrequentEvent('svc', 'svc.attempt')(n=1)\n"
    )
    assert "svc.attempt" in console.stderr
    assert "n=1" in console.stderr
    unconfigured = _run(
        "from openclaw_orchestrator.server.logs import FrequentEvent\n"
        "FrequentEvent('svc', 'svc.attempt')(n=1)\n"
    )
    assert "svc.attempt" in unconfigured.stdout + unconfigured.stderr


def test_lines_logged_while_shutting_down_on_sigterm_are_written(tmp_path: Path) -> None:
    """uvicorn ends the process by re-raising SIGTERM (no atexit): the line an instance logs
    while deregistering from an orchestrator that is gone must still reach stderr."""
    import signal
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        gone = probe.getsockname()[1]  # nothing listens here once closed
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [
        str(Path(sys.executable).parent / "openclaw-orchestrator"),
        "instance", "serve", "--name", "Q", "--port", str(port),
        "--register", f"http://127.0.0.1:{gone}", "--log-level", "info",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["ORCHESTRATOR_API_KEY"] = "k"
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [
        json.loads(line)["event"] for line in err.decode().splitlines() if line.startswith("{")
    ]
    assert "instance.deregister_failed" in events, err.decode()
