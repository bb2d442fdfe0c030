"""Configuration: one file (JSON, TOML or YAML) under ORCHESTRATOR_* variables under flags.

Pure tests of ``load_settings``, ``load_client_settings`` and ``read_config_file`` on real files
in ``tmp_path``; the environment is emptied of ORCHESTRATOR_* variables first and changed
only through ``monkeypatch``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from openclaw_orchestrator.errors import OrchestratorError
from openclaw_orchestrator.settings import (
    ConfigError,
    Settings,
    load_client_settings,
    load_settings,
    read_config_file,
)

CONFIG: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 18999,
    "api_key": "file-key-abc",
    "policy": "least_outstanding",
    "timeout": "10s",
    "instances": [
        {"name": "A", "url": "http://127.0.0.1:18801", "tags": ["gpu"], "weight": 2},
        {"name": "B", "url": "http://127.0.0.1:18802/", "credentials": "b-token-xyz"},
    ],
    "health": {"interval": "5s", "probe_timeout": 2},
    "retry": {"max_retries": 5, "backoff_base": "100ms"},
}
TOML = """\
host = "127.0.0.1"
port = 18999
api_key = "file-key-abc"
policy = "least_outstanding"
timeout = "10s"

[[instances]]
name = "A"
url = "http://127.0.0.1:18801"
tags = ["gpu"]
weight = 2

[[instances]]
name = "B"
url = "http://127.0.0.1:18802/"
credentials = "b-token-xyz"

[health]
interval = "5s"
probe_timeout = 2

[retry]
max_retries = 5
backoff_base = "100ms"
"""
YAML = """\
host: 127.0.0.1
port: 18999
api_key: file-key-abc
policy: least_outstanding
timeout: 10s
instances:
  - {name: A, url: "http://127.0.0.1:18801", tags: [gpu], weight: 2}
  - name: B
    url: http://127.0.0.1:18802/
    credentials: b-token-xyz
health:
  interval: 5s
  probe_timeout: 2
retry:
  max_retries: 5
  backoff_base: 100ms
"""
TEXTS = {".json": json.dumps(CONFIG), ".toml": TOML, ".yaml": YAML, ".yml": YAML}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ORCHESTRATOR_* variable from the outside leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("ORCHESTRATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    """``text`` as file ``name`` in ``tmp_path``."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_file(tmp_path: Path, suffix: str = ".json", **changes: Any) -> Path:
    """:data:`CONFIG` (with ``changes``) as a JSON file."""
    return write(tmp_path, f"config{suffix}", json.dumps({**CONFIG, **changes}))


# -- one file, three formats ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", sorted(TEXTS))
def test_every_format_loads_the_documented_settings(tmp_path: Path, suffix: str) -> None:
    """JSON, TOML and YAML files give instances, policy, timeouts, retries and health interval."""
    settings = load_settings(write(tmp_path, f"orchestrator{suffix}", TEXTS[suffix]))
    assert (settings.host, settings.port, settings.policy) == (
        "127.0.0.1", 18999, "least_outstanding"
    )  # fmt: skip
    assert settings.timeout == 10.0
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "file-key-abc"
    assert [(i.name, i.url, i.tags, i.weight) for i in settings.instances.static] == [
        ("A", "http://127.0.0.1:18801", ["gpu"], 2.0),
        ("B", "http://127.0.0.1:18802", [], 1.0),
    ]
    credentials = settings.instances.static[1].credentials
    assert credentials is not None
    assert credentials.get_secret_value() == "b-token-xyz"
    assert (settings.health.interval, settings.health.probe_timeout) == (5.0, 2.0)
    assert (settings.retry.max_retries, settings.retry.backoff_base) == (5, 0.1)
    assert settings.url == "http://127.0.0.1:18999"


def test_the_three_formats_are_equivalent(tmp_path: Path) -> None:
    """The same configuration in JSON, TOML and YAML reads as the same dict and Settings."""
    paths = [write(tmp_path, f"c{suffix}", TEXTS[suffix]) for suffix in (".json", ".toml", ".yaml")]
    raw = [read_config_file(p) for p in paths]
    assert raw[0] == raw[1] == raw[2] == CONFIG
    loaded = [load_settings(p) for p in paths]
    assert loaded[0] == loaded[1] == loaded[2]


def test_no_file_means_defaults(tmp_path: Path) -> None:
    """Without a file or environment the documented defaults apply; an empty file is fine."""
    for settings in (load_settings(), load_settings(write(tmp_path, "empty.yaml", ""))):
        assert (settings.host, settings.port, settings.policy) == (
            "127.0.0.1",
            18790,
            "round_robin",
        )
        assert settings.api_key is None
        assert settings.instances.static == []
        assert settings.timeout == 30.0
        assert settings.health.interval == 60.0
        assert settings.retry.max_retries == 3


