"""Schemathesis against the live OpenAPI schema of a real orchestrator: no 5xx, and every
response as the schema documents it (status code, content type, headers, body).

The orchestrator runs on a real socket with eight reference instances behind it and a
SQLite store; schemathesis (its CLI, as a user would run it) reads ``/openapi.json`` from it
and sends a few thousand generated requests — valid and invalid, plus stateful sequences
(spawn, then send, read, close). Registration and instance removal are left out: generated
URLs would point the orchestrator at arbitrary hosts, and removing A–H would leave nothing to
fuzz. The seed is fixed, so a failure reproduces.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from .conftest import start_cluster

CHECKS = (
    "no_server_error",  # not_a_server_error, but for a deadline the request made too short
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "ignored_auth",
    "unsupported_method",
    "missing_required_header",
)
EXCLUDED = ("/api/cluster/register", "/api/cluster/instances/{name}")
EXAMPLES_PER_OPERATION = {True: 60, False: 30}
"""With the fast paths (what production serves) and without them (the framework's side of
every hot endpoint; the other endpoints are the same code either way, fuzzed in full with
the fast paths): half as many examples on the side that is mostly a repeat."""
SEED = 20261124
PROJECT = Path(__file__).parents[2]
HOOKS = {"SCHEMATHESIS_HOOKS": "tests.api.schemathesis_checks", "PYTHONPATH": str(PROJECT)}


@pytest.mark.timeout(180)  # 21 operations x 60 examples: ~35 s alone, more beside the suite
async def test_fuzzing_the_live_schema_finds_no_5xx_and_no_schema_violation(
    tmp_path: Path, fast_paths: bool
) -> None:
    """A few thousand generated requests: zero 5xx, zero responses the schema does not
    describe, auth enforced everywhere it is declared."""
    async with start_cluster() as c:
        command = [
            sys.executable, "-m", "schemathesis.cli", "run", f"{c.url}/openapi.json",
            "--header", f"Authorization: Bearer {c.api_key}",
            "--checks", ",".join(CHECKS),
            *(arg for path in EXCLUDED for arg in ("--exclude-path", path)),
            "--max-examples", str(EXAMPLES_PER_OPERATION[fast_paths]),
            "--seed", str(SEED),
            "--generation-database", "none",
            "--no-color",
            "--report", "json",
            "--report-json-path", str(tmp_path / "report.json"),
        ]  # fmt: skip
        run = await asyncio.create_subprocess_exec(
            *command,
            cwd=tmp_path,  # schemathesis writes nothing into the project
            env={**os.environ, **HOOKS},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = (await run.communicate())[0].decode(errors="replace")
    report = json.loads((tmp_path / "report.json").read_text())
    summary = output[output.find("=== FAILURES") :] or output[-3000:]
    assert run.returncode == 0, summary
    assert report["failures"] == [], summary
    assert report["errors"] == [], summary
    assert report["operations"]["tested"] == report["operations"]["selected"] == 21
    assert 600 <= report["test_cases"]["generated"] <= 5000
