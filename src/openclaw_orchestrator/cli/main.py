"""The ``openclaw orchestrator`` commands (also ``openclaw-orchestrator``): thin over the SDK.

A client command parses its options, makes one
:class:`~openclaw_orchestrator.sdk.sync_client.Client` call and hands the result to
:mod:`.render`. Failures leave through one exit, :meth:`_Commands.invoke`, which prints
``error: <code>: <message>`` in red on stderr and exits with the code
:func:`exit_code_for` finds in :data:`EXIT_CODES`:

    0  ok (a fanout with failed entries is still ok unless min_success was unmet)
    1  the task failed: any other OrchestratorError (instance_error, no_healthy_instance,
       not_found, session_exists, session_closed, ...)
    2  usage or configuration: bad options, bad --payload/--data JSON, ConfigError,
       invalid_request
    3  authentication: unauthorized, forbidden (e.g. a session token used on another session)
    4  the orchestrator is unreachable or the deadline passed: connection_failed, timeout

``runs wait`` exits by the state of the run it waited for: 0 succeeded, 1 failed, timed_out
or cancelled, 4 still queued or running when ``--timeout`` ran out (see :data:`RUN_EXIT_CODES`).

The SDK, Rich and the server modules are imported inside the commands, so ``--help`` and
client commands never load what they do not use (serve/up/instance load uvicorn lazily, once
:func:`.server_extra.require_server` has found the ``server`` extra installed).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from .exits import EXIT_CODES, ExitCode, exit_code_for, interrupted, run_exit
from .mcp_command import mcp as mcp_command
from .options import aggregate_value, is_blank_targets, targets_value
from .server_extra import require_server
from .skill import skill_app

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..models import FanoutResult, HistoryPage, RunInfo, SpawnResult
    from ..sdk.sync_client import Client, Session

__all__ = ["EXIT_CODES", "ExitCode", "Output", "app", "exit_code_for"]


class _Commands(TyperGroup):
    """The one error exit: every command's known failure becomes a message and an exit code."""

    def invoke(self, ctx: Any) -> Any:  # Any: Typer's vendored click Context is private
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # Typer would exit 130 without a word
            interrupted()
        except Exception as exc:
            code = exit_code_for(exc)
            if code is None or isinstance(exc, BrokenPipeError):
                raise  # click turns a closed pipe into a quiet exit; anything else is a bug
            from rich.console import Console

            from .render import error_text

            Console(stderr=True, soft_wrap=True).print(error_text(exc))
            raise typer.Exit(code) from None


_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
app = typer.Typer(
    cls=_Commands,
    name="openclaw-orchestrator",
    help="Delegate tasks to named agent instances: route, fan out, sessions, health, cluster.",
    no_args_is_help=True,
    add_completion=False,
    context_settings=_SETTINGS,
    pretty_exceptions_show_locals=False,  # locals may hold the API key
)
instance_app = typer.Typer(
    cls=_Commands,
    help="Run a reference instance (the worker protocol) in the foreground.",
    no_args_is_help=True,
    context_settings=_SETTINGS,
)
app.add_typer(instance_app, name="instance")
runs_app = typer.Typer(
    cls=_Commands,
    help="Durable runs: routes, fanouts and session sends the orchestrator keeps and works on "
    "in the background (submit one with --async).",
    no_args_is_help=True,
    context_settings=_SETTINGS,
)
app.add_typer(runs_app, name="runs")
app.add_typer(skill_app, name="skill")


class Output(StrEnum):
    """How results are printed."""

    json = "json"
    table = "table"


class Failover(StrEnum):
    """What a session does when its instance is down."""

    none = "none"
    migrate = "migrate"


