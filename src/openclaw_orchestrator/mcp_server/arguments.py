"""What each MCP tool takes: the HTTP API's own request models, minus what makes no sense
for a tool, plus small models for what the API reads from its path and query string.

A tool's ``inputSchema`` is derived from its model (:meth:`Arguments.schema`) and its
arguments are validated by that very model (:meth:`Arguments.parse`), so a tool and its
endpoint accept the same values with the same bounds and the same ``invalid_request``
naming the field. Nothing here needs the server: the stdio server validates with it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic_core import ErrorDetails

from ..domain.duration import MAX_DURATION, parse_duration
from ..domain.runs import MAX_RUN_ID
from ..errors import InvalidRequestError
from ..models import (
    MAX_HISTORY_OFFSET,
    NAME_PATTERN,
    SESSION_ID_PATTERN,
    FanoutRun,
    RouteRun,
    RunSubmit,
    SessionSendRun,
    TargetExpr,
    _duration_schema,
)

__all__ = [
    "MAX_HISTORY_PAGE",
    "MAX_RUN_WAIT",
    "RUN_ID_PATTERN",
    "Arguments",
    "HealthQuery",
    "HistoryQuery",
    "NoArguments",
    "RunArguments",
    "RunRef",
    "RunWait",
    "SessionQuery",
    "SessionRef",
    "invalid_arguments",
]

MAX_HISTORY_PAGE = 1000
"""The largest history page (the server's ``core.sessions.MAX_HISTORY_PAGE``; a test keeps
the two equal without importing the server here)."""
MAX_ACTIVE_WITHIN = MAX_DURATION / 60
"""The largest ``active_within`` (minutes), as on ``GET /api/orchestrator/sessions``."""
RUN_ID_PATTERN = rf"^[A-Za-z0-9_-]{{1,{MAX_RUN_ID}}}$"
DEFAULT_RUN_WAIT = 30.0
MAX_RUN_WAIT = 300.0
"""``runs_wait``'s bound: a tool call should end well within an agent's turn; wait again
for a longer run (its own deadline still ends it)."""


class _ToolArguments(BaseModel):
    """A tool's arguments: strict like a request body (unknown keys, NaN refused)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class NoArguments(_ToolArguments):
    """A tool without arguments (``instances``)."""


class SessionRef(_ToolArguments):
    """One session, by id (``sessions_close``)."""

    session_id: str = Field(alias="sessionId", pattern=SESSION_ID_PATTERN)


class HistoryQuery(SessionRef):
    """``sessions_history``: ``GET …/sessions/{id}/history?offset=&limit=``."""

    offset: int = Field(default=0, ge=0, le=MAX_HISTORY_OFFSET, strict=True)
    limit: int = Field(default=100, ge=1, le=MAX_HISTORY_PAGE, strict=True)


class SessionQuery(_ToolArguments):
    """``sessions_list``: ``GET …/sessions?instance=&state=&active_within=``."""

    instance: str | None = Field(default=None, pattern=NAME_PATTERN)
    state: Literal["open", "closed", "expired"] | None = None
    active_within: float | None = Field(
        default=None, gt=0, le=MAX_ACTIVE_WITHIN, description="Minutes."
    )


class HealthQuery(_ToolArguments):
    """``health``: ``GET /api/orchestrator/health?instances=&detail=``."""

    instances: TargetExpr | None = Field(default=None, description="Targets, e.g. 'A-H'.")
    detail: bool = Field(default=False, description="Add latency, last check and last error.")


class RunRef(_ToolArguments):
    """One durable run, by id (``runs_get``, ``runs_cancel``)."""

    run_id: str = Field(pattern=RUN_ID_PATTERN)


class RunWait(RunRef):
    """``runs_wait``: the run once it has ended, or as it stands after ``timeout``."""

    timeout: Annotated[float, _duration_schema(MAX_RUN_WAIT)] = Field(
        default=DEFAULT_RUN_WAIT,
        description=f"Seconds (or '30s') to wait at most: {DEFAULT_RUN_WAIT:g} by default, "
        f"at most {MAX_RUN_WAIT:g}.",
    )

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        return parse_duration(value, field="timeout", maximum=MAX_RUN_WAIT)


_RUN_KINDS = (RouteRun, FanoutRun, SessionSendRun)
_RUN_SUBMIT: TypeAdapter[RouteRun | FanoutRun | SessionSendRun] = TypeAdapter(RunSubmit)


