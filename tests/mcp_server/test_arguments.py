"""The tools' arguments: derived from the HTTP API's models, validated by them, refused
with the API's ``invalid_request`` naming the field. Pure: no server, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from openclaw_orchestrator.errors import InvalidRequestError
from openclaw_orchestrator.mcp_server.arguments import (
    MAX_HISTORY_PAGE,
    Arguments,
    HistoryQuery,
    RunArguments,
)
from openclaw_orchestrator.mcp_server.tools import TOOLS
from openclaw_orchestrator.models import FanoutRun, RouteRequest, RouteRun, SessionSendRun
from openclaw_orchestrator.server.core.sessions import MAX_HISTORY_PAGE as SERVER_PAGE

RUN_ARGUMENTS = RunArguments(frozenset({"async"}))


def test_history_page_bound_is_the_servers() -> None:
    """sessions_history's limit bound is the server's own (kept apart so stdio needs no server)."""
    assert MAX_HISTORY_PAGE == SERVER_PAGE


def test_left_out_fields_are_refused_under_either_name() -> None:
    """``async`` (also ``run_async``) and ``stream`` are not route's arguments."""
    arguments = Arguments(RouteRequest, frozenset({"async", "stream"}))
    for name in ("async", "run_async", "stream"):
        with pytest.raises(InvalidRequestError) as caught:
            arguments.parse({name: True})
        assert caught.value.field == name
    assert arguments.parse({"instances": "A"}).instances == "A"


@pytest.mark.parametrize(
    ("given", "model"),
    [
        ({"kind": "route", "instances": "A"}, RouteRun),
        ({"kind": "fanout", "targets": "A-B", "top_k": 2}, FanoutRun),
        ({"kind": "session_send", "sessionId": "s1", "data": {}}, SessionSendRun),
    ],
)
def test_runs_submit_takes_each_kinds_body(given: dict[str, Any], model: type) -> None:
    """One flat object; ``kind`` picks the endpoint model that validates it."""
    assert isinstance(RUN_ARGUMENTS.parse(given), model)


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"kind": "route", "targets": "A"}, "targets"),
        ({"kind": "fanout", "quorum": 0}, "quorum"),
        ({"kind": "session_send"}, "sessionId"),
        ({"kind": "route", "async": True}, "async"),
        ({}, "kind"),
    ],
)
def test_runs_submit_names_the_field(given: dict[str, Any], field: str) -> None:
    """A field of another kind, a bound, a missing id or tag: the field, not the kind."""
    with pytest.raises(InvalidRequestError) as caught:
        RUN_ARGUMENTS.parse(given)
    assert caught.value.field == field, caught.value


def test_runs_submit_schema_has_every_kinds_fields() -> None:
    """The flat schema holds the union of the three bodies' fields, ``async`` left out."""
    properties = RUN_ARGUMENTS.schema()["properties"]
    for model in (RouteRun, FanoutRun, SessionSendRun):
        expected = set(model.model_json_schema(by_alias=True)["properties"]) - {"async"}
        assert expected <= set(properties), model
    assert "async" not in properties


def test_history_arguments_accept_both_id_spellings() -> None:
    """``sessionId`` as the API's bodies spell it, ``session_id`` as its paths do."""
    arguments = Arguments(HistoryQuery)
    assert arguments.parse({"sessionId": "s1"}).session_id == "s1"
    assert arguments.parse({"session_id": "s1", "limit": 5}).limit == 5
    with pytest.raises(InvalidRequestError) as caught:
        arguments.parse({"sessionId": "s1", "limit": True})
    assert caught.value.field == "limit"


def test_every_schema_is_an_object_without_the_models_docstring() -> None:
    """LLM tool schemas want an object at the root; the description is the tool's."""
    for spec in TOOLS:
        schema = spec.arguments.schema()
        assert schema["type"] == "object", spec.name
        assert "description" not in schema, spec.name
        assert "title" not in schema, spec.name
