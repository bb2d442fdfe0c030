"""Gateway set-up without starting Node: the config written, names, clashes, secrets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from openclaw_orchestrator.devtools.openclaw.fleet import gateway_names, local_fleet
from openclaw_orchestrator.devtools.openclaw.gateway import Gateway, gateway_config


def test_gateway_config_is_local_with_chat_completions_and_no_outbound_extras() -> None:
    """The config enables /v1/chat/completions, points agents at the model, fetches nothing."""
    config = gateway_config(
        model_url="http://127.0.0.1:9/", log_file=Path("/x/openclaw.log"), tools_allow=["cron"]
    )
    gateway = config["gateway"]
    assert gateway["mode"] == "local"
    assert gateway["http"]["endpoints"]["chatCompletions"]["enabled"] is True
    assert gateway["tools"] == {"allow": ["cron"]}
    assert config["models"]["providers"]["vllm"]["baseUrl"] == "http://127.0.0.1:9/v1"
    assert config["models"]["catalogRefresh"] == {"enabled": False}
    assert config["agents"]["defaults"]["model"]["primary"] == "vllm/stub-1"
    assert config["update"] == {"checkOnStart": False}
    assert config["logging"] == {"file": "/x/openclaw.log"}
    assert "tools" not in gateway_config(model_url="http://127.0.0.1:9")["gateway"]


def test_a_gateway_spec_carries_the_token_and_its_repr_does_not(tmp_path: Path) -> None:
    """The instance entry has driver openclaw and the token; no repr shows the token."""
    process = subprocess.Popen(["true"])
    process.wait()
    gateway = Gateway("O1", "127.0.0.1", 18901, tmp_path, process, SecretStr("t0ken-xyz"))
    spec = gateway.spec(weight=2.0)
    assert (spec.name, spec.url, spec.driver, spec.weight, spec.tags) == (
        "O1",
        "http://127.0.0.1:18901",
        "openclaw",
        2.0,
        ["openclaw"],
    )
    assert spec.credentials is not None
    assert spec.credentials.get_secret_value() == "t0ken-xyz"
    assert "t0ken-xyz" not in repr(gateway) + repr(spec)
    assert not gateway.is_running()
    assert gateway.log_tail() == ""
    gateway.stop()  # already gone: nothing to signal


def test_up_names_gateways_o1_to_on_and_refuses_clashes() -> None:
    """``up --openclaw N`` adds O1..ON; a name already taken stops it before anything runs."""
    assert gateway_names(3) == ["O1", "O2", "O3"]
    with pytest.raises(ValueError, match="O2"), local_fleet(3, base_port=1, taken=["A", "O2"]):
        pass
    with pytest.raises(ValueError, match="at least one"), local_fleet(0, base_port=1, taken=[]):
        pass