class RunState(StrEnum):
    """The states ``runs list --state`` filters on."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    cancelled = "cancelled"


class RunKind(StrEnum):
    """The kinds ``runs list --kind`` filters on."""

    route = "route"
    fanout = "fanout"
    session_send = "session_send"


class SessionState(StrEnum):
    """The states ``sessions_list --state`` filters on."""

    open = "open"
    closed = "closed"
    expired = "expired"


def _duration(value: str) -> float:
    """``10``, ``10s``, ``500ms``, ``1m`` as seconds; a usage error otherwise."""
    from ..domain.duration import parse_duration
    from ..errors import InvalidRequestError

    try:
        return parse_duration(value, field="duration")
    except InvalidRequestError as exc:
        raise typer.BadParameter(exc.message.removeprefix("duration: ")) from exc


# -- options shared by the client commands --------------------------------------------------

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Orchestrator base URL (env ORCHESTRATOR_URL; default http://127.0.0.1:18790).",
        show_default=False,
    ),
]


def _config_defaults(ctx: typer.Context, config: Path | None) -> Path | None:
    """``--config``: the file's settings become the defaults of this command's options (read
    first: the option is eager), so ``{"instances": ["A"], "timeout": 5}`` acts as
    ``--instances A --timeout 5`` unless a flag says otherwise."""
    if config is not None:
        from ..settings import read_client_config

        defaults = read_client_config(config).option_defaults()
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return config


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Config file (.json/.toml/.yaml): url, api_key and defaults of these options, "
        'e.g. {"instances": ["A"], "timeout": 5}; a server config gives url and key only.',
        dir_okay=False,
        is_eager=True,
        callback=_config_defaults,
    ),
]
OutputOption = Annotated[
    Output | None,
    typer.Option(
        "--output",
        "-o",
        help="json or table (default: table on a terminal, json otherwise).",
        case_sensitive=False,
        show_default=False,
    ),
]
TARGETS_HELP = "Targets: A, A-H, A,C,E, w1-w8, all, tag:x; several may follow the flag."
InstancesOption = Annotated[
    list[str] | None,
    typer.Option("--instances", help=TARGETS_HELP, metavar="TARGETS", show_default=False),
]
PayloadOption = Annotated[
    str, typer.Option("--payload", help="Task JSON; @file.json reads a file, - reads stdin.")
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout", parser=_duration, metavar="DURATION", help="Deadline: 10s, 500ms, 1m."
    ),
]
AttemptTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--attempt-timeout",
        parser=_duration,
        metavar="DURATION",
        help="Most one attempt may take before the next candidate is tried: 500ms, 2s.",
    ),
]
IntervalOption = Annotated[
    float,
    typer.Option(
        "--interval", parser=_duration, metavar="DURATION", help="Between redraws: 1s, 500ms."
    ),
]
RetryOption = Annotated[
    int | None, typer.Option("--retry", min=0, max=10, help="Retries after the first try.")
]
IdempotencyOption = Annotated[
    str | None,
    typer.Option("--idempotency-key", help="Replays return the first reply instead of rerunning."),
]
StreamOption = Annotated[
    bool,
    typer.Option(
        "--stream",
        help="Print the instance's text as it is produced, then a summary line on stderr "
        "(JSON: one line per delta, then the result). With --async the run records it.",
    ),
]
AsyncOption = Annotated[
    bool,
    typer.Option(
        "--async",
        help="Submit it as a durable run and print the run id (JSON: the run); follow it "
        "with 'runs wait' or 'runs events'. --timeout is then the run's whole deadline.",
    ),
]


def _targets(tokens: list[str] | None, option: str) -> str | list[str] | None:
    """Target tokens for the SDK; naming nothing (``--targets ''``) is a usage error."""
    if is_blank_targets(tokens):
        raise typer.BadParameter(
            "names no instance; give names, ranges (A-H), 'all' or 'tag:<tag>'",
            param_hint=f"'{option}'",
        )
    return targets_value(tokens)


def _client(url: str | None, config: Path | None) -> Client:
    from ..sdk.sync_client import Client

    return Client(url, config=config)


@contextmanager
def _session(
    session_id: str, token_env: str | None, url: str | None, config: Path | None
) -> Iterator[Session]:
    """The handle to ``session_id`` sending the token ``--token-env`` names (else the API
    key), on a client closed on the way out."""
    token = _secret_from_env(token_env, "'--token-env'")
    with _client(url, config) as client:
        yield client.sessions.session(session_id, token)


def _payload(text: str) -> Any:
    """The ``--payload`` value as JSON: inline, ``@file`` or ``-`` (stdin)."""
    return _json_option(text, "--payload")


def _json_option(text: str, option: str) -> Any:
    """A JSON option's value: inline, ``@file`` or ``-`` (stdin); usage errors name ``option``."""
    import orjson

    from .options import json_text

    hint = f"'{option}'"
    try:
        return json_text(text)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read it: {exc}", param_hint=hint) from exc
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint=hint) from exc


def _metadata(text: str | None) -> dict[str, Any] | None:
    """``--metadata`` as a JSON object (anything else is a usage error), or None."""
    if text is None:
        return None
    value = _json_option(text, "--metadata")
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="'--metadata'")
    return value


def _is_json(output: Output | None) -> bool:
    if output is None:
        return not sys.stdout.isatty()
    return output is Output.json


