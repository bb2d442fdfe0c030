"""Structured logs of a real `openclaw orchestrator serve` process, read from its stderr.

The orchestrator runs as a subprocess (so structlog is configured exactly as in production,
once, for that process); its instances run in the test's loop with a handler that records the
request id each task arrived with. Every stderr line must be JSON; request ids must match
across the reply, the log and the instance; secrets must appear nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from openclaw_orchestrator import (
    AsyncClient,
    ConnectionFailedError,
    InvalidRequestError,
    UnauthorizedError,
)
from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.faults import FaultConfig
from openclaw_orchestrator.devtools.reference.handlers import HandlerContext
from openclaw_orchestrator.server.hosting import BackgroundServer
from tests.ports import free_port

BIN = Path(sys.executable).parent
API_KEY = "log-test-api-key-3f9a7c1e"
CREDENTIALS = "instance-credential-b71d04"
START_TIMEOUT = 30.0


@dataclass
class Served:
    """A `serve` process, its instances, and what the instances saw."""

    url: str
    process: asyncio.subprocess.Process
    seen: dict[str, list[str]]  # instance name -> request ids of the tasks it ran
    instance_urls: dict[str, str]
    lines: list[str] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        """Every stderr line so far, parsed; a line that is not JSON fails the test."""
        parsed = []
        for line in self.lines:
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"a log line is not JSON: {line!r}")
        return parsed

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], count: int = 1
    ) -> list[dict[str, Any]]:
        """Poll the log until ``count`` records match ``predicate``; returns every match."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while True:
            found = [r for r in self.records() if predicate(r)]
            if len(found) >= count:
                return found
            if loop.time() > deadline:
                pytest.fail("no matching log line; the log:\n" + "\n".join(self.lines))
            await asyncio.sleep(0.02)


def recording_handler(seen: dict[str, list[str]]) -> Any:
    """An echo handler that notes the request id every task arrives with."""

    async def handler(payload: Any, context: HandlerContext) -> Any:
        seen.setdefault(context.instance, []).append(context.request_id)
        return {"instance": context.instance, "payload": payload}

    return handler


async def _pump(stream: asyncio.StreamReader, sink: list[str]) -> None:
    async for raw in stream:
        if line := raw.decode("utf-8", "replace").strip():
            sink.append(line)


