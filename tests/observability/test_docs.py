"""docs/observability.md's configuration examples are valid settings as pasted."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import SecretStr

from openclaw_orchestrator.settings import Settings

DOC = Path(__file__).parents[2] / "docs" / "observability.md"


def test_json_examples_are_valid_settings() -> None:
    """Every ```json block of the page that configures metrics or tracing validates."""
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    configs = [json.loads(b) for b in blocks if b.lstrip().startswith('{"metrics"')]
    configs += [json.loads(b) for b in blocks if b.lstrip().startswith('{"tracing"')]
    assert len(configs) == 2
    for config in configs:
        settings = Settings(**config)
        for section, values in config.items():
            for key, given in values.items():
                got = getattr(getattr(settings, section), key)
                if isinstance(got, SecretStr):
                    got = got.get_secret_value()
                assert got == given, f"{section}.{key}"