def _emit(result: Any, output: Output | None, view: Callable[[Any], RenderableType]) -> None:
    """Print ``result``: JSON for scripts, or ``view(result)`` through Rich for people."""
    if _is_json(output):
        from .render import to_json

        sys.stdout.write(to_json(result) + "\n")
        return
    from rich.console import Console

    Console().print(view(result))


def _secret_from_env(variable: str | None, option: str) -> str | None:
    """A secret named by ``--x-env VAR``: secrets never travel as command-line values."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise typer.BadParameter(f"environment variable {variable} is not set", param_hint=option)
    return value


# -- client commands -------------------------------------------------------------------------


@app.command()
def route(
    instances: InstancesOption = None,
    payload: PayloadOption = "{}",
    timeout: TimeoutOption = None,
    attempt_timeout: AttemptTimeoutOption = None,
    retry: RetryOption = None,
    policy: Annotated[
        str | None,
        typer.Option(help="round_robin | least_outstanding | weighted_random."),
    ] = None,
    idempotency_key: IdempotencyOption = None,
    stream: StreamOption = False,
    run_async: AsyncOption = False,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Send one task to one healthy instance, with retries and failover."""
    from .render import route_view

    body = _payload(payload)
    options: dict[str, Any] = {
        "instances": _targets(instances, "--instances"),
        "timeout": timeout,
        "attempt_timeout": attempt_timeout,
        "retry": retry,
        "policy": policy,
        "idempotency_key": idempotency_key,
    }
    if stream and idempotency_key is not None and not run_async:
        raise typer.BadParameter(
            "a streamed route is not replayed", param_hint="'--stream' and '--idempotency-key'"
        )
    with _client(url, config) as client:
        if run_async:
            run = client.runs.submit("route", payload=body, stream=stream or None, **options)
            _emit_submitted(run, output)
            return
        if stream:
            del options["idempotency_key"]
            _print_output(client.route_stream(body, **options), json_lines=_is_json(output))
            return
        result = client.route(body, **options)
    _emit(result, output, route_view)


