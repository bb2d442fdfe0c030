"""CLI and SDK behaviour that needs no orchestrator: exit codes, argv, hand-off, rendering.

Where an HTTP peer is needed, a tiny aiohttp app on 127.0.0.1:0 answers with canned replies,
so the SDK's parsing and error translation run against real sockets.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
import pytest
from aiohttp import web
from rich.console import Console, RenderableType
from typer.testing import CliRunner

from openclaw_orchestrator.cli import render
from openclaw_orchestrator.cli.entry import expand_multi_value_options, find_openclaw
from openclaw_orchestrator.cli.main import (
    EXIT_CODES,
    ExitCode,
    _payload,
    app,
    cluster_names,
    exit_code_for,
)
from openclaw_orchestrator.errors import (
    AggregationError,
    ConflictError,
    ConnectionFailedError,
    ForbiddenError,
    InstanceDownError,
    InstanceError,
    InvalidRequestError,
    NoHealthyInstanceError,
    NotFoundError,
    OrchestratorError,
    SessionClosedError,
    SessionExistsError,
    TimeoutExceededError,
    UnauthorizedError,
)
from openclaw_orchestrator.models import (
    Attempt,
    FanoutEntry,
    FanoutRequest,
    FanoutResult,
    HealthDetail,
    HistoryEntry,
    HistoryPage,
    InstanceInfo,
    InstanceSpec,
    RouteRequest,
    RouteResult,
    SendRequest,
    SendResult,
    SessionInfo,
    Skip,
    SpawnRequest,
    SpawnResult,
)
from openclaw_orchestrator.sdk import calls as api_calls
from openclaw_orchestrator.sdk.async_client import (
    DEFAULT_TIMEOUT_MARGIN,
    AsyncClient,
    AsyncSession,
    Client,
    Session,
)
from openclaw_orchestrator.settings import ConfigError

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SECRET = "sk-test-very-secret"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_orchestrator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's ORCHESTRATOR_* variables."""
    for name in ("ORCHESTRATOR_URL", "ORCHESTRATOR_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def closed_url() -> str:
    """A URL on a port that was bound and closed: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A URL whose socket listens but never answers: requests hang until the client's deadline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def canned() -> AsyncIterator[Callable[[str, str, Handler], str]]:
    """Serve canned handlers on 127.0.0.1:0; ``add(method, path, handler)`` returns the URL."""
    routes: dict[tuple[str, str], Handler] = {}

    async def dispatch(request: web.Request) -> web.StreamResponse:
        handler = routes.get((request.method, request.path))
        if handler is None:
            return web.Response(status=404, text="no canned reply")
        return await handler(request)

    server = web.Application()
    server.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    def add(method: str, path: str, handler: Handler) -> str:
        routes[(method, path)] = handler
        return f"http://127.0.0.1:{port}"

    yield add
    await runner.cleanup()


def _json_reply(body: Any, status: int = 200) -> Handler:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    return reply


def _route_result(instance: str = "A") -> RouteResult:
    return RouteResult(
        instance=instance,
        result={"answer": 42},
        attempts=[
            Attempt(
                instance="B",
                outcome="down",
                latency_ms=1.5,
                error={"code": "instance_down", "message": "refused"},
            ),
            Attempt(instance=instance, outcome="ok", latency_ms=12.25),
        ],
        skipped=[Skip(instance="C", reason="down")],
        total_ms=14.0,
        request_id="req-1",
    )


def _fanout_result() -> FanoutResult:
    return FanoutResult(
        aggregate="array",
        value=[{"n": 1}],
        results=[
            FanoutEntry(instance="A", status="ok", result={"n": 1}, latency_ms=3.0),
            FanoutEntry(
                instance="B",
                status="error",
                error={"code": "instance_error", "message": "boom"},
                latency_ms=4.0,
            ),
        ],
        succeeded=1,
        failed=1,
        timed_out=0,
        total_ms=5.0,
        request_id="req-2",
    )


def _text(renderable: RenderableType, *, styles: bool = False) -> str:
    console = Console(
        record=True,
        width=160,
        file=io.StringIO(),
        force_terminal=styles,
        color_system="standard" if styles else None,
    )
    console.print(renderable)
    return console.export_text(styles=styles)


# -- exit codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConnectionFailedError("x"), ExitCode.UNREACHABLE),
        (TimeoutExceededError("x"), ExitCode.UNREACHABLE),
        (UnauthorizedError("x"), ExitCode.AUTH),
        (ForbiddenError("x"), ExitCode.AUTH),
        (InvalidRequestError("x", field="instances"), ExitCode.USAGE),
        (ConfigError("x"), ExitCode.USAGE),
        (NoHealthyInstanceError("x"), ExitCode.TASK_FAILED),
        (InstanceError("x"), ExitCode.TASK_FAILED),
        (InstanceDownError("x"), ExitCode.TASK_FAILED),
        (AggregationError("x"), ExitCode.TASK_FAILED),
        (NotFoundError("x"), ExitCode.TASK_FAILED),
        (SessionExistsError("x"), ExitCode.TASK_FAILED),
        (SessionClosedError("x"), ExitCode.TASK_FAILED),
        (ConflictError("x"), ExitCode.TASK_FAILED),
        (OrchestratorError("x"), ExitCode.TASK_FAILED),
        (OSError(98, "Address already in use"), ExitCode.TASK_FAILED),
        (ValueError("x"), None),
        (KeyError("x"), None),
    ],
)
def test_exit_code_table(exc: BaseException, code: ExitCode | None) -> None:
    """Each error lands on the documented exit code; foreign exceptions are not swallowed."""
    assert exit_code_for(exc) == code


def test_exit_code_table_names_real_classes() -> None:
    """Every name in EXIT_CODES resolves to a class (no stale entries after a rename)."""
    for name in EXIT_CODES:
        assert any(cls.__name__ == name for cls in _all_error_classes()), name


def _all_error_classes() -> list[type[BaseException]]:
    from openclaw_orchestrator import errors

    found: list[type[BaseException]] = [ConfigError, OSError]
    found += [getattr(errors, name) for name in errors.__all__ if name[0].isupper()]
    return [cls for cls in found if isinstance(cls, type)]


def test_unsafe_bind_is_a_config_error() -> None:
    """``serve`` refusing a non-loopback bind without a key exits 2, like any config error."""
    from openclaw_orchestrator.server.serve import UnsafeBindError

    assert exit_code_for(UnsafeBindError("refusing")) == ExitCode.USAGE


# -- commands without a server ---------------------------------------------------------------


def test_unreachable_orchestrator_exits_4(closed_url: str) -> None:
    """A refused connection prints connection_failed with the URL and exits 4."""
    result = CliRunner().invoke(app, ["health", "--url", closed_url])
    assert result.exit_code == 4
    assert f"error: connection_failed: cannot reach the orchestrator at {closed_url}" in (
        result.stderr
    )
    assert result.stdout == ""


def test_payload_not_json_exits_2_naming_payload() -> None:
    """A --payload that is not JSON is a usage error that names the option (no request sent)."""
    result = CliRunner().invoke(app, ["route", "--payload", "{not json"])
    assert result.exit_code == 2
    assert "--payload" in result.stderr
    assert "not valid JSON" in result.stderr


def test_payload_from_missing_file_exits_2() -> None:
    """--payload @missing.json is a usage error naming --payload."""
    result = CliRunner().invoke(app, ["route", "--payload", "@/nonexistent/payload.json"])
    assert result.exit_code == 2
    assert "--payload" in result.stderr


def test_payload_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--payload reads inline JSON, @file and - (stdin)."""
    path = tmp_path / "task.json"
    path.write_text('{"data": "from file"}', encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", io.StringIO('["from", "stdin"]'))
    assert _payload('{"data": "task"}') == {"data": "task"}
    assert _payload(f"@{path}") == {"data": "from file"}
    assert _payload("-") == ["from", "stdin"]


def test_bad_duration_exits_2_naming_timeout() -> None:
    """--timeout soon is rejected before any request, naming --timeout."""
    result = CliRunner().invoke(app, ["fanout", "--timeout", "soon"])
    assert result.exit_code == 2
    assert "--timeout" in result.stderr


def test_credentials_env_must_be_set(closed_url: str) -> None:
    """register --credentials-env VAR with VAR unset is a usage error; no secret on argv."""
    args = ["register", "--name", "X", "--url", "http://127.0.0.1:1", "--orchestrator-url"]
    result = CliRunner().invoke(
        app, [*args, closed_url, "--credentials-env", "OPENCLAW_TEST_UNSET_VARIABLE"]
    )
    assert result.exit_code == 2
    assert "OPENCLAW_TEST_UNSET_VARIABLE" in result.stderr


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    """A config file that is not valid JSON is a ConfigError: exit 2 with the file named."""
    config = tmp_path / "client.json"
    config.write_text("{oops", encoding="utf-8")
    result = CliRunner().invoke(app, ["health", "--config", str(config)])
    assert result.exit_code == 2
    assert "client.json" in result.stderr


def test_url_from_config_file(tmp_path: Path, closed_url: str) -> None:
    """--config supplies the URL (and key) when no --url is given."""
    config = tmp_path / "client.json"
    config.write_text(orjson.dumps({"url": closed_url, "api_key": SECRET}).decode(), "utf-8")
    result = CliRunner().invoke(app, ["instances", "--config", str(config)])
    assert result.exit_code == 4
    assert closed_url in result.stderr
    assert SECRET not in result.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["route", "--instances", "A", "B"], ["route", "--instances", "A", "--instances", "B"]),
        (["route", "--instances", "A-H"], ["route", "--instances", "A-H"]),
        (
            ["fanout", "--targets", "A", "C,E", "--timeout", "10s"],
            ["fanout", "--targets", "A", "--targets", "C,E", "--timeout", "10s"],
        ),
        (
            ["route", "--instances=A", "B", "--payload", "-"],
            ["route", "--instances=A", "--instances", "B", "--payload", "-"],
        ),
        (
            ["health", "--instances", "A", "--instances", "B"],
            ["health", "--instances", "A", "--instances", "B"],
        ),
        (
            ["register", "--tag", "gpu", "fast", "--name", "X"],
            ["register", "--tag", "gpu", "--tag", "fast", "--name", "X"],
        ),
        (["unregister", "A"], ["unregister", "A"]),
        (["route", "--", "--instances", "A", "B"], ["route", "--", "--instances", "A", "B"]),
    ],
)
def test_multi_value_options_are_expanded(argv: list[str], expected: list[str]) -> None:
    """--instances A B becomes the repeated form Typer understands; other words are untouched."""
    assert expand_multi_value_options(argv) == expected


