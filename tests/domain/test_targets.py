"""Target expressions: every token form, de-duplication, and one error for all unknowns."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

import pytest

from openclaw_orchestrator.domain.targets import (
    MAX_EXTRA_NAMES,
    MAX_RANGE_SIZE,
    MAX_TARGET_CHARS,
    MAX_TARGET_TOKENS,
    AcceptedTargets,
    parse_targets,
    plain_names,
)
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


# -- bounds (issue 9, item 3): checked before anything is expanded or remembered -------------


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("A," * (MAX_TARGET_CHARS // 2 + 1), f"{MAX_TARGET_CHARS} characters"),
        (["A"] * (MAX_TARGET_TOKENS + 1), f"at most {MAX_TARGET_TOKENS} items"),
        (" ".join(f"x{i}" for i in range(MAX_TARGET_TOKENS + 1)), f"{MAX_TARGET_TOKENS} tokens"),
        (",".join(f"w1-w{1000 + i}" for i in range(11)), "registered instances plus"),
        (",".join(f"q{i}-{i + 1000}" for i in range(11)), "registered instances plus"),
    ],
)
def test_expressions_over_the_bounds_are_refused_before_expansion(
    expr: str | list[str], fragment: str
) -> None:
    """Too long, too many items or tokens, or standing for more names than the registry plus
    MAX_EXTRA_NAMES: one 400 naming the field."""
    with pytest.raises(InvalidRequestError) as caught:
        parse_targets(expr, REGISTRY, field="instances")
    assert fragment in caught.value.message
    assert caught.value.field == "instances"


def test_a_repeated_token_is_expanded_once() -> None:
    """The same range written thousands of times costs one expansion, not the budget."""
    assert parse_targets(",".join(["A-D"] * 4000), REGISTRY) == ["A", "B", "C", "D"]


def test_the_budget_grows_with_the_registry() -> None:
    """A registry larger than MAX_EXTRA_NAMES can still be named whole, with a range too."""
    names = [f"n{i}" for i in range(MAX_EXTRA_NAMES + 5)]
    registry: list[tuple[str, Collection[str]]] = [(name, ()) for name in names]
    assert parse_targets("all,n0-n1023", registry) == names


def test_plain_names_leaves_oversized_expressions_to_the_parser() -> None:
    """Over the bounds, the shortcut declines, so parse_targets reports the bound."""
    assert plain_names("A," * MAX_TARGET_CHARS) is None
    assert plain_names(["A"] * (MAX_TARGET_TOKENS + 1)) is None


def test_accepted_targets_keep_only_short_expressions_within_bounds() -> None:
    """Short expressions are remembered; long ones never; the oldest go past the entry and
    character bounds."""
    accepted = AcceptedTargets(max_entries=3, max_chars=40, max_expr_chars=10)
    accepted.remember("A,B", ["A", "B"])
    accepted.remember(["C"], ["C"])
    assert accepted.get("A,B") == ["A", "B"]
    assert accepted.get(["C"]) == ["C"]
    accepted.remember("x" * 11, ["x" * 11])
    assert accepted.get("x" * 11) is None
    for name in ("D", "E"):
        accepted.remember(name, [name])
    assert accepted.get("A,B") is None  # the oldest, past max_entries
    assert len(accepted) == 3
    accepted.remember("F,G,H,I,J", list("FGHIJ"))  # 14 characters: past max_chars too
    assert len(accepted) <= 3
    assert repr(accepted).startswith("<AcceptedTargets [")
    assert accepted.get(cast(Any, [{"not": "hashable"}])) is None


def test_the_registry_remembers_accepted_expressions_only() -> None:
    """A rejected expression (unknown names) is never kept; an accepted one is, and stops
    resolving once an instance it names is gone."""
    from openclaw_orchestrator.domain.health import HealthPolicy
    from openclaw_orchestrator.models import InstanceSpec
    from openclaw_orchestrator.server.core.registry import Registry

    registry = Registry(HealthPolicy())
    for name in "AB":
        registry.upsert(InstanceSpec(name=name, url=f"http://127.0.0.1:1/{name}"), "config", 0.0)
    with pytest.raises(InvalidRequestError):
        registry.resolve("A,Z", field="targets")
    assert len(registry._accepted) == 0
    assert registry.resolve("A,B", field="targets") == ["A", "B"]
    assert len(registry._accepted) == 1
    registry.remove("B")
    with pytest.raises(InvalidRequestError, match="unknown instance"):
        registry.resolve("A,B", field="targets")
