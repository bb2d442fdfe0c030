"""A quick path for the most scripted JSON commands, taken before Typer, Rich or aiohttp load.

``health``, ``instances``, ``route``, ``fanout`` and ``sessions_send`` printing JSON make up
most scripted calls
and cost one request each; building the Typer app (≈ 100 ms), Rich (≈ 35 ms) and the aiohttp
SDK (≈ 130 ms) for them would dominate the run. :func:`try_quick` accepts only a strict subset
of those commands' options (the ones spelled out below) with values it can vouch for, and
returns None for anything else — help, table output, ``--config``, ``--stream``, stdin as
``--payload -``, targets that name nothing, an unknown, repeated or invalid option, a fanout
whose progress a terminal on stderr should show — so the Typer app handles it exactly as
before (usage errors included).

Same settings (:func:`~..settings.load_client_settings`), same request, same JSON
(:func:`.render.to_json`), same error line and exit codes as the Typer commands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..replies import expect_object, parse_reply

__all__ = ["QUICK_COMMANDS", "try_quick"]

QUICK_COMMANDS = frozenset({"health", "instances", "route", "fanout", "sessions_send"})
_COMMON = frozenset({"--url", "--output", "-o"})
_VALUE_OPTIONS = {
    "health": _COMMON | {"--instances"},
    "instances": _COMMON,
    "route": _COMMON
    | {
        "--instances",
        "--payload",
        "--timeout",
        "--attempt-timeout",
        "--retry",
        "--policy",
        "--idempotency-key",
    },
    "fanout": _COMMON
    | {
        "--targets",
        "--payload",
        "--aggregate",
        "--timeout",
        "--attempt-timeout",
        "--min-success",
        "--quorum",
        "--top-k",
        "--retry",
        "--idempotency-key",
    },
    "sessions_send": _COMMON | {"--id", "--data", "--timeout", "--idempotency-key", "--token-env"},
}
_FLAGS = {
    "health": frozenset({"--detail"}),
    "instances": frozenset(),
    "route": frozenset(),
    "fanout": frozenset({"--summary", "--value-only"}),
    "sessions_send": frozenset(),
}
_TASKS = frozenset({"route", "fanout", "sessions_send"})
_REPEATABLE = frozenset({"--instances", "--targets"})
# Integer options and their bounds, as the Typer commands declare them.
_INTS = {
    "--retry": (0, 10),
    "--min-success": (0, None),
    "--quorum": (1, None),
    "--top-k": (1, None),
}


def _parse(argv: Sequence[str]) -> tuple[str, dict[str, list[str]]] | None:
    """``(command, options)`` when ``argv`` is a quick command's plain form, else None."""
    if not argv or argv[0] not in QUICK_COMMANDS:
        return None
    command = argv[0]
    values, flags = _VALUE_OPTIONS[command], _FLAGS[command]
    options: dict[str, list[str]] = {}
    words = list(argv[1:])
    index = 0
    while index < len(words):
        word = words[index]
        name, equals, inline = word.partition("=")
        if word in flags:
            if word in options:
                return None
            options[word] = []
        elif name in values and name.startswith("--"):
            if equals:
                value = inline
            elif index + 1 < len(words) and not words[index + 1].startswith("-"):
                index += 1
                value = words[index]
            else:
                return None
            options.setdefault("--output" if name == "-o" else name, []).append(value)
        elif word == "-o" and index + 1 < len(words) and not words[index + 1].startswith("-"):
            index += 1
            options.setdefault("--output", []).append(words[index])
        else:
            return None  # anything unusual: Typer parses it (and reports usage errors)
        index += 1
    if any(len(v) > 1 for k, v in options.items() if k not in _REPEATABLE):
        return None
    return command, options


def _wants_json(options: dict[str, list[str]]) -> bool:
    output = options.get("--output")
    if output is None:
        return not sys.stdout.isatty()
    return output[0].lower() == "json"


