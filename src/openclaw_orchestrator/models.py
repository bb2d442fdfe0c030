"""Pydantic v2 wire models shared by the API and the SDK.

Field names are the contract documented in ``docs/api.md``; the server validates requests
with them and the SDK parses replies with them, so the two can never drift apart.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    SecretStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .domain.balancing import Policy
from .domain.duration import MAX_DURATION, describe_duration, parse_duration
from .domain.sessions import MAX_TTL
from .errors import InvalidRequestError
from .instance_url import check_health_path, check_instance_url

__all__ = [
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_COUNT",
    "MAX_HISTORY_OFFSET",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_METADATA_BYTES",
    "SESSION_ID_PATTERN",
    "AggregateSpec",
    "Attempt",
    "CallbackAttemptInfo",
    "CallbackInfo",
    "CallbackSpec",
    "ErrorBody",
    "ErrorReply",
    "FanoutEntry",
    "FanoutRequest",
    "FanoutResult",
    "FanoutRun",
    "HealthDetail",
    "HistoryEntry",
    "HistoryPage",
    "InstanceInfo",
    "InstanceSpec",
    "RegisterBody",
    "RouteRequest",
    "RouteResult",
    "RouteRun",
    "RunInfo",
    "RunList",
    "RunSubmit",
    "SendRequest",
    "SendResult",
    "SessionInfo",
    "SessionList",
    "SessionSendRequest",
    "SessionSendRun",
    "SkillList",
    "SkillManifest",
    "SkillRegistration",
    "Skip",
    "SpawnRequest",
    "SpawnResult",
    "TargetExpr",
]

POLICIES = tuple(p.value for p in Policy)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)

TargetExpr = str | list[str]
"""``"A-H"``, ``"A,C,E"``, ``"A C E"``, ``"all"``, ``"tag:gpu"`` or a list of such tokens."""

AggregateSpec = bool | str
"""``true`` (array), ``false`` (none) or a strategy name: ``array``, ``merge``, ``concat``,
``first``, ``quorum``, ``topk`` or a reducer registered in the configuration."""

EntryStatus = Literal["ok", "error", "timeout", "cancelled"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Request(_Wire):
    """A request body: every number finite (JSON has no NaN or Infinity; the API's decoder
    refuses them first); integer fields are :data:`Count`, durations :data:`Duration`."""

    model_config = ConfigDict(allow_inf_nan=False)


MAX_COUNT = 10_000
"""The largest count a request may give (``min_success``, ``quorum``, ``top_k``)."""
MAX_METADATA_BYTES = 16 * 1024
"""The largest session ``metadata``, as compact JSON: it is returned with every listing."""
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_KEY_PATTERN = rf"^[!-~]{{1,{MAX_IDEMPOTENCY_KEY}}}$"
"""An ``Idempotency-Key``: 1–255 visible ASCII characters (no spaces)."""
MAX_HISTORY_OFFSET = 2**31 - 1
"""The largest ``offset`` of a history page (a position, stored as a 32-bit integer)."""
DURATION_PATTERN = r"^\s*(\d*[1-9]\d*(\.\d+)?|\d*\.\d*[1-9]\d*)\s*(ms|s|m|h|d)?\s*$"
"""A positive number with an optional unit (the schema's view; no lookahead, so that
generators of JSON Schema data can use it)."""


def _duration_schema(maximum: float) -> WithJsonSchema:
    """What a duration field accepts, for the OpenAPI schema: seconds, or a string with a
    unit; the validator (:func:`parse_duration`) is the authority."""
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": maximum},
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "null"},
            ],
            "description": f"Seconds, or '500ms', '10s', '5m', '1h', '7d'; at most "
            f"{describe_duration(maximum)}.",
        }
    )


Duration = Annotated[float | None, _duration_schema(MAX_DURATION)]
Count = Annotated[int | None, Field(strict=True)]
"""An optional integer field of a request: strict, so ``true``/``false`` are refused."""


def _seconds(value: Any, field: str, maximum: float = MAX_DURATION) -> float | None:
    return None if value is None else parse_duration(value, field=field, maximum=maximum)


MIN_REPLY_BYTES = 1024
MAX_REPLY_BYTES = 1024**3
"""Bounds of ``max_reply_bytes`` (an instance's own, and ``instances.max_reply_bytes``)."""


_HEADER_VALUE_RE = re.compile(r"^[ -~]{1,4096}$")


class InstanceSpec(_Wire):
    """One instance as configured or registered. ``credentials`` is a secret: never echoed.
    ``url`` and ``health_path`` are checked by :mod:`~openclaw_orchestrator.instance_url`."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique instance name, e.g. 'A'.")
    url: str = Field(description="Base URL, e.g. http://127.0.0.1:18801")
    driver: str = Field(default="worker", description="Instance kind: 'worker' (our protocol).")
    weight: float = Field(default=1.0, gt=0, le=1000)
    tags: list[str] = Field(default_factory=list)
    credentials: SecretStr | None = Field(
        default=None, description="Bearer token the orchestrator sends to this instance."
    )
    health_path: str | None = Field(
        default=None, description="Probe path; the driver's default when unset."
    )
    heartbeat_ttl: float | None = Field(
        default=None,
        gt=0,
        description="Seconds: a self-registered instance is dropped when it stops "
        "re-registering (heartbeating) for this long.",
    )
    max_reply_bytes: int | None = Field(
        default=None,
        ge=MIN_REPLY_BYTES,
        le=MAX_REPLY_BYTES,
        description="Largest reply read from this instance (instances.max_reply_bytes).",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_instance_url(value)

    @field_validator("health_path")
    @classmethod
    def _check_health_path(cls, value: str | None) -> str | None:
        return None if value is None else check_health_path(value)

    @field_validator("credentials")
    @classmethod
    def _check_credentials(cls, value: SecretStr | None) -> SecretStr | None:
        """A token goes out in a header: printable ASCII only (no line breaks)."""
        if value is not None and not _HEADER_VALUE_RE.match(value.get_secret_value()):
            raise ValueError("must be 1-4096 printable ASCII characters (a bearer token)")
        return value

    @field_validator("heartbeat_ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> float | None:
        return _seconds(value, "heartbeat_ttl")


class InstanceInfo(_Wire):
    """An instance as the API shows it: credentials reduced to a flag."""

    name: str
    url: str
    driver: str
    weight: float
    tags: list[str]
    has_credentials: bool
    health_path: str | None = None
    state: str
    source: Literal["config", "registered"]
    heartbeat_ttl: float | None = None
    last_heartbeat: datetime | None = None
    outstanding: int = 0


SKILL_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"


class SkillRegistration(_Wire):
    """``POST /api/cluster/register`` with ``{"skillId": ...}``: register a skill."""

    skill_id: str = Field(
        alias="skillId",
        pattern=SKILL_ID_PATTERN,
        description="A skill the orchestrator ships, e.g. 'orchestrator'.",
    )


class RegisterBody(RootModel[InstanceSpec | SkillRegistration]):
    """``POST /api/cluster/register``: a body with ``skillId`` registers a skill, any other
    object an instance. The form is chosen by that key, not by trying both, so a bad
    instance registration still names its own field (``url``, not ``InstanceSpec.url``)."""

    @model_validator(mode="wrap")
    @classmethod
    def _by_form(cls, value: Any, handler: Any) -> Any:
        if isinstance(value, RegisterBody):
            return value
        if not isinstance(value, dict):
            raise ValueError('must be a JSON object: an instance, or {"skillId": ...}')
        form = SkillRegistration if "skillId" in value else InstanceSpec
        return handler(form.model_validate(value))


class SkillManifest(_Wire):
    """A skill as registration answers it: what an agent's gateway needs to use it."""

    name: str = Field(description="The skill's name, as in its SKILL.md frontmatter.")
    description: str
    mcp_url: str = Field(description="This orchestrator's MCP endpoint (streamable HTTP).")
    mcp_transport: Literal["streamable-http"] = "streamable-http"
    cluster: str | None = None
    tags: list[str]
    embedding_hint: str | None = None
    metadata: dict[str, Any] = Field(description="The SKILL.md frontmatter's metadata.")
    skill_md: str = Field(description="The whole SKILL.md, frontmatter included.")


class SkillList(_Wire):
    """``GET /api/cluster/skills``."""

    skills: list[SkillManifest]


MAX_CALLBACK_URL = 2048
MIN_CALLBACK_SECRET, MAX_CALLBACK_SECRET = 16, 256


class CallbackSpec(_Wire):
    """Where to POST the finished run, and the secret that signs it (docs/api.md#callbacks).
    The secret is kept to sign and never shown again."""

    url: str = Field(
        max_length=MAX_CALLBACK_URL,
        description="http:// or https:// URL the finished run is POSTed to; its host obeys "
        "instances.allow/deny.",
    )
    secret: SecretStr = Field(
        min_length=MIN_CALLBACK_SECRET,
        max_length=MAX_CALLBACK_SECRET,
        description="Key of the HMAC-SHA256 signature (16-256 characters); never shown.",
    )

    # Raised as InvalidRequestError (which pydantic does not wrap): the field is named
    # ``callback.*`` whichever endpoint or run kind the callback came with.
    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> str:
        if not isinstance(value, str) or len(value) > MAX_CALLBACK_URL:
            raise _bad("url", f"must be a URL of at most {MAX_CALLBACK_URL} characters")
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise _bad("url", "must not hold spaces or control characters")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad("url", "must be an http:// or https:// URL with a host")
        if "@" in parts.netloc:
            raise _bad("url", "must not hold a user or password (sign with the secret)")
        try:
            parts.port  # noqa: B018  # raises for a port outside 0-65535
        except ValueError:
            raise _bad("url", "the port must be 1-65535") from None
        return value

    @field_validator("secret", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        if not isinstance(value, str) or not (
            MIN_CALLBACK_SECRET <= len(value) <= MAX_CALLBACK_SECRET
        ):
            bounds = f"{MIN_CALLBACK_SECRET}-{MAX_CALLBACK_SECRET}"
            raise _bad("secret", f"must be a string of {bounds} characters")
        return value


def _bad(name: str, problem: str) -> InvalidRequestError:
    """A refused callback field, named ``callback.<name>`` (never echoing its value)."""
    return InvalidRequestError(f"callback.{name}: {problem}", field=f"callback.{name}")


_CALLBACK_FIELD = Field(
    default=None,
    description="POST the finished run to this URL, signed (docs/api.md#callbacks); with "
    '"async": true, or on POST /api/orchestrator/runs.',
)


def _callback_needs_async(body: Any) -> Any:
    """A request model's check: a callback is for a durable run, so a synchronous request
    (one without ``"async": true``) cannot carry one. A run's body (``kind``) always can."""
    if body.callback is not None and not body.run_async and not hasattr(body, "kind"):
        raise InvalidRequestError(
            'callback: only a durable run has one; add "async": true (or submit it to '
            "POST /api/orchestrator/runs)",
            field="callback",
        )
    return body


class RouteRequest(_Request):
    """``POST /api/orchestrator/route``."""

    instances: TargetExpr | None = Field(
        default=None, description="Candidates; any healthy instance when omitted."
    )
    payload: Any = Field(default_factory=dict)
    run_async: bool = Field(
        default=False,
        alias="async",
        description="Answer 202 with a durable run at once instead of waiting (the same as "
        "POST /api/orchestrator/runs with this kind); also Prefer: respond-async.",
    )
    callback: CallbackSpec | None = _CALLBACK_FIELD
    _async_callback = model_validator(mode="after")(_callback_needs_async)
    timeout: Duration = Field(
        default=None, description="Seconds (or '10s', '500ms'), at most max_timeout."
    )
    attempt_timeout: Duration = Field(
        default=None,
        description="Most one attempt may take before the next candidate is tried (seconds "
        "or '500ms'); default: the configured retry.attempt_timeout, else the whole deadline.",
    )
    retry: Count = Field(default=None, ge=0, le=10, description="Max retries.")
    stream: bool = Field(
        default=False,
        description="Answer 200 text/event-stream: the instance's output as `delta` events "
        "as it is produced, then a `result` (or `error`) event; also Accept: "
        "text/event-stream. Once a delta has been sent the route is not retried. With "
        '"async": the durable run records the deltas as its `delta` events instead.',
    )
    policy: str | None = Field(
        default=None, description="round_robin | least_outstanding | weighted_random"
    )

    @field_validator("timeout", "attempt_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any, info: ValidationInfo) -> float | None:
        return _seconds(value, str(info.field_name))

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        if value is not None and value not in POLICIES:
            raise ValueError(f"unknown policy {value!r}; one of {', '.join(POLICIES)}")
        return value


class Attempt(_Wire):
    """One try of one instance while routing."""

    instance: str
    outcome: Literal["ok", "error", "timeout", "down"]
    latency_ms: float
    error: dict[str, Any] | None = None


class Skip(_Wire):
    """A candidate that was not tried, and why."""

    instance: str
    reason: Literal["down", "already_tried", "over_budget", "deadline"]


class RouteResult(_Wire):
    """The reply of a successful route."""

    instance: str
    result: Any
    attempts: list[Attempt]
    skipped: list[Skip]
    total_ms: float
    request_id: str


class FanoutRequest(_Request):
    """``POST /api/orchestrator/fanout``."""

    targets: TargetExpr = Field(default="all")
    payload: Any = Field(default_factory=dict)
    run_async: bool = Field(
        default=False,
        alias="async",
        description="Answer 202 with a durable run at once instead of waiting (the same as "
        "POST /api/orchestrator/runs with this kind); also Prefer: respond-async.",
    )
    callback: CallbackSpec | None = _CALLBACK_FIELD
    _async_callback = model_validator(mode="after")(_callback_needs_async)
    aggregate: AggregateSpec = True
    timeout: Duration = Field(
        default=None, description="Seconds (or '10s', '500ms'), at most max_timeout."
    )
    min_success: Count = Field(default=None, ge=0, le=MAX_COUNT)
    quorum: Count = Field(default=None, ge=1, le=MAX_COUNT, description="Votes needed (quorum).")
    top_k: Count = Field(default=None, ge=1, le=MAX_COUNT, description="k for 'topk'.")
    retry: Count = Field(default=None, ge=0, le=10, description="Retries per target.")
    attempt_timeout: Duration = Field(
        default=None,
        description="Most one attempt at a target may take, so a retry fits in the deadline "
        "(seconds or '500ms'); default: retry.attempt_timeout, else the whole deadline.",
    )
    stream: bool = False
    reply: Literal["full", "value"] = Field(
        default="full",
        description="'full': the FanoutResult; 'value': exactly the aggregated value as the "
        "whole body (e.g. the array), or the error when it could not be computed.",
    )

    @field_validator("timeout", "attempt_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any, info: ValidationInfo) -> float | None:
        return _seconds(value, str(info.field_name))

    @model_validator(mode="after")
    def _one_reply_form(self) -> FanoutRequest:
        if self.stream and self.reply == "value":
            raise InvalidRequestError(
                "reply: 'value' is one JSON body; it cannot be combined with stream",
                field="reply",
            )
        return self


class FanoutEntry(_Wire):
    """One target's outcome inside a fanout."""

    instance: str
    status: EntryStatus
    result: Any = None
    error: dict[str, Any] | None = None
    latency_ms: float


class FanoutResult(_Wire):
    """The reply of a fanout: every target's entry, plus the aggregated value."""

    aggregate: str | None
    value: Any = None
    results: list[FanoutEntry]
    succeeded: int
    failed: int
    timed_out: int
    total_ms: float
    request_id: str
    error: dict[str, Any] | None = Field(
        default=None, description="Set when the aggregate could not be computed."
    )


class HealthDetail(_Wire):
    """``GET /api/orchestrator/health?detail=true`` per instance."""

    state: str
    latency_ms: float | None = None
    last_check: datetime | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    last_change: datetime | None = None
    url: str


def redact_url(url: str) -> str:
    """``url`` with any password in its userinfo masked: safe for logs and replies."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is usable as an instance name."""
    return bool(_NAME_RE.match(name))


# -- sessions ------------------------------------------------------------------------------

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SessionState = Literal["open", "closed", "expired"]
FailoverMode = Literal["none", "migrate"]


class SpawnRequest(_Request):
    """``POST /api/orchestrator/sessions/spawn``; ``sessionId`` and ``session_id`` both work."""

    session_id: str | None = Field(
        default=None,
        alias="sessionId",
        pattern=SESSION_ID_PATTERN,
        description="Generated if unset.",
    )
    instance: str | None = Field(default=None, description="Pin to this instance.")
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description=f"Any JSON object, at most {MAX_METADATA_BYTES} bytes as compact JSON.",
    )
    ttl: Annotated[float | None, _duration_schema(MAX_TTL)] = Field(
        default=None, description="Idle seconds before expiry ('1h'), at most 30 days."
    )
    failover: FailoverMode = Field(default="none", description="'migrate' moves the session.")
    policy: str | None = Field(
        default=None, description="Placement: consistent_hash, round_robin, least_outstanding, …"
    )

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> float | None:
        return _seconds(value, "ttl", MAX_TTL)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError):
            raise ValueError("must be a JSON object") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"{size} bytes of JSON is over the {MAX_METADATA_BYTES}-byte limit")
        return value


class SessionInfo(_Wire):
    """A session as the API shows it (never its token)."""

    session_id: str
    instance: str
    state: SessionState
    metadata: dict[str, Any]
    ttl: float
    failover: FailoverMode
    created_at: datetime
    last_active_at: datetime
    expires_at: datetime | None = None
    closed_at: datetime | None = None
    messages: int = Field(description="How many sends the session has recorded.")


class SpawnResult(SessionInfo):
    """The reply of a spawn: the session, plus its token (shown this once)."""

    token: str = Field(
        repr=False, description="Credential for this session only: send, history, close."
    )


class SendRequest(_Request):
    """``POST /api/orchestrator/sessions/{id}/send``."""

    data: Any = Field(default_factory=dict)
    run_async: bool = Field(
        default=False,
        alias="async",
        description="Answer 202 with a durable run at once instead of waiting (the same as "
        "POST /api/orchestrator/runs with this kind); also Prefer: respond-async.",
    )
    callback: CallbackSpec | None = _CALLBACK_FIELD
    _async_callback = model_validator(mode="after")(_callback_needs_async)
    timeout: Duration = Field(default=None, description="Seconds (or '10s'), at most max_timeout.")
    stream: bool = Field(
        default=False,
        description="Answer 200 text/event-stream: the instance's output as `delta` events "
        "as it is produced, then a `result` (or `error`) event; also Accept: "
        "text/event-stream. The history records the final reply, as always. With "
        '"async": the durable run records the deltas as its `delta` events instead.',
    )

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float | None:
        return _seconds(value, "timeout")


class SessionSendRequest(SendRequest):
    """The seed's form, ``POST /api/orchestrator/sessions/send`` with ``sessionId`` inside."""

    session_id: str = Field(alias="sessionId", pattern=SESSION_ID_PATTERN)


class SendResult(_Wire):
    """The reply of a send: the instance's reply, once it is durably recorded."""

    session_id: str
    seq: int = Field(description="Position of this message in the session's history (1-based).")
    instance: str
    reply: Any
    latency_ms: float
    request_id: str
    migrated_from: str | None = Field(
        default=None, description="Set when this send moved the session off a down instance."
    )
    replayed: bool = Field(
        default=False, description="True when an Idempotency-Key matched an earlier send."
    )


class HistoryEntry(_Wire):
    """One recorded event of a session: a message and its reply, a migration, or an
    ``interrupted`` message: the replica sending it died before recording it and its
    instance could not say whether it ran (no reply is known)."""

    seq: int
    kind: Literal["message", "migration", "interrupted"]
    data: Any = None
    reply: Any = None
    instance: str
    latency_ms: float | None = None
    request_id: str | None = None
    created_at: datetime


class HistoryPage(_Wire):
    """``GET /api/orchestrator/sessions/{id}/history``: oldest first, paginated."""

    session_id: str
    messages: list[HistoryEntry]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class SessionList(_Wire):
    """``GET /api/orchestrator/sessions``."""

    sessions: list[SessionInfo]


# -- errors --------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """What went wrong: ``code`` is the contract (see ``errors.py``), the rest explains."""

    code: str = Field(description="invalid_request, unauthorized, instance_down, …")
    message: str
    field: str | None = Field(default=None, description="The offending field, when one is.")
    instance: str | None = Field(default=None, description="The instance at fault, if any.")
    upstream_status: int | None = Field(default=None, description="The instance's status.")
    retry_after: float | None = Field(default=None, description="Seconds until a retry.")
    details: dict[str, Any] | None = None


class ErrorReply(BaseModel):
    """The one shape of every error reply: ``{"error": {"code", "message", ...}}``."""

    error: ErrorBody


# -- durable runs --------------------------------------------------------------------------


class RouteRun(RouteRequest):
    """A route to run durably: the route's body and ``"kind": "route"``."""

    kind: Literal["route"]


class FanoutRun(FanoutRequest):
    """A fanout to run durably: the fanout's body and ``"kind": "fanout"``."""

    kind: Literal["fanout"]


class SessionSendRun(SessionSendRequest):
    """A session send to run durably: ``sessionId``, the send's body and
    ``"kind": "session_send"``."""

    kind: Literal["session_send"]


RunSubmit = Annotated[RouteRun | FanoutRun | SessionSendRun, Field(discriminator="kind")]
"""``POST /api/orchestrator/runs``: the body of the endpoint named by ``kind``."""


class CallbackAttemptInfo(_Wire):
    """One delivery attempt of a callback; ``status`` and ``error`` both None: its replica
    stopped before the answer was recorded (it may have reached the receiver)."""

    n: int
    at: datetime
    status: int | None = Field(default=None, description="The receiver's HTTP status.")
    error: str | None = Field(default=None, description="Why no status came.")
    latency_ms: float | None = None


class CallbackInfo(_Wire):
    """Where a run's callback stands (its secret is never shown)."""

    url: str
    state: Literal["pending", "delivered", "failed", "expired"]
    delivery_id: str = Field(description="X-Orchestrator-Delivery: the same on every attempt.")
    next_attempt_at: datetime | None = Field(
        default=None, description="When the next attempt is due, once one failed."
    )
    ended_at: datetime | None = None
    attempts: list[CallbackAttemptInfo] = Field(default_factory=list)


class RunInfo(_Wire):
    """A durable run: where it stands and, once finished, its result or error."""

    run_id: str
    kind: Literal["route", "fanout", "session_send"]
    state: Literal["queued", "running", "succeeded", "failed", "timed_out", "cancelled"]
    request: dict[str, Any] = Field(description="The body as submitted (without kind).")
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = Field(description="Times it was dispatched (more than 1 after recovery).")
    instance: str | None = None
    cancel_requested: bool = False
    result: Any = Field(
        default=None,
        description="The endpoint's result, once succeeded; for a fanout cancelled midway, "
        "the entries it had (partial: true, no aggregate).",
    )
    error: ErrorBody | None = Field(
        default=None, description="Why it failed, timed out or was interrupted."
    )
    callback: CallbackInfo | None = Field(
        default=None,
        description="The callback's delivery (in a GET of one run and the submit's reply; "
        "never in the callback's own body).",
    )


class RunList(_Wire):
    """``GET /api/orchestrator/runs``: newest first."""

    runs: list[RunInfo]
    next: str | None = Field(
        default=None, description="Pass as ``cursor`` for the next (older) page."
    )