@pytest.mark.parametrize(
    ("tokens", "names"),
    [
        (["A-H"], ["A", "B", "C", "D", "E", "F", "G", "H"]),
        (["A,C,E"], ["A", "C", "E"]),
        (["w1-w3", "x"], ["w1", "w2", "w3", "x"]),
        (["A", "B", "A"], ["A", "B"]),
    ],
)
def test_cluster_names_expand_without_registry(tokens: list[str], names: list[str]) -> None:
    """``up --instances`` expands ranges and lists with the shared target parser."""
    assert cluster_names(tokens) == names


def test_cluster_names_reject_all() -> None:
    """``up --instances all`` has nothing to mean yet: a usage error, not an empty cluster."""
    with pytest.raises(InvalidRequestError):
        cluster_names(["all"])


# -- the openclaw hand-off -------------------------------------------------------------------


@pytest.fixture
def scripts() -> Path:
    """The venv's bin directory holding the installed console scripts."""
    bin_dir = Path(sys.executable).parent
    found = shutil.which("openclaw", path=str(bin_dir))
    if found is None:
        reason = "console scripts not installed: run .venv/bin/pip install -e '.[dev]'"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return bin_dir


def _fake_openclaw(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "openclaw"
    script.write_text('#!/bin/sh\necho "fake-openclaw $*"\n', encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def _run(scripts: Path, args: list[str], path: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": os.pathsep.join(str(p) for p in path)}
    env.pop("ORCHESTRATOR_URL", None)
    env.pop("ORCHESTRATOR_API_KEY", None)
    return subprocess.run(
        [str(scripts / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("position", ["earlier", "later"])
def test_openclaw_hands_off_whole_command_line(
    scripts: Path, tmp_path: Path, position: str
) -> None:
    """A first word other than 'orchestrator' execs the other openclaw with every argument."""
    fake = _fake_openclaw(tmp_path / "other")
    path = [fake.parent, scripts] if position == "earlier" else [scripts, fake.parent]
    done = _run(scripts, ["openclaw", "gateway", "run", "--port", "1", "a b"], path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fake-openclaw gateway run --port 1 a b"


def test_openclaw_without_real_cli_exits_2(scripts: Path, tmp_path: Path) -> None:
    """With no other openclaw on PATH the shim says so and exits 2."""
    done = _run(scripts, ["openclaw", "gateway", "status"], [scripts, tmp_path])
    assert done.returncode == 2
    assert "no OpenClaw CLI found on PATH (looked for 'openclaw' beyond" in done.stderr
    assert str(scripts / "openclaw") in done.stderr


def test_openclaw_skips_other_installs_of_itself(scripts: Path, tmp_path: Path) -> None:
    """Another copy of this shim on PATH is not a hand-off target (it would loop back)."""
    copy = tmp_path / "other-venv" / "openclaw"
    copy.parent.mkdir()
    shutil.copy2(scripts / "openclaw", copy)
    done = _run(scripts, ["openclaw", "gateway"], [copy.parent, scripts])
    assert done.returncode == 2
    assert "no OpenClaw CLI found" in done.stderr


@pytest.mark.parametrize("args", [[], ["--help"], ["-h"]])
def test_openclaw_alone_prints_short_help(scripts: Path, tmp_path: Path, args: list[str]) -> None:
    """`openclaw`, `--help` and `-h` print a short help naming `orchestrator`, exit 0."""
    done = _run(scripts, ["openclaw", *args], [scripts])
    assert done.returncode == 0
    assert "openclaw orchestrator" in done.stdout


def test_both_entry_points_run_the_same_app(scripts: Path, closed_url: str) -> None:
    """`openclaw orchestrator X` and `openclaw-orchestrator X` behave alike, nargs included."""
    for argv in (["openclaw", "orchestrator"], ["openclaw-orchestrator"]):
        args = [*argv, "route", "--instances", "A", "B", "--url", closed_url]
        done = _run(scripts, args, [scripts])
        assert done.returncode == 4, done.stderr
        assert "cannot reach the orchestrator" in done.stderr


def test_find_openclaw_skips_itself(tmp_path: Path) -> None:
    """The search skips the shim, its directory and the interpreter's; first other wins."""
    own = _fake_openclaw(tmp_path / "venv-bin")
    python_bin = _fake_openclaw(tmp_path / "python-bin")
    first = _fake_openclaw(tmp_path / "first")
    _fake_openclaw(tmp_path / "second")
    dirs = ["venv-bin", "python-bin", "missing", "first", "second"]
    search = os.pathsep.join(str(tmp_path / d) for d in dirs)
    assert find_openclaw(search, own=own, skip_dirs=[python_bin.parent]) == first
    assert find_openclaw(str(own.parent), own=own) is None


# -- rendering -------------------------------------------------------------------------------


def test_route_view_shows_server_attempts_and_time() -> None:
    """Table mode for route: who served it, the result, every attempt, skips, total time."""
    text = _text(render.route_view(_route_result()))
    assert "served by A in 14.0 ms" in text
    assert '"answer": 42' in text
    assert "instance_down: refused" in text
    assert "12.2 ms" in text
    assert "C (down)" in text


def test_fanout_view_shows_targets_and_aggregate() -> None:
    """Table mode for fanout: per-target status/latency/summary, then the aggregate value."""
    text = _text(render.fanout_view(_fanout_result()))
    assert "instance_error: boom" in text
    assert '{"n":1}' in text
    assert "aggregate (array)" in text
    assert "1 ok, 1 failed, 0 timed out" in text


def test_health_view_colors_states() -> None:
    """Health states are colored: healthy green, down red."""
    text = _text(render.health_view({"A": "healthy", "B": "down"}), styles=True)
    assert "\x1b[32mhealthy" in text
    assert "\x1b[1;31mdown" in text


def test_health_view_with_detail() -> None:
    """--detail adds latency, failures in a row and the last error."""
    detail = HealthDetail(
        state="degraded",
        latency_ms=1200.0,
        consecutive_failures=2,
        last_error="slow probe",
        last_check=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        url="http://127.0.0.1:18801",
    )
    text = _text(render.health_view({"A": detail}))
    assert "1200.0 ms" in text
    assert "slow probe" in text
    assert "03:04:05" in text


def test_instances_view_never_shows_credentials() -> None:
    """The instance table lists name/url/state and nothing secret."""
    info = InstanceInfo(
        name="A",
        url="http://127.0.0.1:18801",
        driver="worker",
        weight=2.0,
        tags=["gpu"],
        has_credentials=True,
        state="healthy",
        source="registered",
    )
    text = _text(render.instances_view([info]))
    assert "http://127.0.0.1:18801" in text
    assert "gpu" in text
    assert "registered" in text


def test_json_output_is_model_dump() -> None:
    """JSON mode prints model_dump(mode='json') with a two-space indent."""
    result = _route_result()
    assert orjson.loads(render.to_json(result)) == result.model_dump(mode="json")
    assert render.to_json({"A": "healthy"}) == '{\n  "A": "healthy"\n}'
    detail = HealthDetail(state="healthy", url="http://x")
    assert orjson.loads(render.to_json({"A": detail}))["A"]["state"] == "healthy"


def test_stream_lines_match_the_api() -> None:
    """Streamed JSON output is one compact line per event, shaped like the API's NDJSON."""
    result = _fanout_result()
    entry_line = orjson.loads(render.stream_line(result.results[0]))
    assert entry_line == {"type": "entry", "entry": result.results[0].model_dump(mode="json")}
    assert orjson.loads(render.stream_line(result))["type"] == "result"
    assert "\n" not in render.stream_line(result)


def test_error_text_names_code_instance_field() -> None:
    """Errors read `error: <code>: <message>` plus the instance and field when set."""
    text = _text(render.error_text(InstanceDownError("gone", instance="B")))
    assert text.strip() == "error: instance_down: gone (instance B)"
    field = _text(render.error_text(InvalidRequestError("bad", field="targets")))
    assert "(field targets)" in field


def test_error_text_lists_partial_fanout_results() -> None:
    """A fanout that missed min_success shows the entries that did arrive."""
    entry = FanoutEntry(instance="A", status="ok", result=1, latency_ms=2.0)
    exc = TimeoutExceededError(
        "min_success not met", details={"results": [entry.model_dump(mode="json"), {"bad": 1}]}
    )
    text = _text(render.error_text(exc))
    assert "error: timeout: min_success not met" in text
    assert "A" in text.splitlines()[1]


# -- SDK against real sockets ----------------------------------------------------------------


async def test_sdk_raises_connection_failed(closed_url: str) -> None:
    """A refused connection is ConnectionFailedError naming the URL, never the key."""
    async with AsyncClient(closed_url, api_key=SECRET) as client:
        with pytest.raises(ConnectionFailedError, match="cannot reach the orchestrator at") as info:
            await client.health()
    assert closed_url in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


async def test_sdk_client_side_timeout(silent_url: str) -> None:
    """No answer within the client's timeout is TimeoutExceededError (exit code 4)."""
    async with AsyncClient(silent_url, timeout=0.2) as client:
        with pytest.raises(TimeoutExceededError, match="no answer from the orchestrator"):
            await client.instances()


def test_client_deadline_exceeds_request_timeout() -> None:
    """The HTTP deadline is the request's own timeout plus the margin, so the 504 arrives."""
    assert api_calls.route(timeout=10.0).wait(60.0) == 10.0 + DEFAULT_TIMEOUT_MARGIN
    assert api_calls.route().wait(60.0) == 60.0


async def test_sdk_sends_bodies_without_none_fields(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """route sends only the set fields, the bearer key and the Idempotency-Key header."""
    seen: dict[str, Any] = {}

    async def route(request: web.Request) -> web.StreamResponse:
        seen["body"] = orjson.loads(await request.read())
        seen["auth"] = request.headers.get("Authorization")
        seen["key"] = request.headers.get("Idempotency-Key")
        return web.Response(body=_route_result().model_dump_json(), content_type="application/json")

    url = canned("POST", "/api/orchestrator/route", route)
    async with AsyncClient(url, api_key=SECRET) as client:
        result = await client.route(instances=["A", "B"], timeout="10s", idempotency_key="k-1")
    assert result == _route_result()
    assert seen["body"] == {"instances": ["A", "B"], "payload": {}, "timeout": 10.0}
    assert set(seen["body"]) <= set(RouteRequest.model_fields)
    assert seen["auth"] == f"Bearer {SECRET}"
    assert seen["key"] == "k-1"


async def test_sdk_rebuilds_typed_errors(canned: Callable[[str, str, Handler], str]) -> None:
    """A JSON error envelope becomes the same class the server raised, with its fields."""
    envelope = {"error": {"code": "no_healthy_instance", "message": "all down", "instance": "A"}}
    url = canned("POST", "/api/orchestrator/route", _json_reply(envelope, status=503))
    async with AsyncClient(url) as client:
        with pytest.raises(NoHealthyInstanceError, match="all down") as info:
            await client.route({"x": 1})
    assert info.value.instance == "A"


async def test_sdk_non_json_error_keeps_status(canned: Callable[[str, str, Handler], str]) -> None:
    """An error reply that is not JSON is an OrchestratorError carrying the HTTP status."""

    async def broken(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="Bad Gateway from a proxy")

    url = canned("GET", "/api/cluster/instances", broken)
    async with AsyncClient(url) as client:
        with pytest.raises(OrchestratorError, match="HTTP 502") as info:
            await client.instances()
    assert type(info.value) is OrchestratorError
    assert info.value.upstream_status == 502


async def test_sdk_health_and_cluster_calls(canned: Callable[[str, str, Handler], str]) -> None:
    """health passes target tokens as one query value; cluster calls parse their models."""
    seen: dict[str, Any] = {}
    info = {
        "name": "Z",
        "url": "http://127.0.0.1:18809",
        "driver": "worker",
        "weight": 1.0,
        "tags": [],
        "has_credentials": True,
        "state": "unknown",
        "source": "registered",
    }

    async def health(request: web.Request) -> web.StreamResponse:
        seen["query"] = dict(request.query)
        return web.json_response({"A": "healthy", "C": "down"})

    async def register(request: web.Request) -> web.StreamResponse:
        seen["register"] = orjson.loads(await request.read())
        return web.json_response(info, status=201)

    async def unregister(request: web.Request) -> web.StreamResponse:
        return web.json_response({"removed": "Z"})

    canned("GET", "/api/orchestrator/health", health)
    canned("POST", "/api/cluster/register", register)
    canned("DELETE", "/api/cluster/instances/Z", unregister)
    url = canned("GET", "/api/cluster/instances", _json_reply({"instances": [info]}))
    async with AsyncClient(url) as client:
        assert await client.health(["A", "C"]) == {"A": "healthy", "C": "down"}
        registered = await client.register(
            "Z", "http://127.0.0.1:18809", credentials="tok", heartbeat_ttl="30s"
        )
        assert [i.name for i in await client.instances()] == ["Z"]
        await client.unregister("Z")
    assert seen["query"] == {"instances": "A,C"}
    assert registered.has_credentials
    assert seen["register"]["credentials"] == "tok"
    assert seen["register"]["heartbeat_ttl"] == 30.0
    assert set(seen["register"]) <= set(InstanceSpec.model_fields)


def _ndjson(*events: Any) -> Handler:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for event in events:
            await response.write(orjson.dumps(event) + b"\n")
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    return stream


async def test_fanout_stream_yields_entries_then_result(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """Entries arrive one by one (even lines over 64 KiB), then the final FanoutResult."""
    result = _fanout_result()
    big = FanoutEntry(instance="C", status="ok", result="x" * 200_000, latency_ms=1.0)
    events = [{"type": "entry", "entry": e.model_dump(mode="json")} for e in result.results]
    events.append({"type": "entry", "entry": big.model_dump(mode="json")})
    events.append({"type": "result", "result": result.model_dump(mode="json")})
    url = canned("POST", "/api/orchestrator/fanout", _ndjson(*events))
    async with AsyncClient(url) as client:
        items = [item async for item in client.fanout_stream({"q": 1}, targets="A-C")]
    assert items == [*result.results, big, result]


async def test_fanout_stream_error_line_raises(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """A final error line (min_success unmet) raises the typed error after the entries."""
    entry = FanoutEntry(instance="A", status="timeout", latency_ms=1000.0)
    error = {"code": "timeout", "message": "min_success not met", "details": {"results": []}}
    url = canned(
        "POST",
        "/api/orchestrator/fanout",
        _ndjson(
            {"type": "entry", "entry": entry.model_dump(mode="json")},
            {"type": "error", "error": error},
        ),
    )
    seen: list[Any] = []

    async def consume(client: AsyncClient) -> None:
        async for item in client.fanout_stream(min_success=2):
            seen.append(item)

    async with AsyncClient(url) as client:
        with pytest.raises(TimeoutExceededError, match="min_success not met"):
            await consume(client)
    assert seen == [entry]


async def test_fanout_sends_the_fanout_request_fields(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """fanout's body uses FanoutRequest's field names and leaves unset knobs out."""
    seen: dict[str, Any] = {}

    async def fanout(request: web.Request) -> web.StreamResponse:
        seen["body"] = orjson.loads(await request.read())
        body = _fanout_result().model_dump_json()
        return web.Response(body=body, content_type="application/json")

    url = canned("POST", "/api/orchestrator/fanout", fanout)
    async with AsyncClient(url) as client:
        await client.fanout({"q": 1}, targets="A-H", aggregate="topk", top_k=3, min_success=1)
    assert seen["body"] == {
        "targets": "A-H",
        "payload": {"q": 1},
        "aggregate": "topk",
        "top_k": 3,
        "min_success": 1,
    }
    assert set(seen["body"]) <= set(FanoutRequest.model_fields)


# -- client lifecycle ------------------------------------------------------------------------


def test_repr_hides_secrets() -> None:
    """Reprs show the URL only: no API key, no password in the URL."""
    client = AsyncClient("http://user:pw@127.0.0.1:18790", api_key=SECRET)
    assert repr(client) == "<AsyncClient url='http://127.0.0.1:18790'>"
    with Client("http://127.0.0.1:18790", api_key=SECRET) as sync:
        assert repr(sync) == "<Client url='http://127.0.0.1:18790'>"


async def test_async_client_refuses_use_after_aclose(closed_url: str) -> None:
    """After aclose() every call is a RuntimeError (programmer error, not OrchestratorError)."""
    client = AsyncClient(closed_url)
    await client.aclose()
    await client.aclose()
    assert client.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        await client.health()


async def test_async_client_leaves_a_passed_session_open(closed_url: str) -> None:
    """A session handed in belongs to the caller: aclose() does not close it."""
    async with aiohttp.ClientSession() as session:
        async with AsyncClient(closed_url, session=session) as client:
            with pytest.raises(ConnectionFailedError):
                await client.liveness()
        assert not session.closed


def test_sync_client_open_close(closed_url: str) -> None:
    """Client on its stdlib transport: calls work, close is idempotent, then it refuses."""
    client = Client(closed_url, api_key=SECRET, timeout=5)
    assert not client.is_closed
    with pytest.raises(ConnectionFailedError):
        client.health()
    with pytest.raises(ConnectionFailedError):
        list(client.fanout_stream({"q": 1}))
    client.close()
    client.close()
    assert client.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        client.instances()


async def test_sync_client_refuses_a_running_loop(closed_url: str) -> None:
    """Inside async code the facade says to use AsyncClient instead of deadlocking."""
    with Client(closed_url) as client:
        with pytest.raises(RuntimeError, match="use AsyncClient"):
            client.health()


# -- sessions: models, rendering, SDK and CLI against canned replies -------------------------

TOKEN = "ocs_never-shown-0123456789abcdef"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
S = "/api/orchestrator/sessions"


def _session_info(**overrides: Any) -> SessionInfo:
    fields: dict[str, Any] = {
        "session_id": "session1",
        "instance": "A",
        "state": "open",
        "metadata": {"user": "u1"},
        "ttl": 3600.0,
        "failover": "none",
        "created_at": WHEN,
        "last_active_at": WHEN,
        "expires_at": datetime(2026, 1, 2, 4, 4, 5, tzinfo=UTC),
        "messages": 2,
    }
    return SessionInfo(**(fields | overrides))


def _spawned(**overrides: Any) -> SpawnResult:
    return SpawnResult(**_session_info(**overrides).model_dump(), token=TOKEN)


def _sent(**overrides: Any) -> SendResult:
    fields: dict[str, Any] = {
        "session_id": "session1",
        "seq": 3,
        "instance": "B",
        "reply": {"answer": 42},
        "latency_ms": 7.5,
        "request_id": "req-9",
    }
    return SendResult(**(fields | overrides))


def _entry(seq: int, kind: Literal["message", "migration"] = "message") -> HistoryEntry:
    return HistoryEntry(
        seq=seq,
        kind=kind,
        data={"n": seq} if kind == "message" else {"from": "A", "to": "B"},
        reply={"ok": seq} if kind == "message" else None,
        instance="A",
        latency_ms=1.0,
        created_at=WHEN,
    )


def _page(entries: list[HistoryEntry], offset: int, total: int, limit: int) -> HistoryPage:
    end = offset + len(entries)
    return HistoryPage(
        session_id="session1",
        messages=entries,
        total=total,
        offset=offset,
        limit=limit,
        next_offset=end if end < total else None,
    )


def _model_reply(model: Any, status: int = 200) -> Handler:
    return _json_reply(model.model_dump(mode="json"), status)


def test_session_view_shows_the_token_once_with_the_notice() -> None:
    """Table mode for a spawn: the session's fields, then `token: … (keep it: …)`."""
    text = _text(render.session_view(_spawned(), token=TOKEN))
    assert "session1" in text
    assert "2026-01-02 03:04:05" in text
    assert '{"user":"u1"}' in text
    assert f"token: {TOKEN} (keep it: it is shown once)" in text
    assert TOKEN not in _text(render.session_view(_spawned()))


def test_session_view_colors_the_state() -> None:
    """Session states are colored: open green, expired yellow."""
    assert "\x1b[32mopen" in _text(render.session_view(_session_info()), styles=True)
    expired = _session_info(state="expired", expires_at=None)
    assert "\x1b[33mexpired" in _text(render.session_view(expired), styles=True)


def test_send_view_shows_seq_instance_reply_latency_and_migration() -> None:
    """Table mode for a send: message number, instance, latency, reply, and a migration."""
    text = _text(render.send_view(_sent(migrated_from="A", replayed=True)))
    assert "message #3 of session1 on B in 7.5 ms" in text
    assert "migrated from A" in text
    assert "replayed" in text
    assert '"answer": 42' in text
    assert "request req-9" in text
    assert "migrated" not in _text(render.send_view(_sent()))


def test_history_view_lists_entries_and_position() -> None:
    """Table mode for history: seq, kind, instance, time, data and reply summaries, paging."""
    page = _page([_entry(1), _entry(2, "migration")], offset=0, total=5, limit=2)
    text = _text(render.history_view(page))
    assert '{"n":1}' in text
    assert '{"ok":1}' in text
    assert "migration" in text
    assert "2026-01-02 03:04:05" in text
    assert "2 of 5 from offset 0; next offset 2" in text
    last = _text(render.history_view(_page([_entry(5)], offset=4, total=5, limit=2)))
    assert "1 of 5 from offset 4; end" in last


def test_sessions_view_has_one_row_per_session_and_no_token() -> None:
    """The session list shows id, instance, state and counts; JSON mode is the model dump."""
    infos = [_session_info(), _session_info(session_id="s2", instance="C", state="closed")]
    text = _text(render.sessions_view(infos))
    assert "session1" in text
    assert "s2" in text
    assert "closed" in text
    assert orjson.loads(render.to_json(infos))[1]["instance"] == "C"


def test_session_handles_never_show_the_token() -> None:
    """AsyncSession/Session reprs name the id only; their info carries no token."""
    client = AsyncClient("http://127.0.0.1:1", api_key=SECRET)
    handle = client.sessions.session("session1", token=TOKEN)
    assert repr(handle) == "<AsyncSession id='session1'>"
    assert handle.token == TOKEN
    info = api_calls.public_info(_spawned())  # what a spawned handle keeps in .info
    assert type(info) is SessionInfo
    assert TOKEN not in repr(info)
    with Client("http://127.0.0.1:1") as sync:
        session = sync.sessions.session("session1", token=TOKEN)
        assert repr(session) == "<Session id='session1'>"
        assert session.token == TOKEN
        assert session.info is None
        assert repr(sync.sessions) == "<Sessions url='http://127.0.0.1:1'>"


def test_session_handle_checks_id_and_token_without_echoing_the_token() -> None:
    """A malformed id is invalid_request naming session_id; a bad token is a ValueError."""
    sessions = AsyncClient("http://127.0.0.1:1").sessions
    with pytest.raises(InvalidRequestError, match="session_id") as info:
        sessions.session("../admin")
    assert info.value.field == "session_id"
    with pytest.raises(ValueError, match="session token") as bad:
        sessions.session("s1", token="has a space ocs_secret")
    assert "ocs_secret" not in str(bad.value)


async def test_sdk_session_calls_use_the_api_paths_and_bodies(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """spawn/send/list/get/close send the documented paths, bodies and query parameters."""
    seen: dict[str, Any] = {}

    def recording(name: str, reply: Handler) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            seen[name] = {
                "body": orjson.loads(raw) if raw else None,
                "query": dict(request.query),
                "auth": request.headers.get("Authorization"),
                "key": request.headers.get("Idempotency-Key"),
            }
            return await reply(request)

        return handler

    canned("POST", f"{S}/spawn", recording("spawn", _model_reply(_spawned(), 201)))
    canned("POST", f"{S}/session1/send", recording("send", _model_reply(_sent())))
    canned(
        "GET",
        S,
        recording("list", _json_reply({"sessions": [_session_info().model_dump(mode="json")]})),
    )
    canned("GET", f"{S}/session1", recording("get", _model_reply(_session_info())))
    closed = _session_info(state="closed", closed_at=WHEN, expires_at=None)
    url = canned("POST", f"{S}/session1/close", recording("close", _model_reply(closed)))
    async with AsyncClient(url, api_key=SECRET) as client:
        session = await client.sessions.spawn(
            "session1", instance="A", metadata={"user": "u1"}, ttl="1h", failover="migrate"
        )
        assert (session.id, session.token, session.info) == ("session1", TOKEN, _session_info())
        sent = await client.sessions.send(
            "session1", {"k": "v"}, timeout="10s", idempotency_key="i"
        )
        listed = await client.sessions.list(instance="A", state="open", active_within=5)
        assert await client.sessions.get("session1") == _session_info()
        assert (await client.sessions.close("session1")).state == "closed"
    assert sent == _sent()
    assert listed == [_session_info()]
    assert seen["spawn"]["body"] == {
        "sessionId": "session1",
        "instance": "A",
        "metadata": {"user": "u1"},
        "ttl": 3600.0,
        "failover": "migrate",
    }
    assert SpawnRequest.model_validate(seen["spawn"]["body"]).session_id == "session1"
    assert seen["send"]["body"] == {"data": {"k": "v"}, "timeout": 10.0}
    assert set(seen["send"]["body"]) <= set(SendRequest.model_fields)
    assert seen["send"]["key"] == "i"
    assert seen["list"]["query"] == {"instance": "A", "state": "open", "active_within": "5"}
    assert {call["auth"] for call in seen.values()} == {f"Bearer {SECRET}"}


async def test_session_handle_sends_its_token_instead_of_the_key(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """A handle holding a token authenticates with it; the namespace keeps the API key."""
    auths: list[str | None] = []

    async def send(request: web.Request) -> web.StreamResponse:
        auths.append(request.headers.get("Authorization"))
        return web.json_response(_sent().model_dump(mode="json"))

    url = canned("POST", f"{S}/session1/send", send)
    async with AsyncClient(url, api_key=SECRET) as client:
        await client.sessions.session("session1", token=TOKEN).send()
        await client.sessions.session("session1").send()
        await client.sessions.send("session1")
    async with AsyncClient(url) as keyless:
        await keyless.sessions.session("session1", token=TOKEN).send({"x": 1})
    assert auths == [f"Bearer {TOKEN}", f"Bearer {SECRET}", f"Bearer {SECRET}", f"Bearer {TOKEN}"]


async def test_forbidden_token_error_does_not_echo_the_token(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """A 403 for a token used on another session is ForbiddenError without the token."""
    envelope = {"error": {"code": "forbidden", "message": "this token does not grant that"}}
    url = canned("POST", f"{S}/other/send", _json_reply(envelope, status=403))
    async with AsyncClient(url) as client:
        with pytest.raises(ForbiddenError) as info:
            await client.sessions.session("other", token=TOKEN).send({"x": 1})
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)
    assert exit_code_for(info.value) == ExitCode.AUTH


async def test_iter_history_follows_next_offset(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """iter_history asks page after page until next_offset is null, oldest first."""
    entries = [_entry(seq) for seq in range(1, 6)]
    offsets: list[str] = []

    async def history(request: web.Request) -> web.StreamResponse:
        offset, limit = int(request.query["offset"]), int(request.query["limit"])
        offsets.append(f"{offset}/{limit}")
        page = _page(entries[offset : offset + limit], offset=offset, total=5, limit=limit)
        return web.json_response(page.model_dump(mode="json"))

    url = canned("GET", f"{S}/session1/history", history)
    async with AsyncClient(url) as client:
        seen = [e.seq async for e in client.sessions.iter_history("session1", page_size=2)]
        first = await client.sessions.history("session1", limit=3)
    assert seen == [1, 2, 3, 4, 5]
    assert offsets[:3] == ["0/2", "2/2", "4/2"]
    assert (len(first.messages), first.next_offset) == (3, 3)


async def test_history_page_that_does_not_advance_is_an_error(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """A server sending next_offset that does not move forward cannot loop the SDK forever."""
    stuck = HistoryPage(
        session_id="session1", messages=[], total=9, offset=0, limit=2, next_offset=0
    )
    url = canned("GET", f"{S}/session1/history", _model_reply(stuck))
    async with AsyncClient(url) as client:
        with pytest.raises(OrchestratorError, match="does not advance"):
            _ = [e async for e in client.sessions.iter_history("session1")]


@pytest.mark.parametrize("status", [404, 410])
async def test_async_with_closes_and_tolerates_a_gone_session(
    canned: Callable[[str, str, Handler], str], status: int
) -> None:
    """Leaving `async with` closes the session; already closed (410) or gone (404) is fine."""
    code = {404: "not_found", 410: "session_closed"}[status]
    calls: list[str] = []

    async def close(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        body = {"error": {"code": code, "message": "gone"}}
        return web.json_response(body, status=status)

    url = canned("POST", f"{S}/session1/close", close)
    async with AsyncClient(url) as client:
        async with client.sessions.session("session1") as session:
            assert isinstance(session, AsyncSession)
        with pytest.raises(NotFoundError if status == 404 else SessionClosedError):
            await session.close()
    assert len(calls) == 2


async def test_async_with_skips_close_when_already_closed(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """A handle that closed itself does not close again on exit; a token's 401 is tolerated."""
    calls: list[str | None] = []
    closed = _session_info(state="closed", closed_at=WHEN, expires_at=None)

    async def close(request: web.Request) -> web.StreamResponse:
        calls.append(request.headers.get("Authorization"))
        if len(calls) > 1:
            body = {
                "error": {"code": "unauthorized", "message": "session token is no longer valid"}
            }
            return web.json_response(body, status=401)
        return web.json_response(closed.model_dump(mode="json"))

    url = canned("POST", f"{S}/session1/close", close)
    async with AsyncClient(url) as client:
        async with client.sessions.session("session1", token=TOKEN) as session:
            await session.close()
            assert session.is_closed
        async with client.sessions.session("session1", token=TOKEN):
            pass  # the server answers 401: the token died with its session
        with pytest.raises(UnauthorizedError):
            await client.sessions.session("session1").close()
    assert calls == [f"Bearer {TOKEN}", f"Bearer {TOKEN}", None]


async def test_sync_sessions_in_a_worker_thread(
    canned: Callable[[str, str, Handler], str],
) -> None:
    """Client.sessions wraps the async calls on the private loop; Session closes on exit."""
    closed = _session_info(state="closed", closed_at=WHEN, expires_at=None)
    pages = [_entry(1), _entry(2), _entry(3)]

    async def history(request: web.Request) -> web.StreamResponse:
        offset, limit = int(request.query["offset"]), int(request.query["limit"])
        page = _page(pages[offset : offset + limit], offset=offset, total=3, limit=limit)
        return web.json_response(page.model_dump(mode="json"))

    canned("POST", f"{S}/spawn", _model_reply(_spawned(), 201))
    canned("POST", f"{S}/session1/send", _model_reply(_sent()))
    canned("GET", f"{S}/session1/history", history)
    url = canned("POST", f"{S}/session1/close", _model_reply(closed))

    def use() -> tuple[Session, list[int], SendResult]:
        with Client(url) as client, client.sessions.spawn("session1") as session:
            sent = session.send({"k": "v"})
            seqs = [entry.seq for entry in session.iter_history(page_size=2)]
            return session, seqs, sent

    session, seqs, sent = await asyncio.to_thread(use)
    assert sent == _sent()
    assert seqs == [1, 2, 3]
    assert session.is_closed
    assert session.info == closed


def test_sessions_send_data_not_json_exits_2_naming_data() -> None:
    """sessions_send --data that is not JSON (or an unreadable @file) exits 2 naming --data."""
    bad_json = CliRunner().invoke(app, ["sessions_send", "--id", "s1", "--data", "{key: 1}"])
    assert bad_json.exit_code == 2
    assert "--data" in bad_json.stderr
    assert "not valid JSON" in bad_json.stderr
    missing = CliRunner().invoke(app, ["sessions_send", "--id", "s1", "--data", "@/nonexistent"])
    assert missing.exit_code == 2
    assert "--data" in missing.stderr


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["sessions_spawn", "--metadata", "[1, 2]"], "--metadata"),
        (["sessions_spawn", "--metadata", "{nope"], "--metadata"),
        (["sessions_spawn", "--ttl", "forever"], "--ttl"),
        (["sessions_spawn", "--failover", "teleport"], "--failover"),
        (["sessions_send", "--data", "{}"], "--id"),
        (
            ["sessions_send", "--id", "s1", "--token-env", "OPENCLAW_TEST_UNSET_TOKEN"],
            "--token-env",
        ),
        (["sessions_list", "--state", "sleeping"], "--state"),
        (["sessions_list", "--active-within", "-1"], "--active-within"),
        (["sessions_history", "--id", "s1", "--limit", "1001"], "--limit"),
        (["sessions_history", "--id", "s1", "--offset", "-1"], "--offset"),
        (["sessions_close", "--id", "s1", "--token", "ocs_x"], "--token"),
    ],
)
def test_session_command_usage_errors_exit_2(argv: list[str], option: str) -> None:
    """Bad session options exit 2 naming the option; a token is never a plain flag value."""
    result = CliRunner().invoke(app, [*argv, "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert option in result.stderr


def test_session_commands_are_spelled_with_underscores() -> None:
    """The commands are `sessions_spawn`, … exactly as the seed writes them."""
    result = CliRunner().invoke(app, ["--help"])
    for name in ("sessions_spawn", "sessions_send", "sessions_list", "sessions_history"):
        assert name in result.stdout
    assert "sessions_close" in result.stdout
    assert "sessions-spawn" not in result.stdout


async def test_cli_session_commands_against_canned_replies(
    canned: Callable[[str, str, Handler], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands turn their flags into the SDK calls: spawn body, token by env, --all."""
    seen: dict[str, Any] = {}
    pages = [_entry(seq) for seq in range(1, 4)]

    async def spawn(request: web.Request) -> web.StreamResponse:
        seen.setdefault("spawn", orjson.loads(await request.read()))
        return web.json_response(_spawned().model_dump(mode="json"), status=201)

    async def send(request: web.Request) -> web.StreamResponse:
        seen["send"] = (orjson.loads(await request.read()), request.headers.get("Authorization"))
        return web.json_response(_sent().model_dump(mode="json"))

    async def history(request: web.Request) -> web.StreamResponse:
        offset, limit = int(request.query["offset"]), int(request.query["limit"])
        page = _page(pages[offset : offset + limit], offset=offset, total=3, limit=limit)
        return web.json_response(page.model_dump(mode="json"))

    canned("POST", f"{S}/spawn", spawn)
    canned("POST", f"{S}/session1/send", send)
    url = canned("GET", f"{S}/session1/history", history)
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", SECRET)
    monkeypatch.setenv("MY_SESSION_TOKEN", TOKEN)

    def run(*argv: str) -> Any:
        return CliRunner().invoke(app, [*argv, "--url", url])

    spawned, sent, table, everything = [
        await asyncio.to_thread(run, *argv)
        for argv in (
            ["sessions_spawn", "--id", "session1", "--ttl", "1h", "--metadata", '{"u": 1}',
             "--failover", "migrate", "--instance", "A", "-o", "json"],
            ["sessions_send", "--id", "session1", "--data", '{"key": "value"}',
             "--timeout", "10s", "--token-env", "MY_SESSION_TOKEN"],
            ["sessions_spawn", "--id", "session1", "-o", "table"],
            ["sessions_history", "--id", "session1", "--all", "--limit", "2"],
        )
    ]  # fmt: skip
    for result in (spawned, sent, table, everything):
        assert result.exit_code == 0, result.output
    assert orjson.loads(spawned.stdout) == _spawned().model_dump(mode="json")
    assert seen["spawn"] == {
        "sessionId": "session1",
        "instance": "A",
        "metadata": {"u": 1},
        "ttl": 3600.0,
        "failover": "migrate",
    }
    assert orjson.loads(sent.stdout) == _sent().model_dump(mode="json")
    assert seen["send"] == ({"data": {"key": "value"}, "timeout": 10.0}, f"Bearer {TOKEN}")
    assert f"token: {TOKEN} (keep it: it is shown once)" in table.stdout
    whole = orjson.loads(everything.stdout)
    assert [m["seq"] for m in whole["messages"]] == [1, 2, 3]
    assert (whole["total"], whole["next_offset"]) == (3, None)
    assert SECRET not in spawned.output + sent.output + everything.output
    assert TOKEN not in sent.output + everything.output
