"""Fanout aggregates: choosing one, when each settles, and what each reduces to."""

from __future__ import annotations

from typing import Any

import pytest

from openclaw_orchestrator.domain.aggregation import (
    Aggregator,
    ArrayAggregator,
    ConcatAggregator,
    CustomAggregator,
    Entry,
    FirstAggregator,
    MergeAggregator,
    QuorumAggregator,
    TopKAggregator,
    can_meet,
    entry_counts,
    make_aggregator,
)
from openclaw_orchestrator.errors import AggregationError, InvalidRequestError


def ok(instance: str, result: Any, index: int = 0) -> Entry:
    return Entry(instance, "ok", result, index=index)


def failed(instance: str, index: int = 0, status: str = "error") -> Entry:
    return Entry(instance, status, None, {"code": "instance_down"}, index=index)  # type: ignore[arg-type]


def total(rows: list[dict[str, Any]]) -> int:
    return sum(row["result"] for row in rows if row["status"] == "ok")


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        (True, ArrayAggregator),
        ("array", ArrayAggregator),
        ("merge", MergeAggregator),
        ("concat", ConcatAggregator),
        ("first", FirstAggregator),
        ("quorum", QuorumAggregator),
        ("topk", TopKAggregator),
        ("total", CustomAggregator),
    ],
)
def test_make_aggregator_picks_by_name(spec: bool | str, kind: type) -> None:
    """Booleans and built-in names map to their aggregator; other names look up reducers."""
    aggregator = make_aggregator(spec, targets=3, reducers={"total": total})
    assert isinstance(aggregator, kind)
    assert aggregator is not None
    assert aggregator.name == ("array" if spec is True else spec)


@pytest.mark.parametrize("spec", [False, "none"])
def test_no_aggregate(spec: bool | str) -> None:
    """False and 'none' mean the entries are returned as they are."""
    assert make_aggregator(spec, targets=3) is None


def test_unknown_aggregate_lists_the_known_ones() -> None:
    """An unknown name is an invalid request naming the field and every choice."""
    with pytest.raises(InvalidRequestError) as caught:
        make_aggregator("sum", targets=2, reducers={"total": total})
    assert caught.value.field == "aggregate"
    assert caught.value.message == (
        "unknown aggregate 'sum'; known: array, concat, first, merge, none, quorum, topk, total"
    )


def test_built_in_names_win_over_reducers() -> None:
    """A config reducer cannot shadow a built-in aggregate."""
    assert isinstance(
        make_aggregator("merge", targets=1, reducers={"merge": total}), MergeAggregator
    )


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"spec": "quorum", "quorum": 0}, "quorum"),
        ({"spec": "quorum", "quorum": 4}, "quorum"),
        ({"spec": "topk", "top_k": 0}, "top_k"),
    ],
)
def test_rejects_impossible_knobs(knobs: dict[str, Any], field: str) -> None:
    """A quorum outside 1..targets or an empty top_k names its field."""
    with pytest.raises(InvalidRequestError) as caught:
        make_aggregator(targets=3, **knobs)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("targets", "quorum", "needed"),
    [(1, None, 1), (2, None, 2), (3, None, 2), (4, None, 3), (8, None, 5), (8, 3, 3)],
)
def test_quorum_defaults_to_a_majority(targets: int, quorum: int | None, needed: int) -> None:
    """Without an explicit quorum, a majority of the targets must agree."""
    assert make_aggregator("quorum", targets=targets, quorum=quorum) == QuorumAggregator(needed)


@pytest.mark.parametrize(("top_k", "kept"), [(None, 10), (3, 3)])
def test_top_k_default(top_k: int | None, kept: int) -> None:
    """topk keeps ten matches unless asked otherwise."""
    assert make_aggregator("topk", targets=2, top_k=top_k) == TopKAggregator(kept)


# arrival order deliberately differs from target order (index)
ARRIVED = [ok("C", {"x": 3, "c": 1}, 2), failed("B", 1), ok("A", {"x": 1, "a": 1}, 0)]


