"""Configuration: one file (JSON, TOML or YAML) overridden by ``ORCHESTRATOR_*`` variables.

This is the only module that reads the environment. Precedence, highest first: explicit
arguments (CLI flags), environment variables, the config file, defaults. Nested values use
``__`` in variable names (``ORCHESTRATOR_HEALTH__INTERVAL=5``); lists and objects are JSON
(``ORCHESTRATOR_INSTANCES='[{"name": "A", "url": "http://127.0.0.1:18801"}]'``).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from .domain.addresses import DEFAULT_DENY, AddressPolicy, AddressRefused, AddressRules
from .domain.duration import parse_duration
from .errors import InvalidRequestError
from .instance_url import url_host
from .models import MAX_REPLY_BYTES, MIN_REPLY_BYTES, InstanceSpec

__all__ = [
    "ClientConfig",
    "ClientSettings",
    "ConfigError",
    "DelegationSettings",
    "HealthSettings",
    "InstancesSettings",
    "MetricsSettings",
    "RetrySettings",
    "RunSettings",
    "SessionSettings",
    "Settings",
    "TracingSettings",
    "load_client_settings",
    "load_settings",
    "read_client_config",
    "read_config_file",
]

DEFAULT_URL = "http://127.0.0.1:18790"
DEFAULT_PORT = 18790
DEFAULT_BASE_PORT = 18801
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_IDEMPOTENCY_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024
"""An instance reply's size limit unless the instance sets its own ``max_reply_bytes``."""
DEFAULT_MAX_CONNECTIONS = 512
"""Outbound connections per instance address: a 1,000-target fanout over two instance
processes (500 each, ``make bench``) never waits for one."""
MAX_CONNECTIONS_LIMIT = 65_536


class ConfigError(ValueError):
    """A configuration problem, phrased for a person: it names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _duration_field(value: Any, info: Any) -> float:
    """A duration field; a ValueError (not our InvalidRequestError) so that pydantic keeps
    validating and reports every bad field at once."""
    try:
        return parse_duration(value, field=str(info.field_name))
    except InvalidRequestError as exc:
        raise ValueError(exc.message.removeprefix(f"{info.field_name}: ")) from None


class HealthSettings(_Section):
    """Probing: how often, how long a probe may take, and the state machine's thresholds."""

    interval: float = Field(default=60.0, description="Seconds between probes of one instance.")
    probe_timeout: float = Field(default=5.0)
    degraded_latency: float = Field(default=1.0, description="A slower probe means degraded.")
    failure_threshold: int = Field(default=3, ge=1, description="Failures in a row: down.")
    down_backoff: float = Field(default=1.0, description="First re-probe delay when down.")

    _durations = field_validator(
        "interval", "probe_timeout", "degraded_latency", "down_backoff", mode="before"
    )(_duration_field)


class RetrySettings(_Section):
    """Retries: how many, backoff shape, and the fleet-wide retry budget."""

    max_retries: int = Field(default=3, ge=0, le=10)
    backoff_base: float = Field(default=0.05, description="First backoff ceiling, seconds.")
    backoff_max: float = Field(default=2.0, description="Largest backoff ceiling, seconds.")
    budget_ratio: float = Field(default=0.2, ge=0, le=1, description="Retries per request.")
    budget_window: float = Field(default=10.0, description="Sliding window, seconds.")
    budget_min_retries: int = Field(
        default=10, ge=0, description="Retries always allowed per window, even at low traffic."
    )
    attempt_timeout: float | None = Field(
        default=None,
        description="Most one attempt may take before it counts as timed out and the next "
        "candidate is tried; unset: an attempt may use the whole remaining deadline.",
    )

    _durations = field_validator("backoff_base", "backoff_max", "budget_window", mode="before")(
        _duration_field
    )

    @field_validator("attempt_timeout", mode="before")
    @classmethod
    def _attempt_timeout(cls, value: Any, info: Any) -> float | None:
        return None if value is None else _duration_field(value, info)


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/openclaw-orchestrator``, else ``~/.local/share/openclaw-orchestrator``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "openclaw-orchestrator"


