"""A fast path for the most scripted JSON commands, taken before Typer, Rich or aiohttp load.

``health``, ``instances``, ``route``, ``fanout`` and ``sessions_send`` printing JSON make up
most scripted calls and cost one request each; building the Typer app (≈ 100 ms) and Rich
(≈ 35 ms) for them would dominate the run. :func:`try_fast_path` accepts only a strict subset
of those commands' options (the ones spelled out below) with values it can vouch for, and
returns None for anything else — help, table output, ``--config``, ``--stream``, stdin as
``--payload -``, targets that name nothing, an unknown, repeated or invalid option, a fanout
whose progress a terminal on stderr should show — so the Typer app handles it exactly as
before (usage errors included).

The same SDK call as the Typer command (the sync :class:`~..sync_client.Client`, which builds
the request and reads the reply), the same JSON (:func:`.render.to_json`), the same error
line and exit codes. A plain ``health`` never imports pydantic.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from ..sdk.sync_client import Client

__all__ = ["FAST_PATH_COMMANDS", "try_fast_path"]

FAST_PATH_COMMANDS = frozenset({"health", "instances", "route", "fanout", "sessions_send"})
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
_Call: TypeAlias = "Callable[[Client], Any]"
"""One SDK call on the fast path's :class:`~..sync_client.Client`."""
_INTS = {
    "--retry": (0, 10),
    "--min-success": (0, None),
    "--quorum": (1, None),
    "--top-k": (1, None),
}


def _parse(argv: Sequence[str]) -> tuple[str, dict[str, list[str]]] | None:
    """``(command, options)`` when ``argv`` is a fast-path command's plain form, else None."""
    if not argv or argv[0] not in FAST_PATH_COMMANDS:
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


def try_fast_path(argv: Sequence[str]) -> int | None:
    """Run ``argv`` on the fast path and return its exit code, or None: use the Typer app."""
    parsed = _parse(argv)
    if parsed is None:
        return None
    command, options = parsed
    output = options.get("--output")
    if output is not None and output[0].lower() not in ("json", "table"):
        return None  # Typer's usage error
    if not _wants_json(options) or _is_for_typer(command, options):
        return None
    from ..sdk.sync_client import Client

    try:
        call = _task(command, options) if command in _TASKS else _query(command, options)
        if call is None:
            return None  # a value the Typer command must judge (and report)
        with Client(options.get("--url", [None])[0]) as client:
            result = call(client)
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


def _query(command: str, options: dict[str, list[str]]) -> _Call:
    """``health`` (with ``--detail``) or ``instances``: the SDK call the Typer command makes."""
    if command == "instances":
        return lambda client: client.instances()
    targets = options.get("--instances") or None
    if "--detail" in options:
        return lambda client: client.health_detail(targets)
    return lambda client: client.health(targets)


def _task(command: str, options: dict[str, list[str]]) -> _Call | None:
    """The SDK call of a ``route``, ``fanout`` or ``sessions_send``, or None when a value is
    one the Typer command would refuse or must read itself."""
    import orjson

    from ..domain.duration import parse_duration
    from ..errors import InvalidRequestError
    from .options import aggregate_value, json_text, targets_value

    one = {name: values[0] for name, values in options.items() if values}
    if command == "sessions_send":
        return _send(one)
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
    common: dict[str, Any] = {
        "timeout": durations.get("--timeout"),
        "attempt_timeout": durations.get("--attempt-timeout"),
        "retry": numbers.get("--retry"),
        "idempotency_key": one.get("--idempotency-key"),
    }
    if command == "route":
        instances = targets_value(options.get("--instances"))
        policy = one.get("--policy")
        return lambda client: client.route(payload, instances=instances, policy=policy, **common)
    targets = targets_value(options.get("--targets")) or "all"
    aggregate = aggregate_value(one.get("--aggregate", "true"))
    min_success, quorum = numbers.get("--min-success"), numbers.get("--quorum")
    top_k = numbers.get("--top-k")
    return lambda client: client.fanout(
        payload,
        targets=targets,
        aggregate=aggregate,
        min_success=min_success,
        quorum=quorum,
        top_k=top_k,
        **common,
    )


def _send(one: dict[str, str]) -> _Call | None:
    """``sessions_send`` through the session handle, as the Typer command (its token instead
    of the API key with ``--token-env``), or None for anything the Typer command must judge."""
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
    key = one.get("--idempotency-key")
    return lambda client: client.sessions.session(session_id, token).send(
        data, timeout=timeout, idempotency_key=key
    )


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
