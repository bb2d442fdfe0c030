"""A custom reducer, registered by name in a test's configuration."""

from __future__ import annotations

from typing import Any


def count_ok(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """How many targets succeeded, and which."""
    ok = [e["instance"] for e in entries if e["status"] == "ok"]
    return {"ok": len(ok), "instances": ok}