class SessionSettings(_Section):
    """Sessions: default idle TTL, how long closed histories are kept, the sweeper's pace."""

    ttl: float = Field(default=3600.0, description="Idle seconds before a session expires.")
    retention: float = Field(
        default=7 * 24 * 3600.0, description="How long a closed session's history is kept."
    )
    sweep_interval: float = Field(default=30.0, description="Seconds between expiry sweeps.")
    policy: str = Field(
        default="consistent_hash", description="Placement when a spawn names no instance."
    )
    lease_ttl: float = Field(
        default=10.0,
        ge=0.5,
        le=300.0,
        description="Seconds a replica holds a session's lease without renewing it: how "
        "long a session waits for a replica that died mid-send before another takes over.",
    )

    _durations = field_validator("ttl", "retention", "sweep_interval", "lease_ttl", mode="before")(
        _duration_field
    )

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return _placement_policy(value)


class RunSettings(_Section):
    """Durable runs: how a replica takes and holds them, how long finished ones are kept."""

    lease_ttl: float = Field(
        default=10.0,
        ge=0.5,
        le=300.0,
        description="Seconds a replica holds a run without renewing it: how long a run "
        "waits for a replica that died before another takes it over.",
    )
    poll_interval: float = Field(
        default=0.5,
        ge=0.01,
        le=60.0,
        description="Seconds between a replica's looks for runs to take (a submit on the "
        "same replica starts at once).",
    )
    max_running: int = Field(
        default=1000, ge=1, le=10_000, description="Runs one replica works on at once."
    )
    retention: float = Field(
        default=7 * 24 * 3600.0, description="How long a finished run is kept, seconds."
    )
    max_wait: float = Field(
        default=60.0,
        ge=1.0,
        le=3600.0,
        description="Longest ?wait= a GET of a run may ask (long poll), seconds.",
    )

    callback_timeout: float = Field(
        default=10.0,
        ge=0.1,
        le=300.0,
        description="Seconds one callback delivery attempt may take (connect to answer).",
    )
    callback_expiry: float = Field(
        default=24 * 3600.0,
        ge=1.0,
        le=30 * 24 * 3600.0,
        description="How long after its run finished a callback is retried, seconds.",
    )
    callback_max_attempts: int = Field(
        default=20, ge=1, le=100, description="Most delivery attempts of one callback."
    )
    callback_backoff_base: float = Field(
        default=5.0,
        ge=0.0,
        le=3600.0,
        description="Seconds the first retry's backoff ceiling; it doubles each retry.",
    )
    callback_backoff_max: float = Field(
        default=3600.0, ge=0.0, le=24 * 3600.0, description="Longest backoff ceiling, seconds."
    )
    callback_poll_interval: float = Field(
        default=1.0,
        ge=0.01,
        le=60.0,
        description="Seconds between a replica's looks for callbacks due.",
    )
    callback_max_sending: int = Field(
        default=32, ge=1, le=1000, description="Callbacks one replica delivers at once."
    )

    _durations = field_validator(
        "lease_ttl",
        "poll_interval",
        "retention",
        "max_wait",
        "callback_timeout",
        "callback_expiry",
        "callback_backoff_base",
        "callback_backoff_max",
        "callback_poll_interval",
        mode="before",
    )(_duration_field)


DEFAULT_MAX_HOPS = 3
"""Deliveries one delegation chain may make (``delegation.max_hops``)."""


class DelegationSettings(_Section):
    """The loop guard: how deep agents may delegate through the orchestrator. Every call
    carries ``X-Orchestrator-Hops`` (deliveries so far), every delivery sends one more, and a
    call arriving with ``max_hops`` or more is refused with ``delegation_loop``."""

    max_hops: int = Field(
        default=DEFAULT_MAX_HOPS,
        ge=1,
        le=32,
        description="Deliveries one delegation chain may make: a route, fanout, session "
        "send or run arriving with X-Orchestrator-Hops at or above this is refused (508).",
    )


