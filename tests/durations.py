"""Longest files first: the order the suite's test files are handed to xdist's workers.

``--dist loadfile`` keeps a file's tests on one worker (its module fixtures start once) and,
left to itself, hands files out by their test count. Here the slowest files hold few tests
(real OpenClaw gateways, replica clusters, the schema fuzz), so they went last and the suite
ended with one worker busy for minutes while the others idled. :func:`longest_first`
reorders the collected items so that files come in order of the seconds they took in a
recorded run (``tests/durations.json``), longest first, keeping each file's own order; with
``--no-loadscope-reorder`` xdist hands them out in that order, which keeps the workers' ends
close (longest-processing-time-first scheduling). A file missing from the record is
estimated at :data:`UNKNOWN_TEST_SECONDS` per test.

Refresh the record after a full run with ``--junitxml``::

    .venv/bin/pytest --junitxml=/tmp/junit.xml
    .venv/bin/python -m tests.durations /tmp/junit.xml
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Protocol, TypeVar

RECORD = Path(__file__).with_name("durations.json")
UNKNOWN_TEST_SECONDS = 0.5
"""The estimate per test of a file the record does not know (most tests take less)."""


class Item(Protocol):
    """What :func:`longest_first` needs of a pytest item."""

    @property
    def nodeid(self) -> str: ...


ItemT = TypeVar("ItemT", bound=Item)


def file_of(nodeid: str) -> str:
    """The test file a node id belongs to (the scope ``--dist loadfile`` keeps together)."""
    return nodeid.split("::", 1)[0]


def read_record(path: Path = RECORD) -> dict[str, float]:
    """Seconds per test file from the record; empty when there is none or it is unreadable
    (the order then falls back to the estimate)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}


def longest_first(items: list[ItemT], record: dict[str, float]) -> list[ItemT]:
    """``items`` grouped by file, the files in order of their recorded (or estimated)
    seconds, longest first; ties and each file's tests keep the collected order."""
    counts: dict[str, int] = defaultdict(int)
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        name = file_of(item.nodeid)
        counts[name] += 1
        first_seen.setdefault(name, index)

    def cost(name: str) -> float:
        return record.get(name, UNKNOWN_TEST_SECONDS * counts[name])

    return sorted(
        items, key=lambda item: (-cost(file_of(item.nodeid)), first_seen[file_of(item.nodeid)])
    )


def seconds_per_file(junit_xml: Path) -> dict[str, float]:
    """Seconds per test file (setup, call and teardown of all its tests) in a junit report
    written by ``pytest --junitxml`` from the repository's root."""
    totals: dict[str, float] = defaultdict(float)
    root = ET.parse(junit_xml).getroot()  # noqa: S314 - our own pytest report, not untrusted
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        parts = classname.split(".")
        # "tests.api.test_x" or "tests.api.test_x.TestClass": the module is the test_ part
        while parts and not parts[-1].startswith("test"):
            parts.pop()
        if not parts:
            continue
        totals["/".join(parts) + ".py"] += float(case.get("time", 0.0))
    return {name: round(seconds, 1) for name, seconds in sorted(totals.items())}


def main(argv: list[str]) -> int:
    """Write the record from the junit report named on the command line."""
    if len(argv) != 1:
        print("usage: python -m tests.durations JUNIT_XML", file=sys.stderr)
        return 2
    per_file = seconds_per_file(Path(argv[0]))
    RECORD.write_text(json.dumps(per_file, indent=1) + "\n")
    total = sum(per_file.values())
    print(f"{len(per_file)} files, {total:.0f} s in all, written to {RECORD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