@contextlib.asynccontextmanager
async def serve(
    tmp_path: Path,
    *,
    names: str = "AB",
    failing: str = "",
    log_level: str = "info",
    settings: dict[str, Any] | None = None,
) -> AsyncIterator[Served]:
    """In-loop instances ``names`` (those in ``failing`` answer 503) behind a `serve` process
    started from a JSON config file, with the key in ORCHESTRATOR_API_KEY."""
    seen: dict[str, list[str]] = {}
    servers = {}
    for name in names:
        faults = FaultConfig(fail_rate=1.0, fail_status=503) if name in failing else None
        app = create_instance_app(name, recording_handler(seen), faults=faults)
        servers[name] = BackgroundServer(app)
    process = None
    pump = None
    try:
        for server in servers.values():
            await server.start()
        port = free_port()
        config = tmp_path / "orchestrator.json"
        config.write_text(
            json.dumps(
                {
                    "port": port,
                    "log_level": log_level,
                    "log_format": "json",
                    "health": {"interval": "200ms", "probe_timeout": "1s"},
                    "retry": {"backoff_base": "1ms", "backoff_max": "5ms"},
                    "instances": [{"name": n, "url": s.url} for n, s in servers.items()],
                    **(settings or {}),
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        env |= {"ORCHESTRATOR_API_KEY": API_KEY, "XDG_DATA_HOME": str(tmp_path / "data")}
        process = await asyncio.create_subprocess_exec(
            str(BIN / "openclaw"), "orchestrator", "serve", "--config", str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        assert process.stderr is not None
        served = Served(
            f"http://127.0.0.1:{port}", process, seen, {n: s.url for n, s in servers.items()}
        )
        pump = asyncio.create_task(_pump(process.stderr, served.lines))
        await _wait_live(served)
        yield served
    finally:
        if process is not None:
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if pump is not None:
            await pump
        for server in servers.values():
            server.request_stop()
        await asyncio.gather(*(s.wait_stopped() for s in servers.values()))


async def _wait_live(served: Served) -> None:
    """Poll liveness until the server answers and every instance is healthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    async with AsyncClient(served.url, API_KEY) as probe:
        while True:
            try:
                states = await probe.health()
                if states and set(states.values()) <= {"healthy", "down"}:
                    return
            except ConnectionFailedError:
                if served.process.returncode is not None:
                    pytest.fail("serve exited early:\n" + "\n".join(served.lines))
            if loop.time() > deadline:
                pytest.fail("serve did not come up:\n" + "\n".join(served.lines))
            await asyncio.sleep(0.05)


async def post_route(served: Served, body: Any, **headers: str) -> tuple[int, Any, str]:
    """POST a route request with raw aiohttp; returns (status, JSON body, X-Request-ID)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            served.url + "/api/orchestrator/route",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}", **headers},
        ) as resp,
    ):
        return resp.status, await resp.json(), resp.headers["X-Request-ID"]


# -- tests ---------------------------------------------------------------------------------------


def attempt_of(rid: str) -> Callable[[dict[str, Any]], bool]:
    """Matches the `orchestrator.attempt` records of request ``rid``."""
    return lambda r: r.get("event") == "orchestrator.attempt" and r.get("request_id") == rid


async def test_request_id_ties_reply_log_and_instance(tmp_path: Path) -> None:
    """Every line is JSON with timestamp, level and event; a route logs `orchestrator.attempt`
    with request_id, instance, attempt, outcome and latency_ms under the caller's X-Request-ID
    (or a fresh id when it sent none or an unsafe one), which the reply returns in body and
    header and the instance received."""
    route = {"instances": ["B"], "payload": {"d": 1}}
    async with serve(tmp_path) as served:
        status, body, header = await post_route(served, route, **{"X-Request-ID": "job-42.a:b_c"})
        assert status == 200, body
        assert body["request_id"] == header == "job-42.a:b_c"
        (attempt,) = await served.wait_for(attempt_of("job-42.a:b_c"))
        fresh = [
            await post_route(served, route),
            await post_route(served, route, **{"X-Request-ID": "bad id; drop"}),
            await post_route(served, route, **{"X-Request-ID": "x" * 129}),
        ]
        ids = [header for _, _, header in fresh]
        for status, body, header in fresh:
            assert status == 200, body
            assert body["request_id"] == header
            assert len(header) >= 16
            await served.wait_for(attempt_of(header))
        assert served.seen["B"] == ["job-42.a:b_c", *ids]
    assert len(set(ids)) == 3
    assert not {"bad id; drop", "x" * 129} & set(ids)
    assert attempt["instance"] == "B"
    assert attempt["attempt"] == 1
    assert attempt["outcome"] == "ok"
    assert isinstance(attempt["latency_ms"], int | float)
    assert attempt["latency_ms"] >= 0
    for record in served.records():  # every line: one JSON object, timestamp, level, event
        assert {"timestamp", "level", "event"} <= set(record), record
        assert record["timestamp"].endswith(("Z", "+00:00"))
        assert record["level"] in ("debug", "info", "warning", "error")
    events = {r["event"] for r in served.records()}
    assert {"api.started", "orchestrator.health_changed", "orchestrator.attempt"} <= events


async def test_failover_and_fanout_log_every_attempt(tmp_path: Path) -> None:
    """With A failing: a route logs A's failed attempt, the retry and B's success under one
    request id; a fanout logs one `orchestrator.fanout_target` line per target under its id."""
    async with serve(tmp_path, names="ABC", failing="A") as served:
        async with AsyncClient(served.url, API_KEY) as client:
            routes = [await client.route({"f": 1}, instances=["A", "B"]) for _ in range(2)]
            fanned = await client.fanout({"q": 1}, targets="A-C")
        for routed in routes:
            assert routed.instance == "B"
            await served.wait_for(attempt_of(routed.request_id))
        rid = fanned.request_id
        targets = await served.wait_for(
            lambda r: r.get("event") == "orchestrator.fanout_target" and r.get("request_id") == rid,
            count=3,
        )
        records = served.records()
    per_route = [[r for r in records if attempt_of(x.request_id)(r)] for x in routes]
    failed_over = [lines for lines in per_route if len(lines) > 1]
    assert failed_over, per_route  # round robin puts A first in one of the two routes
    for lines in failed_over:
        assert [(r["instance"], r["attempt"], r["outcome"]) for r in lines] == [
            ("A", 1, "error"),
            ("B", 2, "ok"),
        ]
        assert lines[0]["error"] == "instance_error"
        (retry,) = [
            r
            for r in records
            if r["event"] == "orchestrator.retry_scheduled"
            and r["request_id"] == lines[0]["request_id"]
        ]
        assert retry["instance"] == "B"
    assert {r["instance"]: r["outcome"] for r in targets} == {"A": "error", "B": "ok", "C": "ok"}
    assert all(r["attempt"] == 1 and "latency_ms" in r for r in targets)
    assert served.seen["C"] == [rid]
    assert served.seen["B"] == [*(x.request_id for x in routes), rid]
    assert "A" not in served.seen  # A's failure is injected before its handler runs


async def test_secrets_never_appear_in_logs_or_responses(tmp_path: Path) -> None:
    """After register (with credentials), route, fanout, a wrong key and errors, at debug
    level, neither the API key nor the instance's credentials are in any log line or reply."""
    seen: dict[str, list[str]] = {}
    guarded = BackgroundServer(create_instance_app("S", recording_handler(seen), token=CREDENTIALS))
    await guarded.start()
    replies: list[str] = []
    try:
        async with serve(tmp_path, log_level="debug") as served:
            async with AsyncClient(served.url, API_KEY) as client:
                info = await client.register(
                    "S", guarded.url, credentials=CREDENTIALS, tags=["secure"]
                )
                replies.append(info.model_dump_json())
                routed = await client.route({"s": 1}, instances="S")
                replies.append(routed.model_dump_json())
                fanned = await client.fanout(targets=["A", "S"])
                replies.append(fanned.model_dump_json())
                replies.extend(i.model_dump_json() for i in await client.instances())
                replies.append(json.dumps(await client.health("all")))
            async with AsyncClient(served.url, "presented-wrong-key-991") as wrong:
                with pytest.raises(UnauthorizedError) as denied:
                    await wrong.route(instances="S")
                replies.append(repr(denied.value) + json.dumps(denied.value.to_dict()))
            async with aiohttp.ClientSession() as http:
                for path in ("/api/cluster/instances", "/openapi.json", "/api/health/check"):
                    async with http.get(
                        served.url + path, headers={"Authorization": f"Bearer {API_KEY}"}
                    ) as resp:
                        replies.append(await resp.text())
            await served.wait_for(
                lambda r: (
                    r.get("event") == "orchestrator.fanout_target" and r.get("instance") == "S"
                )
            )
        assert routed.instance == "S"
        assert seen["S"] == [routed.request_id, fanned.request_id]  # the token was sent
        assert info.has_credentials is True
        log_text = "\n".join(served.lines)
        assert '"orchestrator.instance_registered"' in log_text
        for secret in (API_KEY, CREDENTIALS, "presented-wrong-key-991"):
            assert secret not in log_text
            for reply in replies:
                assert secret not in reply
    finally:
        await guarded.aclose()


async def test_userinfo_in_an_instance_url_is_refused_and_not_logged(tmp_path: Path) -> None:
    """A URL with a password in it is refused (400 naming url, pointing to credentials), and
    the password reaches neither the reply, the listing nor the logs."""
    async with serve(tmp_path) as served:
        port = served.instance_urls["A"].rsplit(":", 1)[1]
        async with AsyncClient(served.url, API_KEY) as client:
            with pytest.raises(InvalidRequestError) as refused:
                await client.register("U", f"http://user:url-pass-5521@127.0.0.1:{port}")
            await client.register("V", f"http://127.0.0.1:{port}")  # a line after the refusal
            listing = [i.model_dump_json() for i in await client.instances()]
        await served.wait_for(
            lambda r: r.get("event") == "orchestrator.instance_registered" and r["instance"] == "V"
        )
    assert refused.value.field == "url"
    assert "credentials" in refused.value.message
    assert "url-pass-5521" not in str(refused.value.to_dict())
    assert "url-pass-5521" not in "\n".join(served.lines)
    assert all("url-pass-5521" not in item for item in listing)


async def test_a_client_leaving_mid_body_is_no_error_and_a_slow_body_is_cut_off(
    tmp_path: Path,
) -> None:
    """A client that leaves while sending its body (fast path and FastAPI routes) is an
    info line, never an error with a traceback; a body slower than ``body_timeout`` gets
    408 naming ``body`` and the connection closes."""
    async with serve(tmp_path, settings={"body_timeout": "300ms"}) as served:
        port = int(served.url.rsplit(":", 1)[1])
        head = (
            "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + API_KEY + "\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        paths = ["/api/orchestrator/route", "/api/orchestrator/sessions/spawn"]
        for path in paths:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head.format(path=path).encode() + b'{"pay')
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.format(path=paths[1]).encode() + b'{"sessionId"')
        raw = await asyncio.wait_for(reader.read(), 10)  # 408, then the close
        writer.close()
        status_line, _, rest = raw.partition(b"\r\n")
        assert status_line.split()[1] == b"408", raw
        assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["field"] == "body"
        await served.wait_for(lambda r: r.get("event") == "api.client_disconnected", count=2)
        assert [r for r in served.records() if r.get("level") == "error"] == []


def test_unconfigured_logging_prints_tracebacks_without_locals() -> None:
    """An app embedded without :func:`configure_logging` (as the in-process tests run it)
    logs through structlog's defaults: an unexpected error's traceback is printed plainly,
    never with the frames' locals (Rich's default showed them, and took seconds)."""
    script = (
        "from openclaw_orchestrator.server.logs import get_logger\n"
        "def handler():\n"
        "    credential = 'sk-never-in-a-log'\n"
        "    raise RuntimeError('boom')\n"
        "try:\n"
        "    handler()\n"
        "except RuntimeError as exc:\n"
        "    get_logger('t').error('api.unexpected_error', exc_info=exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    output = done.stdout + done.stderr
    assert "RuntimeError: boom" in output
    assert "in handler" in output
    assert "sk-never-in-a-log" not in output