def _placement_policy(value: str) -> str:
    from .domain.balancing import Policy

    value = value.replace("-", "_")
    if value == "consistent_hash":
        return value
    try:
        return Policy(value).value
    except ValueError:
        names = ", ".join(["consistent_hash", *(p.value for p in Policy)])
        raise ValueError(f"unknown policy {value!r}; one of {names}") from None


class InstancesSettings(_Section):
    """The instances section: the configured fleet (``static``) and the rules every instance,
    configured or registered, must follow. A bare list is the fleet alone, as in
    ``{"instances": [{"name": "A", "url": "http://127.0.0.1:18801"}]}``."""

    static: list[InstanceSpec] = Field(
        default_factory=list, description="Instances known from start-up, in this order."
    )
    max_reply_bytes: int = Field(
        default=DEFAULT_MAX_REPLY_BYTES,
        ge=MIN_REPLY_BYTES,
        le=MAX_REPLY_BYTES,
        description="Largest reply read from an instance (an instance's own max_reply_bytes "
        "wins); reading stops there and the call fails with reply_too_large.",
    )
    max_connections: int = Field(
        default=DEFAULT_MAX_CONNECTIONS,
        ge=1,
        le=MAX_CONNECTIONS_LIMIT,
        description="Most open connections to one instance address (host and port); more "
        "requests wait for a free one within their deadline.",
    )
    transport: Literal["lean", "aiohttp"] = Field(
        default="lean",
        description="How worker instances are called: 'lean' sends tasks and session "
        "messages to http:// instances with the httptools client and the rest with aiohttp; "
        "'aiohttp' sends everything with aiohttp.",
    )
    allow: list[str] = Field(
        default_factory=list,
        description="CIDRs and host names ('*.suffix' wildcards) instances may be at; "
        "empty: any address deny does not refuse.",
    )
    deny: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DENY),
        description="CIDRs and host names no instance may be at, checked after DNS on every "
        "connect; default: link-local and cloud metadata addresses.",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, value: Any) -> Any:
        return {"static": value} if isinstance(value, list) else value

    @field_validator("static")
    @classmethod
    def _unique_names(cls, value: list[InstanceSpec]) -> list[InstanceSpec]:
        seen: set[str] = set()
        for spec in value:
            if spec.name in seen:
                raise ValueError(f"instance name {spec.name!r} appears twice")
            seen.add(spec.name)
        return value

    @field_validator("allow", "deny")
    @classmethod
    def _address_rules(cls, value: list[str]) -> list[str]:
        AddressRules.parse(value)  # ValueError names the entry
        return value

    @model_validator(mode="after")
    def _static_addresses(self) -> InstancesSettings:
        policy = self.address_policy()
        for index, spec in enumerate(self.static):
            try:
                policy.check_host(url_host(spec.url))
            except AddressRefused as exc:
                raise ValueError(f"static.{index}.url (instance {spec.name}): {exc}") from None
        return self

    def address_policy(self) -> AddressPolicy:
        """``allow`` and ``deny`` parsed: what every connect to an instance is checked by."""
        return AddressPolicy.parse(allow=self.allow, deny=self.deny)


class MetricsSettings(_Section):
    """``GET /metrics``: this replica's Prometheus metrics (docs/observability.md)."""

    enabled: bool = Field(default=True, description="Serve GET /metrics and count.")
    token: SecretStr | None = Field(
        default=None,
        description="A bearer token that grants GET /metrics alone (the API key works too).",
    )