# -- precedence ----------------------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCHESTRATOR_PORT, ORCHESTRATOR_HEALTH__INTERVAL, ORCHESTRATOR_INSTANCES (JSON) win."""
    monkeypatch.setenv("ORCHESTRATOR_PORT", "19001")
    monkeypatch.setenv("ORCHESTRATOR_HEALTH__INTERVAL", "7")
    monkeypatch.setenv(
        "ORCHESTRATOR_INSTANCES",
        json.dumps([{"name": "Q", "url": "http://127.0.0.1:19101", "tags": ["env"]}]),
    )
    monkeypatch.setenv("ORCHESTRATOR_POLICY", "weighted_random")
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", "env-key-123")
    settings = load_settings(config_file(tmp_path))
    assert settings.port == 19001
    assert settings.health.interval == 7.0
    assert [(i.name, i.tags) for i in settings.instances.static] == [("Q", ["env"])]
    assert settings.policy == "weighted_random"
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "env-key-123"
    assert settings.timeout == 10.0  # not in the environment: the file's value stays


def test_explicit_overrides_beat_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags (keyword overrides) beat env and file; overrides left at None change nothing."""
    monkeypatch.setenv("ORCHESTRATOR_PORT", "19001")
    monkeypatch.setenv("ORCHESTRATOR_HOST", "127.0.0.2")
    settings = load_settings(config_file(tmp_path), port=19002, host=None, log_level="debug")
    assert settings.port == 19002
    assert settings.host == "127.0.0.2"
    assert settings.log_level == "debug"


def test_nested_env_override_keeps_the_rest_of_the_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCHESTRATOR_HEALTH__INTERVAL changes health.interval only; the rest of health stays."""
    monkeypatch.setenv("ORCHESTRATOR_HEALTH__INTERVAL", "7")
    monkeypatch.setenv("ORCHESTRATOR_RETRY__MAX_RETRIES", "1")
    settings = load_settings(config_file(tmp_path))
    assert settings.health.interval == 7.0
    assert settings.retry.max_retries == 1
    assert settings.health.probe_timeout == 2.0  # from the file
    assert settings.retry.backoff_base == 0.1  # from the file


def test_bad_environment_value_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ORCHESTRATOR_* value that does not validate raises ConfigError naming the field."""
    monkeypatch.setenv("ORCHESTRATOR_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="port"):
        load_settings(config_file(tmp_path))
    monkeypatch.setenv("ORCHESTRATOR_PORT", "18790")
    monkeypatch.setenv("ORCHESTRATOR_POLICY", "random_walk")
    with pytest.raises(ConfigError, match="policy"):
        load_settings()


def test_env_value_that_is_not_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCHESTRATOR_INSTANCES that is not JSON raises ConfigError naming the field."""
    monkeypatch.setenv("ORCHESTRATOR_INSTANCES", "[{not json")
    with pytest.raises(ConfigError, match="instances"):
        load_settings()


# -- bad files -----------------------------------------------------------------------------------

BAD_FILES: list[tuple[str, str, list[str]]] = [
    ("syntax.json", '{"port": ', ["not valid JSON"]),
    ("syntax.toml", "port = ", ["not valid TOML"]),
    ("syntax.yaml", "port: [1,", ["not valid YAML"]),
    ("unknown.json", json.dumps({"prot": 18790}), ["prot", "Extra inputs"]),
    ("nested.yaml", "health:\n  intervall: 5\n", ["health.intervall"]),
    (
        "url.json",
        json.dumps({"instances": [{"name": "A", "url": "ftp://127.0.0.1"}]}),
        ["instances.0.url", "http://"],
    ),
    (
        "dupes.toml",
        '[[instances]]\nname = "A"\nurl = "http://a:1"\n[[instances]]\nname = "A"\nurl = "http://b:1"\n',
        ["instances", "'A' appears twice"],
    ),
    ("policy.yaml", "policy: random_walk\n", ["policy", "random_walk", "round_robin"]),
    ("duration.json", json.dumps({"timeout": "10 parsecs"}), ["timeout", "10 parsecs"]),
    ("hduration.json", json.dumps({"health": {"interval": "10 parsecs"}}), ["interval"]),
    ("name.json", json.dumps({"instances": [{"name": "A-B", "url": "http://a:1"}]}), ["name"]),
    ("port.json", json.dumps({"port": 70000}), ["port"]),
    ("list.json", "[1, 2]", ["top level must be an object"]),
    ("config.ini", "port=1", ["unknown config format"]),
]


