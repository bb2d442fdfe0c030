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
from typing import Any

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

from .domain.duration import parse_duration
from .errors import InvalidRequestError
from .models import InstanceSpec

__all__ = [
    "ClientSettings",
    "ConfigError",
    "HealthSettings",
    "InstancesSettings",
    "RetrySettings",
    "SessionSettings",
    "Settings",
    "load_client_settings",
    "load_settings",
    "read_config_file",
]

DEFAULT_URL = "http://127.0.0.1:18790"
DEFAULT_PORT = 18790
DEFAULT_BASE_PORT = 18801
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


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

    _durations = field_validator("ttl", "retention", "sweep_interval", mode="before")(
        _duration_field
    )

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return _placement_policy(value)


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
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    log_level: str = "info"
    log_format: str = Field(default="json", pattern="^(json|console)$")

    _durations = field_validator(
        "timeout", "max_timeout", "heartbeat_ttl", "idempotency_ttl", mode="before"
    )(_duration_field)

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


def _describe(exc: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid configuration"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
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
        return Settings.model_validate(_deep_merge(_deep_merge(file_values, from_env), explicit))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from exc
    except InvalidRequestError as exc:
        raise ConfigError(f"{origin}: {exc.message}") from exc


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
    file (a server config works: its host and port give the URL)."""
    values: dict[str, Any] = {}
    if config:
        data = read_config_file(config)
        if "url" in data:
            values["url"] = data["url"]
        elif "port" in data:
            host = data.get("host", "127.0.0.1")
            host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
            values["url"] = f"http://{host}:{data['port']}"
        if data.get("api_key"):
            values["api_key"] = data["api_key"]
    env = ClientSettings()
    fields_set = env.model_fields_set
    merged = {**values, **{k: getattr(env, k) for k in fields_set}}
    if url:
        merged["url"] = url
    if api_key:
        merged["api_key"] = api_key
    return ClientSettings.model_validate(merged)
