"""Reducers over the partial results of a fanout, and when the fanout may stop waiting.

The service collects one :class:`Entry` per target as replies arrive and, after every
arrival, asks :meth:`Aggregator.is_settled` whether it may cancel the rest. It then calls
:meth:`Aggregator.reduce` with the entries **in arrival order**. Each entry carries
``index``, its position among the targets, and a reducer that needs a deterministic result
sorts by it. Only ``first`` (the earliest reply) and ``quorum``'s tie-break between two
values with equal votes (the one voted for first) use arrival order.

Built-in aggregates::

    array    list of ok results                      merge   dict merge, later targets win
    concat   ok results (lists) concatenated         first   earliest ok result, settles early
    quorum   the value `needed` ok results agree on   topk    best `top_k` matches by score
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from ..errors import AggregationError, InvalidRequestError

__all__ = [
    "BUILT_IN_AGGREGATES",
    "DEFAULT_TOP_K",
    "Aggregator",
    "ArrayAggregator",
    "ConcatAggregator",
    "CustomAggregator",
    "Entry",
    "EntryStatus",
    "FirstAggregator",
    "MergeAggregator",
    "QuorumAggregator",
    "Reducer",
    "TopKAggregator",
    "can_meet",
    "entry_counts",
    "make_aggregator",
]

DEFAULT_TOP_K = 10
BUILT_IN_AGGREGATES = ("array", "concat", "first", "merge", "none", "quorum", "topk")

EntryStatus = Literal["ok", "error", "timeout", "cancelled"]
Reducer = Callable[[list[dict[str, Any]]], Any]
"""A custom reducer: gets every entry as a plain dict, in target order."""


class Entry(NamedTuple):
    """One target's outcome in a fanout; ``index`` is its position among the targets.

    (A named tuple: a fanout makes one per target, and a frozen dataclass costs three
    times as much to build.)"""

    instance: str
    status: EntryStatus
    result: Any = None
    error: dict[str, Any] | None = None
    latency_ms: float = 0.0
    index: int = 0  # type: ignore[assignment]  # shadows tuple.index(), which nothing calls

    @property
    def is_ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The plain form custom reducers receive (target order is given by the list)."""
        return {
            "instance": self.instance,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "latency_ms": self.latency_ms,
        }


class Aggregator(Protocol):
    """Combines fanout entries; ``name`` is the aggregate as the request spelled it."""

    @property
    def name(self) -> str: ...

    def is_settled(self, arrived: Sequence[Entry], pending: int) -> bool:
        """May the fanout stop waiting now and cancel the ``pending`` rest?"""
        ...

    def reduce(self, entries: Sequence[Entry]) -> Any:
        """The aggregate value of ``entries`` (arrival order); raises AggregationError."""
        ...


def entry_counts(entries: Sequence[Entry]) -> tuple[int, int, int]:
    """(succeeded, failed, timed_out); a cancelled entry counts as failed."""
    succeeded = sum(entry.status == "ok" for entry in entries)
    timed_out = sum(entry.status == "timeout" for entry in entries)
    return succeeded, len(entries) - succeeded - timed_out, timed_out


def can_meet(min_success: int | None, succeeded: int, pending: int) -> bool:
    """Whether ``min_success`` is still reachable; False lets the fanout fail fast."""
    return min_success is None or succeeded + pending >= min_success


class _UntilAllArrive:
    """Mixin for aggregates that need every reply before they can answer."""

    __slots__ = ()

    def is_settled(self, arrived: Sequence[Entry], pending: int) -> bool:
        return pending == 0


@dataclass(frozen=True, slots=True)
class ArrayAggregator(_UntilAllArrive):
    """The ok results as a list, in target order."""

    name: str = field(default="array", init=False)

    def reduce(self, entries: Sequence[Entry]) -> Any:
        return [entry.result for entry in _ok_in_target_order(entries)]


@dataclass(frozen=True, slots=True)
class MergeAggregator(_UntilAllArrive):
    """Shallow dict merge of the ok results in target order; later targets win a clash."""

    name: str = field(default="merge", init=False)

    def reduce(self, entries: Sequence[Entry]) -> Any:
        merged: dict[str, Any] = {}
        for entry in _ok_in_target_order(entries):
            merged.update(_expect(entry, dict, "an object", self.name))
        return merged


@dataclass(frozen=True, slots=True)
class ConcatAggregator(_UntilAllArrive):
    """The ok results, each a list, concatenated in target order."""

    name: str = field(default="concat", init=False)

    def reduce(self, entries: Sequence[Entry]) -> Any:
        return [
            item
            for entry in _ok_in_target_order(entries)
            for item in _expect(entry, list, "a list", self.name)
        ]


@dataclass(frozen=True, slots=True)
class FirstAggregator:
    """The earliest ok result; the fanout stops at the first success."""

    name: str = field(default="first", init=False)

    def is_settled(self, arrived: Sequence[Entry], pending: int) -> bool:
        return pending == 0 or any(entry.is_ok for entry in arrived)

    def reduce(self, entries: Sequence[Entry]) -> Any:
        for entry in entries:
            if entry.is_ok:
                return entry.result
        raise AggregationError("no instance succeeded", details=_counts(entries))


@dataclass(frozen=True, slots=True)
class QuorumAggregator:
    """The value ``needed`` ok results agree on (compared as canonical JSON).

    With a small explicit quorum two values may both reach it; the one with more votes
    wins, and a tie goes to the value whose first vote arrived first.
    """

    needed: int
    name: str = field(default="quorum", init=False)

    def is_settled(self, arrived: Sequence[Entry], pending: int) -> bool:
        best = max(map(len, _votes(arrived).values()), default=0)
        return pending == 0 or best >= self.needed or best + pending < self.needed

    def reduce(self, entries: Sequence[Entry]) -> Any:
        ballots = max(_votes(entries).values(), key=len, default=[])
        if len(ballots) >= self.needed:
            return {"value": ballots[0], "votes": len(ballots), "needed": self.needed}
        raise AggregationError(
            f"no quorum: the most agreed value has {len(ballots)} of {self.needed} votes",
            details={**_counts(entries), "needed": self.needed, "best_votes": len(ballots)},
        )


