"""The API key ``up`` keeps in its data folder, so every run (and every shell) uses one key.

``up`` without ``ORCHESTRATOR_API_KEY`` needs a key, and a new one per run would break the
``export ORCHESTRATOR_API_KEY=...`` a user did in another shell. So the first run generates
one and keeps it in ``<data_dir>/api-key`` (one line, owner-only: mode 0600); later runs read
it back. ``make run`` uses the checkout's ``.data/`` folder (git-ignored), so each checkout
has its own key and database; ``export ORCHESTRATOR_API_KEY=$(cat .data/api-key)`` works in
any shell.

The file appears complete or not at all: the key is written to a private temporary file that
is then hard-linked into place, which fails if the name exists. Two runs starting at once
therefore agree on one key, and a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

from pydantic import SecretStr

from ..settings import ConfigError

__all__ = ["KEY_FILE", "KEY_FILE_MODE", "kept_api_key"]

KEY_FILE = "api-key"
KEY_FILE_MODE = 0o600
_KEY_BYTES = 24  # 32 URL-safe characters


def kept_api_key(data_dir: Path) -> tuple[SecretStr, bool]:
    """The key kept in ``data_dir`` and whether this call generated it (first run).

    Raises :class:`ConfigError` for a key file that cannot be read or is not one word on one
    line (delete it to get a new key; never a silent new key, which would break every copy
    exported in other shells). A key file others may read is made owner-only again.
    """
    path = data_dir / KEY_FILE
    if path.exists():
        return _read(path), False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(_KEY_BYTES)
    fd, temporary = tempfile.mkstemp(dir=data_dir, prefix=f".{KEY_FILE}-")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:  # another run kept its key first: use that one
            return _read(path), False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return SecretStr(key), True


def _read(path: Path) -> SecretStr:
    """The key in ``path``; the file's mode tightened to 0600 if it was looser."""
    try:
        if stat.S_IMODE(path.stat().st_mode) & ~KEY_FILE_MODE:
            path.chmod(KEY_FILE_MODE)
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the API key: {exc}") from exc
    if not key or not key.isprintable() or any(c.isspace() for c in key):
        raise ConfigError(f"{path}: not one API key on one line; delete it for a new key")
    return SecretStr(key)