class TracingSettings(_Section):
    """OpenTelemetry traces (docs/observability.md): off by default, and then no span is
    made at all."""

    enabled: bool = Field(default=False, description="Make spans and pass traceparent on.")
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL (http://collector:4318/v1/traces); none: spans "
        "are made (trace ids in logs, traceparent to instances) but not exported.",
    )
    sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of new traces recorded."
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class Settings(BaseSettings):
    """Everything the server needs; tests build it directly: ``Settings(instances=[...])``."""

    model_config = SettingsConfigDict(
        env_prefix="ORCHESTRATOR_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    api_key: SecretStr | None = Field(default=None, description="Bearer key for the API.")
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    instances: InstancesSettings = Field(default_factory=InstancesSettings)
    policy: str = Field(default="round_robin")
    timeout: float = Field(default=30.0, description="Default request deadline, seconds.")
    max_timeout: float = Field(default=300.0, description="Largest deadline a request may ask.")
    health: HealthSettings = Field(default_factory=HealthSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    heartbeat_ttl: float = Field(default=30.0, description="Default for self-registration.")
    idempotency_ttl: float = Field(default=24 * 3600.0)
    idempotency_max_bytes: int = Field(
        default=DEFAULT_IDEMPOTENCY_MAX_BYTES,
        ge=0,
        description="Most bytes (as JSON) of results kept for Idempotency-Key replays.",
    )
    max_header_bytes: int = Field(
        default=DEFAULT_MAX_HEADER_BYTES,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest request line plus headers; larger requests get 431.",
    )
    header_timeout: float = Field(
        default=DEFAULT_HEADER_TIMEOUT,
        gt=0,
        description="Seconds a connection may take to send a request's headers.",
    )
    body_timeout: float = Field(
        default=DEFAULT_BODY_TIMEOUT,
        gt=0,
        description="Seconds a request's body may take to arrive once its headers are in.",
    )
    reducers: dict[str, str] = Field(
        default_factory=dict, description="name -> 'module:function' custom fanout reducers."
    )
    data_dir: Path = Field(
        default_factory=default_data_dir, description="Where the SQLite database lives."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default SQLite in data_dir. PostgreSQL: "
        "postgresql+asyncpg://user@host/db",
    )
    database_transaction_pooling: bool = Field(
        default=False,
        description="PostgreSQL: database_url points at a pooler in transaction mode "
        "(PgBouncer pool_mode=transaction), where consecutive transactions may run on "
        "different server connections: no prepared statement is kept between them.",
    )
    store_reserve_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=0,
        le=1024**4,
        description="SQLite: below this much free disk the store counts as full and session "
        "sends are refused (507) before delivery; 0 turns the free-space check off.",
    )
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    runs: RunSettings = Field(default_factory=RunSettings)
    delegation: DelegationSettings = Field(default_factory=DelegationSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    log_level: str = "info"
    log_format: str = Field(default="json", pattern="^(json|console)$")

    _durations = field_validator(
        "timeout", "max_timeout", "heartbeat_ttl", "idempotency_ttl", mode="before"
    )(_duration_field)
    _upload_timeouts = field_validator("header_timeout", "body_timeout", mode="before")(
        _duration_field
    )

    @model_validator(mode="after")
    def _trace_endpoint(self) -> Settings:
        """The OTLP endpoint obeys ``instances.allow``/``deny`` as an instance URL does."""
        endpoint = self.tracing.otlp_endpoint
        if endpoint is not None:
            try:
                self.instances.address_policy().check_host(url_host(endpoint))
            except AddressRefused as exc:
                raise ValueError(f"tracing.otlp_endpoint: {exc}") from None
        return self

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        from .domain.balancing import Policy

        try:
            return Policy(value).value
        except ValueError:
            names = ", ".join(p.value for p in Policy)
            raise ValueError(f"unknown policy {value!r}; one of {names}") from None

    @property
    def url(self) -> str:
        """Where a local client reaches this server."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only init kwargs and the environment: the config file is merged in ``load_settings``."""
        return init_settings, env_settings


class ClientSettings(BaseSettings):
    """What the SDK and CLI need: where the orchestrator is and the key to use."""

    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", extra="ignore")

    url: str = DEFAULT_URL
    api_key: SecretStr | None = None


TargetList = str | list[str]


class ClientConfig(BaseModel):
    """A client config file (``--config`` of the client commands): where the orchestrator is,
    its key, and the defaults of the commands' own options, as in
    ``{"instances": ["A"], "timeout": 5}``. A flag still wins over the file.

    ``instances`` and ``targets`` are one setting (``--instances`` of route and health,
    ``--targets`` of fanout). A key no client command knows is an error naming it; a key only
    some commands have applies to those (one file serves route, fanout and health). A server
    config file is read too, for its address and key only: see :func:`read_client_config`.
    """

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, description="The orchestrator's base URL.")
    api_key: SecretStr | None = Field(default=None, description="Its API key.")
    instances: TargetList | None = Field(default=None, description="Default targets.")
    targets: TargetList | None = Field(default=None, description="Same as instances.")
    timeout: float | None = Field(default=None, description="--timeout (route, fanout, send).")
    attempt_timeout: float | None = Field(default=None, description="--attempt-timeout.")
    retry: int | None = Field(default=None, ge=0, le=10, description="--retry.")
    policy: str | None = Field(default=None, description="--policy (route, sessions_spawn).")
    aggregate: bool | str | None = Field(default=None, description="--aggregate (fanout).")
    min_success: int | None = Field(default=None, ge=0, description="--min-success (fanout).")
    quorum: int | None = Field(default=None, ge=1, description="--quorum (fanout).")
    top_k: int | None = Field(default=None, ge=1, description="--top-k (fanout).")
    output: Literal["json", "table"] | None = Field(default=None, description="--output.")

    @field_validator("timeout", "attempt_timeout", mode="before")
    @classmethod
    def _durations(cls, value: Any, info: Any) -> float | None:
        return None if value is None else _duration_field(value, info)

    @model_validator(mode="after")
    def _one_target_key(self) -> ClientConfig:
        if self.instances is not None and self.targets is not None:
            raise ValueError("give 'instances' or 'targets' (the same setting), not both")
        return self

    def option_defaults(self) -> dict[str, Any]:
        """The options' defaults by parameter name (a Click ``default_map``); the URL and key
        are not options' defaults: they keep their own precedence (flag, env, file)."""
        values = self.model_dump(exclude={"url", "api_key"}, exclude_none=True)
        chosen = values.pop("instances", values.pop("targets", None))
        if chosen is not None:
            names = [chosen] if isinstance(chosen, str) else chosen
            values |= {"instances": names, "targets": names}
        if isinstance(values.get("aggregate"), bool):
            values["aggregate"] = str(values["aggregate"]).lower()
        return values


def _is_server_config(data: dict[str, Any]) -> bool:
    """A file with a key only the server has (``port``, ``health``, ...), instances given as
    objects or a section, or ``retry`` as a section."""
    server_only = Settings.model_fields.keys() - ClientConfig.model_fields.keys()
    instances = data.get("instances")
    return (
        bool(server_only & data.keys())
        or isinstance(instances, dict)
        or (isinstance(instances, list) and any(isinstance(i, dict) for i in instances))
        or isinstance(data.get("retry"), dict)
    )


def read_client_config(path: Path) -> ClientConfig:
    """``path`` as a client config; :class:`ConfigError` naming the file and every bad key.

    A server config (see :func:`_is_server_config`) gives its address (``host``/``port``, or
    ``url``) and ``api_key`` only; its other keys are the server's and set no option, but a
    key the server does not know either is still an error.
    """
    data = read_config_file(path)
    if not _is_server_config(data):
        unknown = sorted(data.keys() - ClientConfig.model_fields.keys())
        if unknown:
            known = ", ".join(ClientConfig.model_fields)
            raise ConfigError(
                f"{path} (a client config): unknown key(s): {', '.join(unknown)}; "
                f"known: {known} (or a server config's keys)"
            )
        try:
            return ClientConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, f"{path} (a client config)")) from exc
    unknown = sorted(data.keys() - Settings.model_fields.keys() - {"url"})
    if unknown:
        raise ConfigError(f"{path} (a server config): unknown key(s): {', '.join(unknown)}")
    url = data.get("url")
    if url is None and "port" in data:
        host = data.get("host", "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        url = f"http://{host}:{data['port']}"
    try:
        return ClientConfig(url=url, api_key=data.get("api_key") or None)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, f"{path} (a server config)")) from exc


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a config file by its extension (.json, .toml, .yaml/.yml) into a dict."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data: Any
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{path}: unknown config format (use .json, .toml, .yaml)")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object")
    return data