@pytest.mark.parametrize(
    ("aggregator", "entries", "value"),
    [
        (ArrayAggregator(), ARRIVED, [{"x": 1, "a": 1}, {"x": 3, "c": 1}]),
        (ArrayAggregator(), [failed("A")], []),
        (MergeAggregator(), ARRIVED, {"x": 3, "a": 1, "c": 1}),
        (MergeAggregator(), [], {}),
        (ConcatAggregator(), [ok("B", [3], 1), ok("A", [1, 2], 0), failed("C", 2)], [1, 2, 3]),
        (FirstAggregator(), ARRIVED, {"x": 3, "c": 1}),
        (FirstAggregator(), [failed("A", 0), ok("B", "b", 1)], "b"),
    ],
)
def test_reduce(aggregator: Aggregator, entries: list[Entry], value: Any) -> None:
    """array, merge and concat follow target order, not arrival; first takes the earliest."""
    assert aggregator.reduce(entries) == value


MATCHES = {"matches": [{"score": 1}]}


@pytest.mark.parametrize(
    ("aggregator", "good", "bad", "message"),
    [
        (MergeAggregator(), {"a": 1}, [1], "merge: the result of B is not an object"),
        (ConcatAggregator(), [1], {"a": 1}, "concat: the result of B is not a list"),
        (TopKAggregator(), MATCHES, {"hits": []}, "topk: the result of B is not a list of matches"),
        (TopKAggregator(), MATCHES, [{"score": "high"}], "topk: the result of B is not a list"),
        (TopKAggregator(), MATCHES, [{"score": True}], "topk: the result of B is not a list"),
        (TopKAggregator(), MATCHES, [{"score": float("nan")}], "topk: the result of B is not"),
        (TopKAggregator(), MATCHES, {"matches": [{"id": 1}]}, "topk: the result of B is not"),
        (TopKAggregator(), MATCHES, {"matches": ["x"]}, "topk: the result of B is not a list"),
    ],
)
def test_malformed_results_name_the_instance(
    aggregator: Aggregator, good: Any, bad: Any, message: str
) -> None:
    """A result of the wrong shape fails the aggregate and says whose it was."""
    with pytest.raises(AggregationError, match="the result of B") as caught:
        aggregator.reduce([ok("A", good, 0), ok("B", bad, 1)])
    assert caught.value.message.startswith(message)
    assert caught.value.instance == "B"


def test_first_without_success_fails() -> None:
    """first with no ok entry says so and carries the counts."""
    entries = [failed("A"), failed("B", status="timeout"), failed("C", status="cancelled")]
    with pytest.raises(AggregationError, match="no instance succeeded") as caught:
        FirstAggregator().reduce(entries)
    assert caught.value.details == {"succeeded": 0, "failed": 2, "timed_out": 1}


@pytest.mark.parametrize(
    ("aggregator", "arrived", "pending", "settled"),
    [
        (ArrayAggregator(), [ok("A", 1)], 2, False),
        (ArrayAggregator(), [ok("A", 1)], 0, True),
        (MergeAggregator(), [ok("A", {})], 1, False),
        (TopKAggregator(), [ok("A", [])], 1, False),
        (CustomAggregator("total", total), [ok("A", 1)], 1, False),
        (CustomAggregator("total", total), [ok("A", 1)], 0, True),
        (FirstAggregator(), [failed("A")], 2, False),
        (FirstAggregator(), [failed("A"), ok("B", 2)], 1, True),
        (FirstAggregator(), [failed("A")], 0, True),
        (QuorumAggregator(2), [ok("A", 1)], 2, False),
        (QuorumAggregator(2), [ok("A", 1), ok("B", 1)], 1, True),
        (QuorumAggregator(2), [ok("A", 1), ok("B", 2)], 1, False),
        (QuorumAggregator(2), [failed("A"), failed("B")], 1, True),
        (QuorumAggregator(3), [ok("A", 1), ok("B", 2)], 1, True),
        (QuorumAggregator(2), [ok("A", 1), ok("B", 2), ok("C", 3)], 0, True),
    ],
)
def test_is_settled(
    aggregator: Aggregator, arrived: list[Entry], pending: int, settled: bool
) -> None:
    """first stops at a success, quorum once decided either way, the rest wait for everyone."""
    assert aggregator.is_settled(arrived, pending) is settled


@pytest.mark.parametrize(
    ("needed", "entries", "value"),
    [
        (
            2,
            [ok("A", {"a": 1, "b": 2}), ok("B", {"b": 2, "a": 1})],
            {"value": {"a": 1, "b": 2}, "votes": 2, "needed": 2},
        ),
        (2, [ok("A", [1]), ok("B", [2]), ok("C", [2])], {"value": [2], "votes": 2, "needed": 2}),
        (1, [ok("B", "late"), ok("A", "early")], {"value": "late", "votes": 1, "needed": 1}),
        (1, [ok("A", "x"), ok("B", "y"), ok("C", "y")], {"value": "y", "votes": 2, "needed": 1}),
        (2, [ok("A", 1.0), ok("B", 1.0), failed("C")], {"value": 1.0, "votes": 2, "needed": 2}),
    ],
)
def test_quorum_reduce(needed: int, entries: list[Entry], value: dict[str, Any]) -> None:
    """Equal JSON values vote together; most votes wins, ties go to the earliest first vote."""
    assert QuorumAggregator(needed).reduce(entries) == value


