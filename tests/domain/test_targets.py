"""Target expressions: every token form, de-duplication, and one error for all unknowns."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

import pytest

from openclaw_orchestrator.domain.targets import MAX_RANGE_SIZE, parse_targets, plain_names
from openclaw_orchestrator.errors import InvalidRequestError

LETTERS = ["A", "B", "C", "D", "E", "F", "G", "H"]
TAGS: dict[str, set[str]] = {
    "A": {"gpu"},
    "B": {"gpu", "eu"},
    "C": {"eu"},
    "D": {"gpu-fast"},
    "H": {"gpu"},
}
NUMBERED = ["w1", "w2", "w3", "w8", "w9", "w10", "n08", "n09", "n10", "alpha", "beta", "gamma"]
REGISTRY: list[tuple[str, Collection[str]]] = [
    (name, TAGS.get(name, set())) for name in LETTERS + NUMBERED
]
ALL = LETTERS + NUMBERED


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (None, ALL),
        ("A", ["A"]),
        ("A,C", ["A", "C"]),
        ("A C\tE\n", ["A", "C", "E"]),
        (" A , , C ", ["A", "C"]),
        ("A-C", ["A", "B", "C"]),
        ("A-C,E", ["A", "B", "C", "E"]),
        ("A-H", LETTERS),
        ("H-H", ["H"]),
        (["A-C", "E"], ["A", "B", "C", "E"]),
        (("A, B", "C"), ["A", "B", "C"]),
        ("all", ALL),
        ("ALL", ALL),
        ("All", ALL),
        ("tag:gpu", ["A", "B", "H"]),
        ("TAG:eu,A", ["B", "C", "A"]),
        ("tag:gpu-fast", ["D"]),
        ("C,A-D,C", ["C", "A", "B", "D"]),
        ("all,A", ALL),
        ("w1-w3", ["w1", "w2", "w3"]),
        ("w8-10", ["w8", "w9", "w10"]),
        ("w2-w2", ["w2"]),
        ("n08-n10", ["n08", "n09", "n10"]),
        ("alpha-gamma", ["alpha", "beta", "gamma"]),
        ("G-H,alpha-beta", ["G", "H", "alpha", "beta"]),
    ],
)
def test_expands_every_token_form(expr: str | Sequence[str] | None, expected: list[str]) -> None:
    """Names, all, tags and each range form expand in first-occurrence order, de-duplicated."""
    assert parse_targets(expr, REGISTRY) == expected


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("", "no targets given"),
        ([], "no targets given"),
        ([" ", ","], "no targets given"),
        (" , ", "no targets given"),
        ("C-A", "upwards"),
        ("A-c", "upwards in one case"),
        ("w3-w1", "downwards"),
        ("n08-n9", "same zero padding"),
        ("n8-n010", "same zero padding"),
        ("tag:nope", "tag 'nope' matches no instance"),
        ("tag:", "tag '' matches no instance"),
        ("A-B-C", "is not a range"),
        ("-A", "is not a range"),
        ("A-", "is not a range"),
        ("gamma-alpha", "alpha comes before gamma"),
        ("A1-beta", "a range needs single letters"),
        ("alpha-omega", "a range needs single letters"),
        ("A;B", "is not a target"),
        ("_A", "is not a target"),
        ("x" * 65, "is not a target"),
        (f"w1-w{MAX_RANGE_SIZE + 1}", f"more than {MAX_RANGE_SIZE} names"),
        (cast(Any, [1]), "a string or a list of strings"),
        (cast(Any, {"A"}), "a string or a list of strings"),
    ],
)
def test_rejects_malformed_expressions(expr: str | Sequence[str], fragment: str) -> None:
    """Empty, reversed, mixed-padding, non-matching and garbled expressions name the field."""
    with pytest.raises(InvalidRequestError) as caught:
        parse_targets(expr, REGISTRY, field="to")
    assert fragment in caught.value.message
    assert caught.value.field == "to"


@pytest.mark.parametrize(
    ("expr", "unknown"),
    [
        ("A,X,Y", ["X", "Y"]),
        ("X-Z", ["X", "Y", "Z"]),
        ("a", ["a"]),
        ("w1-w4", ["w4"]),
        ("n8-n10", ["n8", "n9"]),
        ("Q,tag:eu,Q,R", ["Q", "R"]),
    ],
)
def test_lists_every_unknown_name_at_once(expr: str, unknown: list[str]) -> None:
    """All unknown names (case-sensitive, range members included) come in one error."""
    with pytest.raises(InvalidRequestError, match="unknown instance") as caught:
        parse_targets(expr, REGISTRY)
    error = caught.value
    assert error.message == f"unknown instance(s): {', '.join(unknown)}; known: {', '.join(ALL)}"
    assert error.field == "targets"
    assert error.details == {"unknown": unknown, "known": ALL}


def test_unknown_message_matches_the_contract() -> None:
    """The unknown-instance message is exactly the documented one."""
    registry = [(name, ()) for name in "ABCD"]
    with pytest.raises(
        InvalidRequestError, match=r"^unknown instance\(s\): E, F; known: A, B, C, D$"
    ):
        parse_targets("A,E-F", registry)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        (None, "no instances are registered"),
        ("all", "no instances are registered"),
        ("A", "unknown instance(s): A; known: (none)"),
    ],
)
def test_empty_registry(expr: str | None, message: str) -> None:
    """With nothing registered, 'all' says so instead of returning nothing."""
    with pytest.raises(InvalidRequestError) as caught:
        parse_targets(expr, [])
    assert caught.value.message == message


def test_accepts_any_collection_of_tags() -> None:
    """Tags may come as a set, list or tuple, whatever the registry keeps."""
    registry: list[tuple[str, Collection[str]]] = [("A", ["x"]), ("B", ("x", "y")), ("C", {"y"})]
    assert parse_targets("tag:y", registry) == ["B", "C"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (["A"], ["A"]),
        ("A", ["A"]),
        ("A,C", ["A", "C"]),
        (["A", "C", "A"], ["A", "C"]),
        (["A B", "C"], ["A", "B", "C"]),
        (["w1", "gpu.2:x"], ["w1", "gpu.2:x"]),
    ],
)
def test_plain_names_lists_plain_names(expr: Any, names: list[str]) -> None:
    """A list of plain names needs no expansion: the shortcut returns it, deduplicated."""
    assert plain_names(expr) == names


@pytest.mark.parametrize(
    "expr", ["all", ["ALL"], "A-D", ["tag:gpu"], ["A", "w1-w4"], [], [""], ["A", 3], "bad name!"]
)
def test_plain_names_leaves_anything_else_to_the_parser(expr: Any) -> None:
    """Ranges, 'all', tags, malformed or empty expressions: None (parse_targets decides)."""
    assert plain_names(expr) is None
