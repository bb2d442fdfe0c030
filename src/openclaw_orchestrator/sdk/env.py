"""The client's two environment variables, read without pydantic (the CLI's fast path).

:func:`~.settings.load_client_settings` stays the authority on client settings; this is its
light twin for the common case only, so ``openclaw orchestrator health`` need not import
pydantic-settings (≈ 200 ms with the wire models). :func:`client_env` answers only when the
answer is certain — each variable set at most once (in any letter case, as pydantic-settings
matches them) and never to an empty string — and returns None otherwise, so the caller falls
back to :func:`~.settings.load_client_settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["DEFAULT_URL", "client_env", "resolve_client"]

DEFAULT_URL = "http://127.0.0.1:18790"
"""Same as :data:`~.settings.DEFAULT_URL` (a test keeps the two equal)."""
_NAMES = ("orchestrator_url", "orchestrator_api_key")


def client_env(
    url: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, str | None] | None:
    """``(url, api_key)`` as :func:`~.settings.load_client_settings` would resolve them with
    no config file, or None when only the full settings can tell (an ambiguous or empty
    variable)."""
    env = os.environ if environ is None else environ
    found: dict[str, str] = {}
    for key, value in env.items():
        lowered = key.lower()
        if lowered in _NAMES:
            if lowered in found or not value:
                return None
            found[lowered] = value
    resolved = url or found.get("orchestrator_url", DEFAULT_URL)
    return resolved, found.get("orchestrator_api_key")


def resolve_client(
    config: Path | None, url: str | None, api_key: str | None
) -> tuple[str, str | None]:
    """``(url, api_key)`` of a client: the light reader when it is sure, else the full
    :func:`~.settings.load_client_settings` (a config file, an ambiguous variable)."""
    light = None if config else client_env(url)
    if light is not None:
        return light[0], api_key or light[1]
    from ..settings import load_client_settings

    settings = load_client_settings(config, url=url, api_key=api_key)
    key = settings.api_key
    return settings.url, None if key is None else key.get_secret_value()
