"""Reading the orchestrator's replies into typed results, for the SDK and the CLI's fast path.

Light on purpose: the fast path imports it before pydantic is needed (a plain ``health``
map never builds a model), so pydantic is imported only when a model is parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ..errors import OrchestratorError

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["decode_json", "expect_object", "parse_reply"]

M = TypeVar("M", bound="BaseModel")
C = TypeVar("C")


def decode_json(
    raw: bytes, not_json: Callable[[orjson.JSONDecodeError, C], Exception], context: C
) -> Any:
    """``raw`` parsed as JSON; else the error ``not_json(failure, context)`` makes, raised
    from the failure. The caller picks the error (the SDK's ``OrchestratorError``, the
    server's ``InstanceProtocolError``); ``context`` (whose reply it was) is handed over
    rather than closed over, so a reply that parses costs no allocation of ours."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise not_json(exc, context) from exc


def expect_object(data: Any, path: str) -> dict[str, Any]:
    """``data`` when it is a JSON object; else the error a reply of ``path`` deserves."""
    if not isinstance(data, dict):
        raise OrchestratorError(f"the orchestrator sent a non-object reply to {path}")
    return data


def parse_reply(model: type[M], data: Any) -> M:
    """``data`` as ``model``; a reply this SDK cannot read becomes an ``OrchestratorError``."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise OrchestratorError(
            f"the orchestrator sent a {model.__name__} this SDK cannot read: {exc}"
        ) from exc
