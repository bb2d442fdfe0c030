"""JSON responses straight from pydantic's serializer (no re-validation, no extra copy)."""

from __future__ import annotations

from pydantic import BaseModel
from starlette.responses import Response

__all__ = ["json_response"]


def json_response(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """``model`` as an ``application/json`` response."""
    return Response(
        model.model_dump_json(), status_code=status, media_type="application/json", headers=headers
    )