@app.command()
def fanout(
    targets: Annotated[
        list[str] | None,
        typer.Option("--targets", help=TARGETS_HELP, metavar="TARGETS", show_default=False),
    ] = None,
    payload: PayloadOption = "{}",
    aggregate: Annotated[
        str,
        typer.Option(
            help="true|false|array|merge|concat|first|quorum|topk|<reducer name>.",
        ),
    ] = "true",
    timeout: TimeoutOption = None,
    min_success: Annotated[
        int | None, typer.Option(min=0, help="Fail unless this many targets succeed.")
    ] = None,
    quorum: Annotated[int | None, typer.Option(min=1, help="Votes needed (quorum).")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="k for the topk aggregate.")] = None,
    retry: RetryOption = None,
    attempt_timeout: AttemptTimeoutOption = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print entries as they arrive.")] = False,
    summary: Annotated[
        bool,
        typer.Option("--summary", help="Only the aggregate, the counts and who was not ok."),
    ] = False,
    value_only: Annotated[
        bool,
        typer.Option("--value-only", help="Only the aggregated value, as JSON (e.g. the array)."),
    ] = False,
    idempotency_key: IdempotencyOption = None,
    run_async: AsyncOption = False,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Send one task to every target at once and aggregate the results.

    On a terminal, stderr shows the progress (3/8 done, 1 failed) while it runs."""
    from .render import fanout_summary, fanout_value_json, fanout_view, summary_view

    _exclusive(
        {"--stream": stream, "--summary": summary, "--value-only": value_only, "--async": run_async}
    )
    body = _payload(payload)
    options: dict[str, Any] = {
        "targets": _targets(targets, "--targets") or "all",
        "aggregate": aggregate_value(aggregate),
        "timeout": timeout,
        "min_success": min_success,
        "quorum": quorum,
        "top_k": top_k,
        "retry": retry,
        "attempt_timeout": attempt_timeout,
        "idempotency_key": idempotency_key,
    }
    with _client(url, config) as client:
        if run_async:
            _emit_submitted(client.runs.submit("fanout", payload=body, **options), output)
            return
        if stream:
            _print_stream(client, body, options, json_lines=_is_json(output))
            return
        if sys.stderr.isatty() and idempotency_key is None:  # streams take no idempotency key
            result = _fanout_with_progress(client, body, options)
        else:
            result = client.fanout(body, **options)
    if value_only:
        sys.stdout.write(fanout_value_json(result) + "\n")
    elif summary:
        _emit(fanout_summary(result), output, lambda _: summary_view(result))
    else:
        _emit(result, output, fanout_view)


def _emit_submitted(run: RunInfo, output: OutputOption) -> None:
    """A submitted run: the whole run as JSON for scripts, its id alone for people (to paste
    into ``runs wait``)."""
    if _is_json(output):
        from .render import to_json

        sys.stdout.write(to_json(run) + "\n")
    else:
        sys.stdout.write(run.run_id + "\n")


def _exclusive(flags: dict[str, bool]) -> None:
    """At most one of ``flags`` may be on; a usage error naming them otherwise."""
    on = [name for name, value in flags.items() if value]
    if len(on) > 1:
        raise typer.BadParameter(f"choose one of {', '.join(flags)}", param_hint=" and ".join(on))


def _fanout_with_progress(client: Client, body: Any, options: dict[str, Any]) -> FanoutResult:
    """The fanout through its stream, with ``3/8 done, 1 failed`` kept up to date on stderr
    (a terminal) and erased at the end; the result is the one :meth:`Client.fanout` returns."""
    from ..errors import OrchestratorError
    from ..models import FanoutEntry
    from .render import progress_text

    total = _target_count(client, options["targets"])
    done = failed = 0
    _status(progress_text(done, failed, total))
    try:
        for item in client.fanout_stream(body, **options):
            if not isinstance(item, FanoutEntry):
                return item
            done, failed = done + 1, failed + (item.status != "ok")
            _status(progress_text(done, failed, total))
    finally:
        _status("")
    raise OrchestratorError("the fanout stream ended without its result")


def _target_count(client: Client, targets: str | list[str]) -> int | None:
    """How many instances ``targets`` names (the server expands it, as the fanout will);
    None when it cannot tell: the fanout itself then reports why."""
    from ..errors import OrchestratorError

    try:
        return len(client.health(targets))
    except OrchestratorError:
        return None


def _status(text: str) -> None:
    """Rewrite the status line on stderr (a terminal): carriage return, erase, ``text``."""
    sys.stderr.write(f"\r\x1b[K{text}")
    sys.stderr.flush()


def _print_output(items: Iterator[Any], *, json_lines: bool) -> None:
    """A streamed route's or send's output as it comes: its text (other deltas as JSON
    lines) on stdout, then the summary line on stderr; or one JSON line per delta and one
    for the result. When nothing streamed, the result's reply is printed instead."""
    from ..sdk.events import Delta
    from .render import output_line, output_summary

    out, streamed, last = sys.stdout, False, ""
    try:
        for item in items:
            if json_lines:
                out.write(output_line(item) + "\n")
            elif isinstance(item, Delta):
                streamed = True
                piece = item.text if item.text is not None else output_line(item) + "\n"
                last = piece or last
                out.write(piece)
            else:
                if not streamed:
                    last = _reply_text(item)
                    out.write(last)
                if last and not last.endswith("\n"):
                    out.write("\n")
                    last = "\n"
                out.flush()
                sys.stderr.write(output_summary(item) + "\n")
            out.flush()
    finally:
        if last and not last.endswith("\n"):  # a failure mid-text: the error on its own line
            out.write("\n")
            out.flush()


def _reply_text(result: Any) -> str:
    """The reply of a result nothing was streamed for: its text, else its JSON."""
    from .render import to_json

    reply = result.result if hasattr(result, "result") else result.reply
    if isinstance(reply, dict) and isinstance(reply.get("text"), str) and len(reply) == 1:
        text: str = reply["text"]
        return text
    return to_json(reply) + "\n"


def _print_stream(client: Client, body: Any, options: dict[str, Any], *, json_lines: bool) -> None:
    """Each entry as it arrives (an NDJSON line or a table line), then the final result."""
    from ..models import FanoutEntry
    from .render import entry_line, fanout_view, stream_line

    console = None
    if not json_lines:
        from rich.console import Console

        console = Console()
    for item in client.fanout_stream(body, **options):
        if console is None:
            sys.stdout.write(stream_line(item) + "\n")
            sys.stdout.flush()
        else:
            console.print(entry_line(item) if isinstance(item, FanoutEntry) else fanout_view(item))