def _describe(exc: ValidationError, origin: str, *, bare_fleet: bool = False) -> str:
    """Every problem of ``exc``, a line each, at the place the user wrote it: with
    ``bare_fleet`` (``instances`` written as a list) ``instances.static.1.url`` is shown as
    ``instances.1.url``."""
    lines = [f"{origin}: invalid configuration"]
    for err in exc.errors():
        loc = err["loc"]
        if bare_fleet and loc[:2] == ("instances", "static"):
            loc = ("instances", *loc[2:])
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config`` (optional), the environment and ``overrides`` (non-None only).

    Raises :class:`ConfigError` naming the file and every offending field.
    """
    file_values = read_config_file(config) if config else {}
    explicit = {k: v for k, v in overrides.items() if v is not None}
    env_only = Settings.model_fields.keys() - explicit.keys()
    origin = str(config) if config else "settings"
    try:
        from_env = _env_values(env_only)
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc} (lists and objects must be JSON)") from exc
    try:
        layers = [_fleet_as_section(v) for v in (file_values, from_env, explicit)]
        return Settings.model_validate(_deep_merge(_deep_merge(layers[0], layers[1]), layers[2]))
    except ValidationError as exc:
        bare = isinstance(file_values.get("instances"), list)
        raise ConfigError(_describe(exc, origin, bare_fleet=bare)) from exc
    except InvalidRequestError as exc:
        raise ConfigError(f"{origin}: {exc.message}") from exc


def _fleet_as_section(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with a bare ``instances`` list written as its section, ``{"static": [...]}``,
    so that ``ORCHESTRATOR_INSTANCES__DENY`` merges with a file's fleet instead of replacing
    it."""
    fleet = values.get("instances")
    return {**values, "instances": {"static": fleet}} if isinstance(fleet, list) else values


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; sections (dicts) merge key by key, so
    ``ORCHESTRATOR_HEALTH__INTERVAL`` changes the interval and keeps the file's other keys."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_values(fields: Any) -> dict[str, Any]:
    """Values the environment sets, as the Settings env source parses them."""
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(
        Settings, env_prefix="ORCHESTRATOR_", env_nested_delimiter="__", case_sensitive=False
    )
    values = source()
    return {k: v for k, v in values.items() if k in fields}


def load_client_settings(
    config: Path | None = None, *, url: str | None = None, api_key: str | None = None
) -> ClientSettings:
    """Client settings: flags, then the environment, then ``url``/``api_key`` of a config
    file (:func:`read_client_config`: a server config works, its host and port give the URL).
    """
    values: dict[str, Any] = {}
    if config:
        file = read_client_config(config)
        if file.url is not None:
            values["url"] = file.url
        if file.api_key is not None and file.api_key.get_secret_value():
            values["api_key"] = file.api_key
    env = ClientSettings()
    fields_set = env.model_fields_set
    merged = {**values, **{k: getattr(env, k) for k in fields_set}}
    if url:
        merged["url"] = url
    if api_key:
        merged["api_key"] = api_key
    return ClientSettings.model_validate(merged)
