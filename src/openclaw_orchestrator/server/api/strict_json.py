"""Request bodies are JSON as RFC 8259 defines it, and nothing more.

Python's ``json`` module (which FastAPI uses) accepts ``NaN``, ``Infinity`` and ``-Infinity``,
and turns ``1e400`` into infinity: none of them is JSON, PostgreSQL refuses them after the
instance has already run the message, and they cannot be sent on. orjson refuses them all
(and invalid UTF-8, lone surrogates, nesting past 1024 levels), so it decodes every body.
Only when it refuses does a second, lenient look find *where* the non-finite number is, so
the 400 can name the field (``data.x``, ``payload.items.3``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from ...errors import InvalidRequestError

__all__ = ["decode_json"]


class _NonFinite:
    """Stands in for a non-finite number while the lenient parse locates it."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def decode_json(raw: bytes) -> Any:
    """The body's JSON value; :class:`InvalidRequestError` naming the field when it holds a
    non-finite number, naming ``body`` when it is not JSON at all."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    located = _locate_non_finite(raw)
    if located is None:
        raise InvalidRequestError("body: request body is not valid JSON", field="body")
    field, literal = located
    raise InvalidRequestError(
        f"{field}: {literal} is not a JSON number (numbers must be finite)", field=field
    )


def _parse_float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _locate_non_finite(raw: bytes) -> tuple[str, str] | None:
    """``(path, literal)`` of the first non-finite number in ``raw``, or None (not JSON,
    or refused for another reason)."""
    try:
        doc = json.loads(raw, parse_constant=_NonFinite, parse_float=_parse_float)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:  # depth-first, in document order
        path, value = stack.pop()
        if isinstance(value, _NonFinite):
            return path or "body", value.literal
        if isinstance(value, dict):
            items = [(_join(path, str(k)), v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(_join(path, str(i)), v) for i, v in enumerate(value)]
        else:
            continue
        stack.extend(reversed(items))
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