def try_quick(argv: Sequence[str]) -> int | None:
    """Run ``argv`` on the quick path and return its exit code, or None: use the Typer app."""
    parsed = _parse(argv)
    if parsed is None:
        return None
    command, options = parsed
    output = options.get("--output")
    if output is not None and output[0].lower() not in ("json", "table"):
        return None  # Typer's usage error
    if not _wants_json(options) or _is_for_typer(command, options):
        return None
    from ..transport import SyncTransport, UnsupportedURLError

    try:
        url, api_key = _client_settings(options.get("--url", [None])[0])
        try:
            transport = SyncTransport(url, api_key=api_key)
        except UnsupportedURLError:
            return None
        task = _task_request(command, options) if command in _TASKS else None
        if command in _TASKS and task is None:
            return None  # a value the Typer command must judge (and report)
        with transport:
            if task is not None:
                result = _send_task(transport, command, task)
            else:
                result = _call(transport, command, options)
        text = _result_json(result, options)
    except Exception as exc:  # mapped like the Typer app's one error exit
        return _fail(exc)
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # as click does: a closed pipe is a quiet exit 1
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _is_for_typer(command: str, options: dict[str, list[str]]) -> bool:
    """What the Typer command must do itself: report blank targets, exclusive flags, or show
    a fanout's progress on a terminal."""
    from .options import is_blank_targets

    if any(is_blank_targets(options.get(name)) for name in _REPEATABLE):
        return True
    if command != "fanout":
        return False
    return sys.stderr.isatty() or {"--summary", "--value-only"} <= options.keys()


def _client_settings(url: str | None) -> tuple[str, str | None]:
    """URL and API key: the light reader when it is sure, else the full client settings."""
    from ..client_env import client_env

    light = client_env(url)
    if light is not None:
        return light
    from ..settings import load_client_settings

    settings = load_client_settings(None, url=url)
    key = settings.api_key
    return settings.url, None if key is None else key.get_secret_value()


def _result_json(result: Any, options: dict[str, list[str]]) -> str:
    """The JSON a command prints: a fanout's ``--value-only`` or ``--summary`` view, or the
    whole result."""
    if "--value-only" in options:
        from .render import fanout_value_json

        return fanout_value_json(result)
    if "--summary" in options:
        from .render import fanout_summary, to_json

        return to_json(fanout_summary(result))
    return _to_json(result)


def _to_json(result: Any) -> str:
    """:func:`.render.to_json`, without importing pydantic for plain data (a str -> str map)."""
    if isinstance(result, dict) and all(isinstance(v, str) for v in result.values()):
        import orjson

        return orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    from .render import to_json

    return to_json(result)


def _call(transport: Any, command: str, options: dict[str, list[str]]) -> Any:
    """The same request and result shape as :class:`~..client.AsyncClient`'s method."""
    from ..errors import OrchestratorError

    if command == "instances":
        from ..models import InstanceInfo

        data = transport.request("GET", "/api/cluster/instances")
        items = expect_object(data, "/api/cluster/instances").get("instances")
        if not isinstance(items, list):
            raise OrchestratorError("the orchestrator sent an instance list without 'instances'")
        return [parse_reply(InstanceInfo, item) for item in items]
    instances = options.get("--instances")
    detail = "--detail" in options
    params: dict[str, str] = {}
    if instances:
        params["instances"] = ",".join(instances)
    if detail:
        params["detail"] = "true"
    data = expect_object(
        transport.request("GET", "/api/orchestrator/health", params=params),
        "/api/orchestrator/health",
    )
    if detail:
        from ..models import HealthDetail

        return {str(name): parse_reply(HealthDetail, value) for name, value in data.items()}
    return {str(name): str(state) for name, state in data.items()}


class _Task(NamedTuple):
    """One POST the quick path makes: where, what, the server-side deadline, the headers."""

    path: str
    body: dict[str, Any]
    deadline: float | None
    idempotency_key: str | None
    token: str | None = None  # a session token, sent instead of the API key


