"""The field a validation error names: as the caller wrote it (no pydantic location words,
no discriminator tag of a run's body)."""

from __future__ import annotations

from typing import Any

import pytest

from openclaw_orchestrator.server.api.errors import _field_of


@pytest.mark.parametrize(
    ("loc", "field"),
    [
        (("body", "timeout"), "timeout"),
        (("body", "route", "timeout"), "timeout"),
        (("body", "session_send", "sessionId"), "sessionId"),
        (("body", "fanout", "targets", 0), "targets.0"),
        (("body", "route"), "route"),  # a field called so (no tag: nothing after it)
        (("query", "wait"), "wait"),
        (("body",), "body"),
        ((), "body"),
    ],
)
def test_the_field_is_named_as_the_caller_wrote_it(loc: tuple[Any, ...], field: str) -> None:
    assert _field_of(loc) == field