def test_quorum_not_reached() -> None:
    """Without enough agreement the aggregate fails with the vote counts."""
    entries = [ok("A", 1), ok("B", 2), failed("C", status="timeout")]
    with pytest.raises(AggregationError, match="no quorum") as caught:
        QuorumAggregator(2).reduce(entries)
    assert caught.value.details == {
        "succeeded": 2,
        "failed": 0,
        "timed_out": 1,
        "needed": 2,
        "best_votes": 1,
    }


def test_topk_merges_and_ranks_matches() -> None:
    """Matches from every instance are ranked by score; ties keep target order; top_k cut."""
    entries = [
        ok("B", [{"id": "b1", "score": 0.9}, {"id": "b2", "score": 0.5}], 1),
        ok("A", {"matches": [{"id": "a1", "score": 0.5}, {"id": "a2", "score": 1}]}, 0),
        failed("C", 2),
    ]
    assert TopKAggregator(3).reduce(entries) == [
        {"id": "a2", "score": 1},
        {"id": "b1", "score": 0.9},
        {"id": "a1", "score": 0.5},
    ]


def test_custom_reducer_gets_plain_dicts_in_target_order() -> None:
    """A config reducer sees every entry, failures included, as plain dicts in target order."""
    seen: list[list[dict[str, Any]]] = []

    def spy(rows: list[dict[str, Any]]) -> int:
        seen.append(rows)
        return len(rows)

    reducer = CustomAggregator("spy", spy)
    assert reducer.reduce([Entry("B", "timeout", latency_ms=5.0, index=1), ok("A", 7, 0)]) == 2
    assert seen == [
        [
            {"instance": "A", "status": "ok", "result": 7, "error": None, "latency_ms": 0.0},
            {
                "instance": "B",
                "status": "timeout",
                "result": None,
                "error": None,
                "latency_ms": 5.0,
            },
        ]
    ]


def test_custom_reducer_failure_becomes_an_aggregation_error() -> None:
    """A crashing reducer fails the aggregate, naming the reducer and keeping the cause."""
    aggregator = make_aggregator("total", targets=1, reducers={"total": total})
    assert aggregator is not None
    with pytest.raises(AggregationError, match=r"^reducer total failed: ") as caught:
        aggregator.reduce([ok("A", "not a number")])
    assert isinstance(caught.value.__cause__, TypeError)
    assert caught.value.details == {"reducer": "total", "exception": "TypeError"}


def test_custom_reducer_may_raise_its_own_aggregation_error() -> None:
    """An AggregationError from a reducer passes through unchanged."""

    def picky(rows: list[dict[str, Any]]) -> Any:
        raise AggregationError("need three", details={"got": len(rows)})

    with pytest.raises(AggregationError, match=r"^need three$"):
        CustomAggregator("picky", picky).reduce([ok("A", 1)])


@pytest.mark.parametrize(
    ("statuses", "counts"),
    [
        ([], (0, 0, 0)),
        (["ok", "ok", "error"], (2, 1, 0)),
        (["timeout", "cancelled", "error", "ok"], (1, 2, 1)),
    ],
)
def test_entry_counts(statuses: list[str], counts: tuple[int, int, int]) -> None:
    """(succeeded, failed, timed_out), with cancelled counted as failed."""
    entries = [Entry(str(n), status) for n, status in enumerate(statuses)]  # type: ignore[arg-type]
    assert entry_counts(entries) == counts


@pytest.mark.parametrize(
    ("min_success", "succeeded", "pending", "reachable"),
    [
        (None, 0, 0, True),
        (2, 0, 2, True),
        (2, 1, 0, False),
        (2, 2, 0, True),
        (3, 1, 1, False),
    ],
)
def test_can_meet(min_success: int | None, succeeded: int, pending: int, reachable: bool) -> None:
    """The fanout can fail fast once min_success is out of reach."""
    assert can_meet(min_success, succeeded, pending) is reachable