def _task_request(command: str, options: dict[str, list[str]]) -> _Task | None:
    """The POST of a ``route``, ``fanout`` or ``sessions_send``, shaped as the SDK sends it,
    or None when a value is one the Typer command would refuse or must read itself."""
    import orjson

    from ..domain.duration import parse_duration
    from ..errors import InvalidRequestError
    from .options import aggregate_value, json_text, targets_value

    one = {name: values[0] for name, values in options.items() if values}
    if command == "sessions_send":
        return _send_request(one)
    payload_text = one.get("--payload", "{}")
    if payload_text == "-":
        return None  # stdin can be read once: the Typer command reads it
    try:
        payload = json_text(payload_text)
        durations = {
            name: parse_duration(one[name], field="duration")
            for name in ("--timeout", "--attempt-timeout")
            if name in one
        }
    except (OSError, orjson.JSONDecodeError, InvalidRequestError):
        return None
    numbers: dict[str, int] = {}
    for name, (low, high) in _INTS.items():
        if name in one:
            try:
                number = int(one[name])  # as click parses an int option
            except ValueError:
                return None
            if number < low or (high is not None and number > high):
                return None
            numbers[name] = number
    timeout = durations.get("--timeout")
    fields: dict[str, Any] = {
        "payload": payload,
        "timeout": timeout,
        "attempt_timeout": durations.get("--attempt-timeout"),
        "retry": numbers.get("--retry"),
    }
    if command == "route":
        fields["instances"] = targets_value(options.get("--instances"))
        fields["policy"] = one.get("--policy")
    else:
        fields["targets"] = targets_value(options.get("--targets")) or "all"
        fields["aggregate"] = aggregate_value(one.get("--aggregate", "true"))
        fields["min_success"] = numbers.get("--min-success")
        fields["quorum"] = numbers.get("--quorum")
        fields["top_k"] = numbers.get("--top-k")
    body = {name: value for name, value in fields.items() if value is not None}
    return _Task(f"/api/orchestrator/{command}", body, timeout, one.get("--idempotency-key"))


def _send_request(one: dict[str, str]) -> _Task | None:
    """``sessions_send`` as the SDK's session handle sends it (its token instead of the API
    key with ``--token-env``), or None for anything the Typer command must judge."""
    import os
    import re

    import orjson

    from ..domain.duration import parse_duration
    from ..errors import InvalidRequestError
    from ..models import SESSION_ID_PATTERN
    from .options import json_text

    session_id, data_text = one.get("--id"), one.get("--data", "{}")
    if session_id is None or not re.match(SESSION_ID_PATTERN, session_id) or data_text == "-":
        return None
    token = None
    if "--token-env" in one:
        token = os.environ.get(one["--token-env"])
        if not token or not token.isprintable() or " " in token:
            return None
    try:
        data = json_text(data_text)
        timeout = parse_duration(one["--timeout"], field="duration") if "--timeout" in one else None
    except (OSError, orjson.JSONDecodeError, InvalidRequestError):
        return None
    body = {"data": data} if timeout is None else {"data": data, "timeout": timeout}
    path = f"/api/orchestrator/sessions/{session_id}/send"
    return _Task(path, body, timeout, one.get("--idempotency-key"), token)


def _send_task(transport: Any, command: str, task: _Task) -> Any:
    """POST ``task`` as :class:`~..client.AsyncClient` does; its typed result."""
    from pydantic import BaseModel

    from ..models import FanoutResult, RouteResult, SendResult

    headers: dict[str, str] = {}
    if task.idempotency_key is not None:
        headers["Idempotency-Key"] = task.idempotency_key
    if task.token is not None:
        headers["Authorization"] = f"Bearer {task.token}"
    data = transport.request(
        "POST", task.path, body=task.body, deadline=task.deadline, headers=headers
    )
    models: dict[str, type[BaseModel]] = {
        "route": RouteResult,
        "fanout": FanoutResult,
        "sessions_send": SendResult,
    }
    return parse_reply(models[command], data)


def _fail(exc: Exception) -> int:
    """The Typer app's error exit: the red ``error:`` line on stderr and its exit code."""
    from .exits import exit_code_for

    code = exit_code_for(exc)
    if code is None or isinstance(exc, BrokenPipeError):
        raise exc
    from rich.console import Console

    from .render import error_text

    Console(stderr=True, soft_wrap=True).print(error_text(exc))
    return int(code)
