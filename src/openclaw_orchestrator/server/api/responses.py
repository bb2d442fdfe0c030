"""JSON responses straight from pydantic's serializer (no re-validation, no extra copy)."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic_core import to_json
from starlette.responses import Response

from ...errors import AggregationError
from ...models import FanoutResult

__all__ = ["json_response", "value_json"]


def json_response(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """``model`` as an ``application/json`` response."""
    return Response(
        model.model_dump_json(), status_code=status, media_type="application/json", headers=headers
    )


def value_json(result: FanoutResult) -> bytes:
    """A fanout's ``reply: "value"`` body: exactly its aggregated value as JSON. When the
    aggregate could not be computed there is no value to give: :class:`AggregationError`
    (502), with every entry in ``details.results``, as the full reply would have shown."""
    if result.error is not None:
        message = str(result.error.get("message", "the aggregate could not be computed"))
        entries = [entry.model_dump(mode="json") for entry in result.results]
        raise AggregationError(message, details={"results": entries})
    return to_json(result.value)