@dataclass(frozen=True, slots=True)
class Arguments:
    """One tool's arguments: ``model`` validates them, ``left_out`` are the model's fields
    (by alias) a tool does not take, e.g. ``async`` and ``stream``: refused by name."""

    model: type[BaseModel]
    left_out: frozenset[str] = frozenset()

    def schema(self) -> dict[str, Any]:
        """The ``inputSchema``: the model's JSON Schema without the left-out fields (nor its
        title and docstring: the tool's description says what it does)."""
        schema = _without(self.model.model_json_schema(by_alias=True), self.left_out)
        return {k: v for k, v in schema.items() if k not in ("title", "description")}

    def parse(self, arguments: Mapping[str, Any] | None) -> Any:
        """The validated model; :class:`InvalidRequestError` naming the field otherwise."""
        given = dict(arguments or {})
        _refuse(given, self._refused())
        try:
            return self.model.model_validate(given)
        except ValidationError as exc:
            raise invalid_arguments(exc) from None

    def _refused(self) -> frozenset[str]:
        """The left-out fields under both their names (``async`` is ``run_async`` too)."""
        fields = self.model.model_fields
        names = {name for name, f in fields.items() if (f.alias or name) in self.left_out}
        return self.left_out | names


@dataclass(frozen=True, slots=True)
class RunArguments:
    """``runs_submit``'s arguments: the body of ``POST /api/orchestrator/runs`` as one flat
    object, ``kind`` saying which endpoint's fields apply (LLM tool schemas want an object
    with properties, not a ``oneOf``); validated by the API's discriminated union."""

    left_out: frozenset[str] = frozenset()

    def schema(self) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        defs: dict[str, Any] = {}
        for model in _RUN_KINDS:
            schema = _without(model.model_json_schema(by_alias=True), self.left_out)
            defs.update(schema.get("$defs", {}))
            for name, field in schema["properties"].items():
                properties.setdefault(name, field)
        properties["kind"] = {
            "enum": ["route", "fanout", "session_send"],
            "description": "Which endpoint's request this is: route (instances, payload, "
            "retry, policy, attempt_timeout), fanout (targets, payload, aggregate, "
            "min_success, quorum, top_k, retry, attempt_timeout, reply) or session_send "
            "(sessionId, data); timeout is the run's whole deadline.",
        }
        schema = {"type": "object", "properties": properties, "required": ["kind"]}
        return {**schema, "$defs": defs} if defs else schema

    def parse(self, arguments: Mapping[str, Any] | None) -> Any:
        given = dict(arguments or {})
        _refuse(given, self.left_out | {"run_async"})
        try:
            return _RUN_SUBMIT.validate_python(given)
        except ValidationError as exc:
            raise invalid_arguments(exc, tags=("route", "fanout", "session_send")) from None


def _without(schema: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """``schema`` (an object's) without the properties ``names``."""
    left_out = set(names)
    properties = {k: v for k, v in schema.get("properties", {}).items() if k not in left_out}
    trimmed = {**schema, "properties": properties}
    if "required" in schema:
        trimmed["required"] = [n for n in schema["required"] if n not in left_out]
    return trimmed


def _refuse(given: Mapping[str, Any], refused: Iterable[str]) -> None:
    for name in sorted(set(given) & set(refused)):
        raise InvalidRequestError(f"{name}: not an argument of this tool", field=name)


def invalid_arguments(exc: ValidationError, *, tags: Iterable[str] = ()) -> InvalidRequestError:
    """The first problem of ``exc`` phrased with its field, as the API's 400 is (a union's
    tag, ``tags``, is left out of the field's path; a bad tag names the discriminator)."""
    problems = [_problem(e, set(tags)) for e in exc.errors()]
    first = problems[0] if problems else {"field": "arguments", "message": "invalid arguments"}
    return InvalidRequestError(
        f"{first['field']}: {first['message']}",
        field=first["field"],
        details={"problems": problems} if len(problems) > 1 else None,
    )


def _problem(error: ErrorDetails, tags: set[str]) -> dict[str, str]:
    path = ".".join(str(p) for p in error["loc"] if p not in tags)
    if not path and error["type"].startswith("union_tag"):
        path = str(error.get("ctx", {}).get("discriminator", "")).strip("'")
    message = str(error["msg"]).removeprefix("Value error, ")
    return {"field": path or "arguments", "message": message}