@dataclass(frozen=True, slots=True)
class TopKAggregator(_UntilAllArrive):
    """The ``top_k`` best matches across instances by ``score``; ties keep target order.

    Each ok result is ``{"matches": [{"score": ..., ...}, ...]}`` or the bare list.
    """

    top_k: int = DEFAULT_TOP_K
    name: str = field(default="topk", init=False)

    def reduce(self, entries: Sequence[Entry]) -> Any:
        matches = [match for entry in _ok_in_target_order(entries) for match in _matches(entry)]
        return sorted(matches, key=lambda match: match["score"], reverse=True)[: self.top_k]


@dataclass(frozen=True, slots=True)
class CustomAggregator(_UntilAllArrive):
    """A reducer the server registered from its config, given every entry in target order."""

    name: str
    reducer: Reducer

    def reduce(self, entries: Sequence[Entry]) -> Any:
        rows = [entry.to_dict() for entry in sorted(entries, key=_target_position)]
        try:
            return self.reducer(rows)
        except AggregationError:
            raise
        except Exception as exc:  # a config-supplied reducer may raise anything
            raise AggregationError(
                f"reducer {self.name} failed: {exc}",
                details={"reducer": self.name, "exception": type(exc).__name__},
            ) from exc


def make_aggregator(
    spec: bool | str,
    *,
    targets: int,
    quorum: int | None = None,
    top_k: int | None = None,
    reducers: Mapping[str, Reducer] | None = None,
) -> Aggregator | None:
    """The aggregator a request asks for; ``None`` means return the entries as they are.

    ``True`` is ``"array"`` and ``False`` is ``"none"``. Built-in names win over ``reducers``
    (the custom ones the server registered). ``quorum`` and ``top_k`` only matter to their
    aggregate.
    """
    name = ("array" if spec else "none") if isinstance(spec, bool) else spec
    custom = reducers or {}
    if name == "none":
        return None
    if name == "quorum":
        return QuorumAggregator(_needed(quorum, targets))
    if name == "topk":
        return TopKAggregator(_top_k(top_k))
    simple = _SIMPLE.get(name)
    if simple is not None:
        return simple()
    if name in custom:
        return CustomAggregator(name, custom[name])
    known = ", ".join(sorted({*BUILT_IN_AGGREGATES, *custom}))
    raise InvalidRequestError(f"unknown aggregate {name!r}; known: {known}", field="aggregate")


_SIMPLE: dict[str, Callable[[], Aggregator]] = {
    "array": ArrayAggregator,
    "concat": ConcatAggregator,
    "first": FirstAggregator,
    "merge": MergeAggregator,
}


def _needed(quorum: int | None, targets: int) -> int:
    """Votes a quorum needs: the explicit ``quorum``, else a majority of the targets."""
    if quorum is None:
        return targets // 2 + 1
    if not 1 <= quorum <= targets:
        raise InvalidRequestError(
            f"quorum must be between 1 and {targets} (the number of targets)", field="quorum"
        )
    return quorum


def _top_k(top_k: int | None) -> int:
    if top_k is None:
        return DEFAULT_TOP_K
    if top_k < 1:
        raise InvalidRequestError("top_k must be at least 1", field="top_k")
    return top_k


def _target_position(entry: Entry) -> int:
    return entry.index


def _ok_in_target_order(entries: Sequence[Entry]) -> list[Entry]:
    return sorted((entry for entry in entries if entry.is_ok), key=_target_position)


def _counts(entries: Sequence[Entry]) -> dict[str, int]:
    succeeded, failed, timed_out = entry_counts(entries)
    return {"succeeded": succeeded, "failed": failed, "timed_out": timed_out}


def _expect(entry: Entry, kind: type, what: str, aggregate: str) -> Any:
    """``entry.result`` when it is a ``kind``; else an error naming the instance."""
    if isinstance(entry.result, kind):
        return entry.result
    raise AggregationError(
        f"{aggregate}: the result of {entry.instance} is not {what}",
        instance=entry.instance,
        details={"aggregate": aggregate, "type": type(entry.result).__name__},
    )


def _votes(entries: Sequence[Entry]) -> dict[str, list[Any]]:
    """Ok results grouped by canonical JSON, in order of each value's first vote."""
    ballots: dict[str, list[Any]] = {}
    for entry in entries:
        if entry.is_ok:
            ballots.setdefault(_canonical(entry.result), []).append(entry.result)
    return ballots


def _canonical(value: Any) -> str:
    """Equal JSON values give equal strings, whatever their key order (dicts are unhashable)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def _matches(entry: Entry) -> list[dict[str, Any]]:
    """The scored matches of one topk result; anything else names the instance."""
    result = entry.result
    matches = result.get("matches") if isinstance(result, dict) else result
    if isinstance(matches, list) and all(_is_scored(match) for match in matches):
        return matches
    raise AggregationError(
        f"topk: the result of {entry.instance} is not a list of matches with numeric scores",
        instance=entry.instance,
        details={"aggregate": "topk"},
    )


def _is_scored(match: Any) -> bool:
    """A dict whose ``score`` is a finite number (a bool or NaN would not sort sensibly)."""
    score = match.get("score") if isinstance(match, dict) else None
    if isinstance(score, bool) or not isinstance(score, int | float):
        return False
    return math.isfinite(score)
