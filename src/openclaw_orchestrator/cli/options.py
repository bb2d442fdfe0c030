"""How the CLI reads option values, shared by the Typer commands and the fast path.

Nothing here imports Typer: the fast path (:mod:`.fastpath`) runs before Typer is loaded, and
must read ``--payload``, ``--instances`` or ``--aggregate`` exactly as the commands do.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

__all__ = ["aggregate_value", "is_blank_targets", "json_text", "targets_value"]


def json_text(text: str) -> Any:
    """A JSON option's value: inline JSON, ``@file`` or ``-`` (stdin). Raises OSError when
    the file or stdin cannot be read and ``orjson.JSONDecodeError`` for bad JSON."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    return orjson.loads(text)


def is_blank_targets(tokens: list[str] | None) -> bool:
    """Whether target tokens were given but name nothing (``--targets ''``, ``--targets ,``):
    a usage error, as the API refuses empty targets, never "the default" (all instances)."""
    return tokens is not None and not any(t.replace(",", " ").strip() for t in tokens)


def targets_value(tokens: list[str] | None) -> str | list[str] | None:
    """Target tokens as the SDK takes them: one string, a list, or None (server default)."""
    if not tokens:
        return None
    return tokens[0] if len(tokens) == 1 else tokens


def aggregate_value(value: str) -> bool | str:
    """``--aggregate``: ``true``/``false`` (any case) as booleans, anything else a name."""
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return value
