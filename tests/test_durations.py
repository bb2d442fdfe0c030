"""The suite's own scheduling order (:mod:`tests.durations`): longest files first, each
file's tests together and in their own order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .durations import longest_first, seconds_per_file


@dataclass(frozen=True)
class Node:
    nodeid: str


def test_files_go_longest_first_and_keep_their_order() -> None:
    items = [Node(n) for n in ("a.py::t1", "b.py::t1", "a.py::t2", "c.py::t1", "b.py::t2")]
    ordered = longest_first(items, {"b.py": 30.0, "a.py": 2.0})
    # c.py is unknown: one test at the estimate (0.5 s) after a.py's 2 s
    assert [n.nodeid for n in ordered] == [
        "b.py::t1",
        "b.py::t2",
        "a.py::t1",
        "a.py::t2",
        "c.py::t1",
    ]


def test_junit_times_add_up_per_file(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.api.test_x" name="a" time="1.25"/>'
        '<testcase classname="tests.api.test_x.TestGroup" name="b" time="2.0"/>'
        '<testcase classname="tests.test_y" name="c" time="0.5"/>'
        "</testsuite></testsuites>"
    )
    assert seconds_per_file(report) == {"tests/api/test_x.py": 3.2, "tests/test_y.py": 0.5}
