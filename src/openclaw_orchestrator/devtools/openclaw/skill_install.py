"""Install the orchestrator skill and MCP server into an OpenClaw gateway.

Two things make a gateway's agents able to delegate through the orchestrator:

- the skill: ``skills/orchestrator/SKILL.md`` (as the package ships it, read through
  :mod:`openclaw_orchestrator.skills`) copied into ``<workspace>/skills/orchestrator/``,
  where OpenClaw looks for workspace skills (``docs/tools/creating-skills.md``); and
- the tools: ``mcp.servers.orchestrator`` in the gateway's ``openclaw.json``
  (``docs/tools/mcp.md``), streamable HTTP at the orchestrator's ``/mcp``, with two
  static headers::

      Authorization: Bearer ${ORCHESTRATOR_API_KEY}
      X-Orchestrator-Caller: <the gateway's instance name>

The key is never written: OpenClaw substitutes ``${VAR}`` in any config string from the
gateway's environment (``docs/gateway/config-secrets-env.md``; MCP headers are not on the
SecretRef surface, so an env reference is the documented way to keep them out of config
literals). The gateway process must have that variable set; ``up --openclaw`` passes it
to the gateways it starts. The caller header names the gateway, so the orchestrator can tie
a tool call to the deliveries in flight to that gateway (its loop guard).

Installing is idempotent (a second run changes nothing and says so), edits the config in
place keeping comments and layout (:mod:`.json5_config`), keeps every other key and the
file's permissions, and writes each file atomically (a temporary file renamed over it).
OpenClaw's default reload mode (``hybrid``) applies ``mcp.*`` changes live and watches
``SKILL.md`` files, so a running gateway needs no restart unless ``gateway.reload.mode`` is
``off`` or its environment lacks the key variable.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...settings import ConfigError
from ...skills import SKILL_FILE, load_skill, skill_dir
from .json5_config import Json5Error, loads, set_value

__all__ = [
    "CALLER_HEADER",
    "CONFIG_FILE",
    "DEFAULT_KEY_ENV",
    "SERVER_NAME",
    "FileChange",
    "InstallReport",
    "SkillInstallError",
    "install_skill",
    "install_workspace_skill",
    "server_entry",
    "workspace_of",
]

SKILL_ID = "orchestrator"
SERVER_NAME = "orchestrator"
"""The ``mcp.servers`` key; the gateway's agents see ``orchestrator__route``, …"""
CALLER_HEADER = "X-Orchestrator-Caller"
DEFAULT_KEY_ENV = "ORCHESTRATOR_API_KEY"
CONFIG_FILE = "openclaw.json"
DEFAULT_REQUEST_TIMEOUT_MS = 60_000
"""A route or a session send may wait on its instance (30 s by default) before answering."""
NEW_FILE_MODE = 0o644
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")  # the names OpenClaw substitutes
_SERVER_PATH = ("mcp", "servers", SERVER_NAME)


class SkillInstallError(ConfigError):
    """The install cannot be done as asked (the message says which file or option, and why)."""


@dataclass(frozen=True, slots=True)
class FileChange:
    """One file the install writes: its text before (None: new) and after."""

    path: Path
    before: str | None
    after: str

    @property
    def is_changed(self) -> bool:
        """Whether writing it changes anything."""
        return self.before != self.after

    def diff(self) -> str:
        """A unified diff of the change (empty when unchanged)."""
        if not self.is_changed:
            return ""
        before = (self.before or "").splitlines(keepends=True)
        after = self.after.splitlines(keepends=True)
        old = str(self.path) if self.before is not None else "/dev/null"
        lines = difflib.unified_diff(before, after, old, str(self.path))
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


@dataclass(frozen=True, slots=True)
class InstallReport:
    """What an install did (or, with ``dry_run``, would do) and what is left to the operator."""

    skill_dir: Path
    config_path: Path | None
    files: tuple[FileChange, ...]
    dry_run: bool
    notes: tuple[str, ...] = ()

    @property
    def is_changed(self) -> bool:
        """Whether any file was (or would be) written."""
        return any(change.is_changed for change in self.files)

    @property
    def changed_paths(self) -> list[Path]:
        """The files that were (or would be) written."""
        return [change.path for change in self.files if change.is_changed]

    def diff(self) -> str:
        """Every change as one unified diff."""
        return "".join(change.diff() for change in self.files)