@pytest.mark.parametrize(
    ("name", "text", "fragments"), BAD_FILES, ids=[case[0] for case in BAD_FILES]
)
def test_bad_file_names_the_file_and_the_field(
    tmp_path: Path, name: str, text: str, fragments: list[str]
) -> None:
    """Syntax errors, unknown fields, bad URLs, duplicate names, unknown policies and bad
    durations raise ConfigError naming the file and what is wrong."""
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist: ConfigError naming it, for servers and clients."""
    path = tmp_path / "nope.json"
    for load in (load_settings, load_client_settings):
        with pytest.raises(ConfigError, match="cannot read") as caught:
            load(path)
        assert str(path) in str(caught.value)


def test_config_error_is_a_value_error_not_an_orchestrator_error(tmp_path: Path) -> None:
    """ConfigError is a ValueError (a local problem), never one of the wire errors."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "bad.json", "{"))
    assert isinstance(caught.value, ValueError)
    assert not isinstance(caught.value, OrchestratorError)


def test_every_offending_field_is_named(tmp_path: Path) -> None:
    """A file with a bad duration and an unknown field reports both (load_settings docstring)."""
    path = write(tmp_path, "two.json", json.dumps({"timeout": "10 parsecs", "prot": 1}))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "timeout" in str(caught.value)
    assert "prot" in str(caught.value)


# -- secrets -------------------------------------------------------------------------------------


def test_secrets_never_show_in_reprs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API key and instance credentials are SecretStr: masked in repr, str and dumps."""
    settings = load_settings(config_file(tmp_path))
    assert isinstance(settings.api_key, SecretStr)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "file-key-abc" not in text
        assert "b-token-xyz" not in text
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", "env-secret-789")
    client = load_client_settings()
    assert "env-secret-789" not in repr(client)
    assert client.api_key is not None
    assert client.api_key.get_secret_value() == "env-secret-789"


def test_settings_built_directly_mask_the_key() -> None:
    """Settings(api_key=...) as tests build it keeps the key out of its repr too."""
    settings = Settings(api_key=SecretStr("direct-key-000"))
    assert "direct-key-000" not in repr(settings)


# -- client settings -----------------------------------------------------------------------------


def test_client_settings_defaults() -> None:
    """No flag, env or file: the documented default URL and no key."""
    client = load_client_settings()
    assert client.url == "http://127.0.0.1:18790"
    assert client.api_key is None


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
def test_client_settings_from_a_client_file(tmp_path: Path, suffix: str) -> None:
    """url and api_key come from a client config file in any of the three formats."""
    texts = {
        ".json": json.dumps({"url": "http://10.0.0.5:1234", "api_key": "ck"}),
        ".toml": 'url = "http://10.0.0.5:1234"\napi_key = "ck"\n',
        ".yaml": "url: http://10.0.0.5:1234\napi_key: ck\n",
    }
    client = load_client_settings(write(tmp_path, f"client{suffix}", texts[suffix]))
    assert client.url == "http://10.0.0.5:1234"
    assert client.api_key is not None
    assert client.api_key.get_secret_value() == "ck"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:18999"),  # noqa: S104  # a config value; nothing binds
        ("127.0.0.1", "http://127.0.0.1:18999"),
        ("10.1.2.3", "http://10.1.2.3:18999"),
    ],
)
def test_client_settings_from_a_server_file(tmp_path: Path, host: str, url: str) -> None:
    """A server config's host/port give the URL (a wildcard bind means this machine)."""
    client = load_client_settings(config_file(tmp_path, host=host))
    assert client.url == url
    assert client.api_key is not None
    assert client.api_key.get_secret_value() == "file-key-abc"


def test_client_precedence_flag_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags beat ORCHESTRATOR_URL/ORCHESTRATOR_API_KEY, which beat the config file."""
    path = write(tmp_path, "c.json", json.dumps({"url": "http://file:1", "api_key": "file"}))
    assert load_client_settings(path).url == "http://file:1"
    monkeypatch.setenv("ORCHESTRATOR_URL", "http://env:2")
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", "env")
    from_env = load_client_settings(path)
    assert from_env.url == "http://env:2"
    assert from_env.api_key is not None
    assert from_env.api_key.get_secret_value() == "env"
    flags = load_client_settings(path, url="http://flag:3", api_key="flag")
    assert flags.url == "http://flag:3"
    assert flags.api_key is not None
    assert flags.api_key.get_secret_value() == "flag"


def test_client_settings_ignore_server_only_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCHESTRATOR_PORT and friends (server settings) do not break the client's settings."""
    monkeypatch.setenv("ORCHESTRATOR_PORT", "1")
    monkeypatch.setenv("ORCHESTRATOR_HEALTH__INTERVAL", "3")
    assert load_client_settings().url == "http://127.0.0.1:18790"


def test_read_config_file_parses_by_extension(tmp_path: Path) -> None:
    """read_config_file: .json/.toml/.yaml/.yml by extension; an empty YAML file is {}."""
    assert read_config_file(write(tmp_path, "a.yml", YAML)) == CONFIG
    assert read_config_file(write(tmp_path, "b.yaml", "# nothing\n")) == {}
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_config_file(write(tmp_path, "c.json", YAML))  # YAML text in a .json file
