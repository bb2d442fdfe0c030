"""A quick path for the simplest JSON commands, taken before Typer, Rich or aiohttp load.

``health`` and ``instances`` printing JSON make up most scripted calls and cost one GET each;
building the Typer app (≈ 100 ms), Rich (≈ 35 ms) and the aiohttp SDK (≈ 130 ms) for them
would dominate the run. :func:`try_quick` accepts only a strict subset of those commands'
options (the ones spelled out below) and returns None for anything else — help, table output,
``--config``, unknown or repeated options — so the Typer app handles it exactly as before.

Same settings (:func:`~..settings.load_client_settings`), same request, same JSON
(:func:`.render.to_json`), same error line and exit codes as the Typer commands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["QUICK_COMMANDS", "try_quick"]

QUICK_COMMANDS = frozenset({"health", "instances"})
_VALUE_OPTIONS = {
    "health": frozenset({"--instances", "--url", "--output", "-o"}),
    "instances": frozenset({"--url", "--output", "-o"}),
}
_FLAGS = {"health": frozenset({"--detail"}), "instances": frozenset()}


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
    if any(len(v) > 1 for k, v in options.items() if k != "--instances"):
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
    if not _wants_json(options):
        return None
    from ..transport import SyncTransport, UnsupportedURLError

    try:
        url, api_key = _client_settings(options.get("--url", [None])[0])
        try:
            transport = SyncTransport(url, api_key=api_key)
        except UnsupportedURLError:
            return None
        with transport:
            result = _call(transport, command, options)
    except Exception as exc:  # mapped like the Typer app's one error exit
        return _fail(exc)
    try:
        sys.stdout.write(_to_json(result) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # as click does: a closed pipe is a quiet exit 1
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


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
        items = _expect_object(data, "/api/cluster/instances").get("instances")
        if not isinstance(items, list):
            raise OrchestratorError("the orchestrator sent an instance list without 'instances'")
        return [_model(InstanceInfo, item) for item in items]
    instances = options.get("--instances")
    detail = "--detail" in options
    params: dict[str, str] = {}
    if instances:
        params["instances"] = ",".join(instances)
    if detail:
        params["detail"] = "true"
    data = _expect_object(
        transport.request("GET", "/api/orchestrator/health", params=params),
        "/api/orchestrator/health",
    )
    if detail:
        from ..models import HealthDetail

        return {str(name): _model(HealthDetail, value) for name, value in data.items()}
    return {str(name): str(state) for name, state in data.items()}


def _expect_object(data: Any, path: str) -> dict[str, Any]:
    from ..errors import OrchestratorError

    if not isinstance(data, dict):
        raise OrchestratorError(f"the orchestrator sent a non-object reply to {path}")
    return data


def _model(model: Any, data: Any) -> Any:
    from pydantic import ValidationError

    from ..errors import OrchestratorError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise OrchestratorError(
            f"the orchestrator sent a {model.__name__} this SDK cannot read: {exc}"
        ) from exc


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