def server_entry(mcp_url: str, *, caller: str, key_env: str = DEFAULT_KEY_ENV) -> dict[str, Any]:
    """The ``mcp.servers.orchestrator`` entry: streamable HTTP at ``mcp_url``, the key as a
    ``${key_env}`` reference, the caller header; ValueError naming a bad argument."""
    parts = urlsplit(mcp_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"mcp_url: not an http(s) URL: {mcp_url!r}")
    if parts.username or parts.password:
        raise ValueError("mcp_url: credentials do not belong in the URL")
    if not caller or caller != caller.strip() or any(c in caller for c in "\r\n\0"):
        raise ValueError(f"caller: not a header value: {caller!r}")
    if not _ENV_NAME.match(key_env):
        raise ValueError(f"key_env: OpenClaw substitutes only [A-Z_][A-Z0-9_]* names: {key_env!r}")
    return {
        "url": mcp_url,
        "transport": "streamable-http",
        "requestTimeoutMs": DEFAULT_REQUEST_TIMEOUT_MS,
        "headers": {"Authorization": f"Bearer ${{{key_env}}}", CALLER_HEADER: caller},
    }


def workspace_of(config: Mapping[str, Any], state_dir: Path) -> Path:
    """The default agent's workspace: ``agents.entries.main.workspace``, else
    ``agents.defaults.workspace``, else ``<state_dir>/workspace`` (OpenClaw's default for a
    state folder of its own, ``docs/concepts/agent-workspace.md``)."""
    agents = _mapping(config.get("agents"))
    main = _mapping(_mapping(agents.get("entries")).get("main")).get("workspace")
    chosen = main or _mapping(agents.get("defaults")).get("workspace")
    if not isinstance(chosen, str) or not chosen.strip():
        return state_dir / "workspace"
    path = Path(chosen).expanduser()
    return path if path.is_absolute() else state_dir / path


def install_workspace_skill(workspace: Path, *, dry_run: bool = False) -> InstallReport:
    """Only the skill, into ``<workspace>/skills/orchestrator/`` (no config touched)."""
    files = _skill_changes(workspace)
    if not dry_run:
        _write(files)
    note = "new agent sessions pick the skill up (OpenClaw watches SKILL.md files)"
    return InstallReport(files[0].path.parent, None, tuple(files), dry_run, (note,))


def install_skill(
    state_dir: Path,
    *,
    mcp_url: str,
    caller: str,
    workspace: Path | None = None,
    key_env: str = DEFAULT_KEY_ENV,
    config_path: Path | None = None,
    dry_run: bool = False,
) -> InstallReport:
    """The skill into the gateway's workspace and the MCP server into its config.

    ``state_dir`` is the gateway's state folder (``OPENCLAW_STATE_DIR``); its config is
    ``<state_dir>/openclaw.json`` unless ``config_path`` (``OPENCLAW_CONFIG_PATH``) says
    otherwise, and must exist. ``workspace`` overrides the one the config names. Raises
    :class:`SkillInstallError` (a :class:`ConfigError`) for a config it cannot edit."""
    try:
        entry = server_entry(mcp_url, caller=caller, key_env=key_env)
    except ValueError as exc:
        raise SkillInstallError(str(exc)) from exc
    path = _config_path(state_dir, config_path)
    before = _read(path)
    try:
        config = loads(before) if before.strip() else {}
        if not isinstance(config, dict):
            raise Json5Error("the config is not an object")
        after = _merge_server(before, config, entry)
    except Json5Error as exc:
        raise SkillInstallError(f"{path}: {exc}") from exc
    target = workspace if workspace is not None else workspace_of(config, state_dir)
    files = [*_skill_changes(target), FileChange(path, before, after)]
    if not dry_run:
        _write(files)
    notes = _notes(config, state_dir, key_env)
    return InstallReport(files[0].path.parent, path, tuple(files), dry_run, notes)


# -- the config -------------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _config_path(state_dir: Path, config_path: Path | None) -> Path:
    """The config file (through symlinks, so the write replaces the real file)."""
    path = (config_path or state_dir / CONFIG_FILE).expanduser()
    if not path.is_file():
        raise SkillInstallError(
            f"no OpenClaw config at {path} (is {state_dir} a gateway's state folder? a config "
            "elsewhere: OPENCLAW_CONFIG_PATH, --config)"
        )
    return path.resolve()


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SkillInstallError(f"cannot read {path}: {exc}") from exc


def _check_includes(config: Mapping[str, Any]) -> None:
    """Refuse a config whose ``mcp`` section comes from ``$include`` (editing the including
    file would override, not update, the included one)."""
    node: Any = config
    for depth, key in enumerate(("", *_SERVER_PATH)):
        if key:
            node = _mapping(node).get(key)
        if isinstance(node, Mapping) and "$include" in node:
            where = ".".join(_SERVER_PATH[:depth]) or "the root"
            raise SkillInstallError(
                f"{where} of the config uses $include: add mcp.servers.{SERVER_NAME} there by hand"
            )