@app.command()
def health(
    instances: InstancesOption = None,
    detail: Annotated[
        bool, typer.Option("--detail", help="Latency, last check, failures, last error.")
    ] = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Redraw the table in place as states change (Ctrl-C ends)."),
    ] = False,
    interval: IntervalOption = 1.0,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Each instance's health: healthy, degraded or down."""
    from .render import health_view

    with _client(url, config) as client:
        targets = _targets(instances, "--instances")
        if watch:
            from .live import watch_health

            as_json = _is_json(output)
            watch_health(client, targets, detail=detail, interval=interval, as_json=as_json)
        states = client.health_detail(targets) if detail else client.health(targets)
    _emit(states, output, health_view)


@app.command()
def top(
    interval: IntervalOption = 1.0,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """In-flight work per instance, live, with health and ejections (Ctrl-C ends)."""
    from .live import watch_top

    with _client(url, config) as client:
        watch_top(client, interval=interval, as_json=_is_json(output))


@app.command("instances")
def list_instances(
    url: UrlOption = None, config: ConfigOption = None, output: OutputOption = None
) -> None:
    """List every instance, configured or registered, with its live state."""
    from .render import instances_view

    with _client(url, config) as client:
        infos = client.instances()
    _emit(infos, output, instances_view)


@app.command()
def register(
    name: Annotated[str, typer.Option("--name", help="Unique instance name, e.g. A.")],
    instance_url: Annotated[
        str, typer.Option("--url", help="The instance's base URL, e.g. http://127.0.0.1:18801.")
    ],
    driver: Annotated[str, typer.Option(help="Instance kind.")] = "worker",
    weight: Annotated[float, typer.Option(help="Share of traffic, (0, 1000].")] = 1.0,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", metavar="TAG", help="A tag; repeat or list several."),
    ] = None,
    credentials_env: Annotated[
        str | None,
        typer.Option(help="Name of the env var holding the bearer token for the instance."),
    ] = None,
    health_path: Annotated[str | None, typer.Option(help="Probe path override.")] = None,
    heartbeat_ttl: Annotated[
        float | None,
        typer.Option(parser=_duration, metavar="DURATION", help="Dropped if not renewed."),
    ] = None,
    orchestrator_url: Annotated[
        str | None,
        typer.Option(
            "--orchestrator-url",
            help="Orchestrator base URL; --url is the instance's here (env ORCHESTRATOR_URL).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Register an instance at run time (registering again is its heartbeat)."""
    from .render import instances_view

    credentials = _secret_from_env(credentials_env, "'--credentials-env'")
    with _client(orchestrator_url, config) as client:
        info = client.register(
            name,
            instance_url,
            driver=driver,
            weight=weight,
            tags=tag or (),
            credentials=credentials,
            health_path=health_path,
            heartbeat_ttl=heartbeat_ttl,
        )
    _emit(info, output, lambda one: instances_view([one]))


@app.command()
def unregister(
    name: Annotated[str, typer.Argument(help="The instance to remove.")],
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Remove an instance (a configured one comes back at the next restart)."""
    from .render import removed_view

    with _client(url, config) as client:
        client.unregister(name)
    _emit({"removed": name}, output, lambda _: removed_view(name))


# -- session commands ------------------------------------------------------------------------

SessionIdOption = Annotated[str, typer.Option("--id", help="The session id, e.g. session1.")]
TokenEnvOption = Annotated[
    str | None,
    typer.Option(
        "--token-env",
        metavar="VAR",
        help="Env var holding the session token, sent instead of the API key.",
    ),
]


@app.command("sessions_spawn")
def sessions_spawn(
    session_id: Annotated[
        str | None,
        typer.Option("--id", help="Session id (generated when omitted).", show_default=False),
    ] = None,
    instance: Annotated[
        str | None,
        typer.Option("--instance", help="Pin to this instance (default: placed by --policy)."),
    ] = None,
    ttl: Annotated[
        float | None,
        typer.Option(parser=_duration, metavar="DURATION", help="Idle time before expiry: 1h."),
    ] = None,
    metadata: Annotated[
        str | None,
        typer.Option(help="JSON object kept with the session; @file.json and - work too."),
    ] = None,
    failover: Annotated[
        Failover,
        typer.Option(case_sensitive=False, help="migrate: move the session off a down instance."),
    ] = Failover.none,
    policy: Annotated[
        str | None,
        typer.Option(help="consistent_hash | round_robin | least_outstanding | weighted_random."),
    ] = None,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Start a session pinned to one instance; prints its token, which is shown only once."""
    from .render import session_view

    meta = _metadata(metadata)
    with _client(url, config) as client:
        session = client.sessions.spawn(
            session_id,
            instance=instance,
            metadata=meta,
            ttl=ttl,
            failover=failover.value,
            policy=policy,
        )
    spawned = _spawn_result(session)
    _emit(spawned, output, lambda result: session_view(result, token=result.token))


def _spawn_result(session: Session) -> SpawnResult:
    """The spawn's reply (the session and its token) back from the handle that holds it."""
    from ..models import SpawnResult

    if session.info is None or session.token is None:  # spawn always sets both
        raise RuntimeError("the SDK returned a spawned session without its info or token")
    return SpawnResult(**session.info.model_dump(), token=session.token)


@app.command("sessions_send")
def sessions_send(
    session_id: SessionIdOption,
    data: Annotated[
        str,
        typer.Option("--data", help="Message JSON; @file.json reads a file, - reads stdin."),
    ] = "{}",
    timeout: TimeoutOption = None,
    idempotency_key: IdempotencyOption = None,
    token_env: TokenEnvOption = None,
    stream: StreamOption = False,
    run_async: AsyncOption = False,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Send a message to a session's instance, in order, and print its reply."""
    from .render import send_view

    body = _json_option(data, "--data")
    if run_async:
        where = (url, config)
        _submit_send(session_id, body, timeout, idempotency_key, token_env, where, output, stream)
        return
    with _session(session_id, token_env, url, config) as session:
        if stream:
            sent = session.send_stream(body, timeout=timeout, idempotency_key=idempotency_key)
            _print_output(sent, json_lines=_is_json(output))
            return
        result = session.send(body, timeout=timeout, idempotency_key=idempotency_key)
    _emit(result, output, send_view)


def _submit_send(
    session_id: str,
    data: Any,
    timeout: float | None,
    idempotency_key: str | None,
    token_env: str | None,
    where: tuple[str | None, Path | None],
    output: Output | None,
    stream: bool,
) -> None:
    """``sessions_send --async``: the send as a durable run, submitted with the API key (a
    session token grants no runs)."""
    if token_env is not None:
        raise typer.BadParameter(
            "a run is submitted with the API key, not a session token",
            param_hint="'--async' and '--token-env'",
        )
    with _client(*where) as client:
        run = client.runs.submit(
            "session_send",
            session_id=session_id,
            data=data,
            timeout=timeout,
            idempotency_key=idempotency_key,
            stream=stream or None,
        )
    _emit_submitted(run, output)


@app.command("sessions_list")
def sessions_list(
    instance: Annotated[
        str | None, typer.Option("--instance", help="Only this instance's.")
    ] = None,
    state: Annotated[
        SessionState | None,
        typer.Option(case_sensitive=False, help="open | closed | expired.", show_default=False),
    ] = None,
    active_within: Annotated[
        float | None,
        typer.Option(min=0, metavar="MINUTES", help="Only sessions active in the last N minutes."),
    ] = None,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """List sessions by instance, state and recent activity (never their tokens)."""
    from .render import sessions_view

    with _client(url, config) as client:
        infos = client.sessions.list(
            instance=instance,
            state=None if state is None else state.value,
            active_within=active_within,
        )
    _emit(infos, output, sessions_view)


@app.command("sessions_history")
def sessions_history(
    session_id: SessionIdOption,
    offset: Annotated[int, typer.Option(min=0, help="First entry to show (0-based).")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Entries per page.")] = 100,
    all_pages: Annotated[
        bool, typer.Option("--all", help="Every entry from --offset on, page after page.")
    ] = False,
    token_env: TokenEnvOption = None,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """A session's messages and replies (and migrations), oldest first."""
    from .render import history_view

    with _session(session_id, token_env, url, config) as session:
        if all_pages:
            page = _whole_history(session, offset, limit)
        else:
            page = session.history(offset=offset, limit=limit)
    _emit(page, output, history_view)


def _whole_history(session: Session, offset: int, page_size: int) -> HistoryPage:
    """Every entry from ``offset`` on, as one page ending the history (``next_offset`` null)."""
    from ..models import HistoryPage

    entries = list(session.iter_history(offset=offset, page_size=page_size))
    return HistoryPage(
        session_id=session.id,
        messages=entries,
        total=offset + len(entries),
        offset=offset,
        limit=len(entries),
        next_offset=None,
    )


@app.command("sessions_close")
def sessions_close(
    session_id: SessionIdOption,
    token_env: TokenEnvOption = None,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Close a session (closing a closed one again is fine); prints its final state."""
    from .render import session_view

    with _session(session_id, token_env, url, config) as session:
        info = session.close()
    _emit(info, output, session_view)


# -- run commands ----------------------------------------------------------------------------

RunIdArgument = Annotated[str, typer.Argument(metavar="RUN_ID", help="The run id, e.g. run_3q….")]


@runs_app.command("list")
def runs_list(
    state: Annotated[
        RunState | None,
        typer.Option(case_sensitive=False, help="Only runs in this state.", show_default=False),
    ] = None,
    kind: Annotated[
        RunKind | None,
        typer.Option(
            case_sensitive=False, help="route | fanout | session_send.", show_default=False
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Runs per page.")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="The 'next' of the page before.", show_default=False)
    ] = None,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """List runs, newest first (JSON carries 'next', the --cursor of the next page)."""
    from .render import runs_view

    with _client(url, config) as client:
        page = client.runs.list(
            state=None if state is None else state.value,
            kind=None if kind is None else kind.value,
            limit=limit,
            cursor=cursor,
        )
    _emit(page, output, runs_view)


@runs_app.command("get")
def runs_get(
    run_id: RunIdArgument,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """A run as it stands: its state and, once ended, its result or error."""
    from .render import run_view

    with _client(url, config) as client:
        info = client.runs.get(run_id)
    _emit(info, output, run_view)


@runs_app.command("wait")
def runs_wait(
    run_id: RunIdArgument,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            parser=_duration,
            metavar="DURATION",
            help="Give up waiting after this long (default: until the run ends).",
        ),
    ] = None,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Wait for a run to end and print it.

    Exits 0 when it succeeded, 1 when it failed, timed out or was cancelled, 4 when it had
    not ended when --timeout ran out."""
    from .render import run_view

    with _client(url, config) as client:
        info = client.runs.wait(run_id, timeout=timeout)
    _emit(info, output, run_view)
    if code := run_exit(info.state):
        raise typer.Exit(code)


@runs_app.command("cancel")
def runs_cancel(
    run_id: RunIdArgument,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Stop a run and print it (an ended run is printed as it is).

    A queued run ends at once, a running one within about a second."""
    from .render import run_view

    with _client(url, config) as client:
        info = client.runs.cancel(run_id)
    _emit(info, output, run_view)


@runs_app.command("events")
def runs_events(
    run_id: RunIdArgument,
    after: Annotated[
        int | None,
        typer.Option(min=0, metavar="N", help="Resume after event N.", show_default=False),
    ] = None,
    url: UrlOption = None,
    config: ConfigOption = None,
    output: OutputOption = None,
) -> None:
    """Print a run's events as they happen, ending with its result.

    JSON output is one object per line: {"id", "type", "data"}."""
    from .render import run_event_json, run_event_line

    console = None
    if not _is_json(output):
        from rich.console import Console

        console = Console()
    with _client(url, config) as client:
        for event in client.runs.events(run_id, after=after):
            if console is None:
                sys.stdout.write(run_event_json(event) + "\n")
                sys.stdout.flush()
            else:
                console.print(run_event_line(event))


# -- server commands -------------------------------------------------------------------------

ServerConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="Server config file (.json/.toml/.yaml).", dir_okay=False),
]


DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder of the SQLite store and of up's kept API key (make run: .data; default: "
        "$XDG_DATA_HOME/openclaw-orchestrator, else ~/.local/share/openclaw-orchestrator).",
        show_default=False,
    ),
]


app.command("mcp")(mcp_command)


@app.command()
def serve(
    config: ServerConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 18790).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug|info|warning|error.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run the orchestrator API in the foreground."""
    require_server()
    from ..server.serve import serve as serve_forever
    from ..settings import load_settings

    settings = load_settings(config, host=host, port=port, log_level=log_level, data_dir=data_dir)
    serve_forever(settings)


@app.command()
def up(
    instances: Annotated[
        list[str],
        typer.Option("--instances", metavar="NAMES", help="Names to start: A-H, w1-w4, A,C,E."),
    ],
    port: Annotated[int, typer.Option(help="Orchestrator port.")] = 18790,
    base_port: Annotated[int, typer.Option(help="Port of the first instance.")] = 18801,
    host: Annotated[str, typer.Option(help="Bind address of everything.")] = "127.0.0.1",
    handler: Annotated[
        str | None,
        typer.Option(
            help="Instance handler: echo, search, stream (streams its text) or module:function "
            "(default: the demo's).",
            show_default=False,
        ),
    ] = None,
    config: ServerConfigOption = None,
    health_interval: Annotated[
        float | None,
        typer.Option(parser=_duration, metavar="DURATION", help="Seconds between probes."),
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Run a demo workload once up.")] = False,
    data_dir: DataDirOption = None,
    openclaw: Annotated[
        int,
        typer.Option(
            "--openclaw",
            min=0,
            metavar="N",
            help="Also start N real OpenClaw gateways O1..ON (docs/openclaw.md).",
        ),
    ] = 0,
) -> None:
    """Start an orchestrator plus local reference instances, all in the foreground."""
    require_server()
    from ..devtools.cluster import run_cluster

    options: dict[str, Any] = {
        "names": cluster_names(instances),
        "host": host,
        "port": port,
        "base_port": base_port,
        "config": config,
        "health_interval": health_interval,
        "demo": demo,
        "data_dir": data_dir,
        "openclaw": openclaw,
    }
    if handler is not None:  # otherwise run_cluster's default (the demo workload's handler)
        options["handler"] = handler
    raise typer.Exit(run_cluster(**options))


def cluster_names(tokens: list[str]) -> list[str]:
    """Expand ``up --instances`` without a registry: ranges (A-H, w1-w8) and lists only.

    ``parse_targets`` expands ranges syntactically and reports every name it does not know in
    ``details["unknown"]``; asked once with an empty registry, that list is exactly the names
    meant, so a second call validates against it. ``all``/``tag:`` need a registry: errors.
    """
    from ..domain.targets import parse_targets
    from ..errors import InvalidRequestError

    try:
        return parse_targets(tokens, [], field="--instances")
    except InvalidRequestError as exc:
        unknown = exc.details.get("unknown")
        if not unknown:
            hint = "up takes names and ranges (A-H, w1-w8, A,C,E), not 'all' or 'tag:'"
            raise InvalidRequestError(f"{exc.message}; {hint}", field="--instances") from exc
        return parse_targets(tokens, [(name, ()) for name in unknown], field="--instances")


@instance_app.command("serve")
def instance_serve(
    name: Annotated[str, typer.Option("--name", help="Instance name, e.g. A.")],
    port: Annotated[int, typer.Option("--port", help="Port (0: a free one).")],
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    handler: Annotated[str, typer.Option(help="echo, search, stream or module:function.")] = "echo",
    shard: Annotated[
        str | None, typer.Option(help="i/n: this instance's shard (search handler).")
    ] = None,
    token_env: Annotated[
        str | None, typer.Option(help="Env var holding the bearer token callers must send.")
    ] = None,
    latency: Annotated[
        float | None,
        typer.Option(parser=_duration, metavar="DURATION", help="Fault: delay every task."),
    ] = None,
    fail_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fault: share of tasks that fail.")
    ] = 0.0,
    fail_status: Annotated[
        int, typer.Option(min=400, max=599, help="Fault: status of a failed task.")
    ] = 503,
    fault_api: Annotated[
        bool, typer.Option("--fault-api", help="Expose /api/instance/faults (tests only).")
    ] = False,
    register_url: Annotated[
        str | None,
        typer.Option("--register", metavar="URL", help="Orchestrator to self-register with."),
    ] = None,
    public_url: Annotated[str | None, typer.Option(help="URL announced when registering.")] = None,
    heartbeat_ttl: Annotated[
        float,
        typer.Option(parser=_duration, metavar="DURATION", help="Registration lifetime."),
    ] = 30.0,
    log_level: Annotated[str, typer.Option(help="debug|info|warning|error.")] = "warning",
    config: ConfigOption = None,
) -> None:
    """Serve one reference instance; with --register it announces itself and heartbeats."""
    require_server()
    from ..devtools.reference.faults import FaultConfig
    from ..devtools.reference.runner import run_instance
    from ..settings import ConfigError

    api_key = _api_key(config) if register_url else None
    try:
        faults = FaultConfig(latency=latency or 0.0, fail_rate=fail_rate, fail_status=fail_status)
        run_instance(
            name=name,
            host=host,
            port=port,
            handler=handler,
            shard=shard,
            token=_secret_from_env(token_env, "'--token-env'"),
            faults=faults,
            fault_api=fault_api,
            register_url=register_url,
            api_key=api_key,
            public_url=public_url,
            heartbeat_ttl=heartbeat_ttl,
            log_level=log_level,
        )
    except ConfigError:
        raise  # a taken port: the one error line of every command, exit 2
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _api_key(config: Path | None) -> str | None:
    """ORCHESTRATOR_API_KEY (or the config file's api_key), for self-registration."""
    from ..settings import load_client_settings

    key = load_client_settings(config).api_key
    return None if key is None else key.get_secret_value()