def _merge_server(text: str, config: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """``text`` with ``mcp.servers.orchestrator`` holding ``entry``'s values: a new entry
    whole; an existing one key by key (url, transport, the two headers), keeping the keys
    an operator added (a longer ``requestTimeoutMs``, a ``toolFilter``, more headers)."""
    _check_includes(config)
    current = _mapping(_mapping(config.get("mcp")).get("servers")).get(SERVER_NAME)
    if not isinstance(current, Mapping):
        return set_value(text, _SERVER_PATH, dict(entry))
    leaves: list[tuple[Sequence[str], Any]] = [
        (("url",), entry["url"]),
        (("transport",), entry["transport"]),
    ]
    if not isinstance(current.get("headers"), Mapping):
        leaves.append((("headers",), entry["headers"]))
    else:
        leaves += [(("headers", name), value) for name, value in entry["headers"].items()]
    if "requestTimeoutMs" not in current:
        leaves.append((("requestTimeoutMs",), entry["requestTimeoutMs"]))
    for leaf, value in leaves:
        text = set_value(text, (*_SERVER_PATH, *leaf), value)
    return text


def _notes(config: Mapping[str, Any], state_dir: Path, key_env: str) -> tuple[str, ...]:
    """What the operator must know: reload, the key variable, an OAuth override."""
    notes = []
    reload_mode = _mapping(_mapping(config.get("gateway")).get("reload")).get("mode")
    if reload_mode == "off":
        notes.append("gateway.reload.mode is off: restart the gateway to load the MCP server")
    else:
        notes.append(
            "a running gateway loads the MCP server live (config hot reload) and new agent "
            "sessions pick the skill up"
        )
    server = _mapping(_mapping(_mapping(config.get("mcp")).get("servers")).get(SERVER_NAME))
    if server.get("auth") == "oauth":
        notes.append(f"mcp.servers.{SERVER_NAME}.auth is oauth: OpenClaw ignores the key header")
    notes.append(_key_note(state_dir, key_env))
    return tuple(notes)


def _key_note(state_dir: Path, key_env: str) -> str:
    """Where the gateway gets ``key_env``: its running process, its ``.env``, or nowhere yet."""
    pids = _gateway_pids(state_dir)
    has_key = [pid for pid in pids if _has_env(pid, key_env)]
    if has_key:
        return f"the running gateway (pid {has_key[0]}) has {key_env} set"
    if _dotenv_has(state_dir / ".env", key_env):
        return f"{key_env} comes from {state_dir / '.env'} (read when the gateway starts)"
    where = f"the running gateway (pid {pids[0]}) lacks it" if pids else "no running gateway seen"
    return (
        f"the gateway needs {key_env} in its environment (or in {state_dir / '.env'}), then a "
        f"restart: {where}"
    )


def _gateway_pids(state_dir: Path) -> list[int]:
    """This user's processes running with ``OPENCLAW_STATE_DIR`` = ``state_dir``."""
    markers = {f"OPENCLAW_STATE_DIR={p}".encode() for p in (state_dir, state_dir.resolve())}
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if markers.intersection((proc / "environ").read_bytes().split(b"\0")):
                found.append(int(proc.name))
    return sorted(found)


def _has_env(pid: int, name: str) -> bool:
    """Whether process ``pid`` has ``name`` set to something (the value is not kept)."""
    prefix = f"{name}=".encode()
    with contextlib.suppress(OSError):
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if entry.startswith(prefix) and len(entry) > len(prefix):
                return True
    return False


def _dotenv_has(path: Path, name: str) -> bool:
    """Whether the dotenv file at ``path`` sets ``name``."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in path.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.strip().removeprefix("export ").partition("=")
            if sep and key.strip() == name and value.strip():
                return True
    return False


# -- the skill and the writes -----------------------------------------------------------------


def _skill_changes(workspace: Path) -> list[FileChange]:
    """Every file of the packaged skill against ``<workspace>/skills/orchestrator/``
    (SKILL.md first, as the loader reads it)."""
    target = workspace.expanduser() / "skills" / SKILL_ID
    texts = {SKILL_FILE: load_skill(SKILL_ID).text}
    for entry in skill_dir(SKILL_ID).iterdir():
        if entry.is_file() and entry.name not in texts:
            texts[entry.name] = entry.read_text(encoding="utf-8")
    changes = []
    for name, text in texts.items():
        path = target / name
        before = _read(path) if path.is_file() else None
        changes.append(FileChange(path, before, text))
    return changes


def _write(files: Sequence[FileChange]) -> None:
    """Write every changed file atomically, keeping an existing file's permissions."""
    for change in files:
        if change.is_changed:
            _write_atomic(change.path, change.after)


def _write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` via a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else NEW_FILE_MODE
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(scratch, mode)
        os.replace(scratch, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise
