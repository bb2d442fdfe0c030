"""Target expressions as users write them -> the instance names they mean.

A string is split on commas and whitespace; a list's items are each such strings. Tokens::

    A             one instance                  all / ALL     every registered instance
    tag:gpu       every instance tagged gpu     A-D           letters A, B, C, D
    w1-w8, w1-8   w1 ... w8                     n01-n03       n01, n02, n03 (padding kept)
    alpha-gamma   registry order from alpha to gamma (both must be known)

Names cannot contain ``-``, ``,`` or spaces, so a range is never ambiguous. The result is
de-duplicated in first-occurrence order, and every unknown name is reported in one error so a
user fixes the expression in one go.

An expression is bounded before anything is expanded: at most :data:`MAX_TARGET_CHARS`
characters and :data:`MAX_TARGET_TOKENS` tokens, and its tokens together may stand for at most
the registered instances plus :data:`MAX_EXTRA_NAMES` names (repeats counted). Each token's
size is known before its names are made, so an over-large expression costs what it takes to
read it, never what it would expand to.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from ..errors import InvalidRequestError

__all__ = [
    "INSTANCE_NAME",
    "MAX_EXTRA_NAMES",
    "MAX_RANGE_SIZE",
    "MAX_TARGET_CHARS",
    "MAX_TARGET_TOKENS",
    "AcceptedTargets",
    "Registry",
    "parse_targets",
    "plain_names",
]

INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:]{0,63}")
MAX_RANGE_SIZE = 1024  # a typo like w1-w1000000 must not allocate a million names
MAX_TARGET_CHARS = 65_536  # a thousand 64-character names fit, with room to spare
MAX_TARGET_TOKENS = 4096  # names, ranges, tags and 'all' in one expression
MAX_EXTRA_NAMES = 10_000  # names beyond the registered ones an expression may stand for

Registry = Sequence[tuple[str, Collection[str]]]
"""Known instances in registry order as ``(name, tags)``."""

_SEPARATORS = re.compile(r"[,\s]+")
_NUMBERED = re.compile(r"(.*?)(\d+)")
_TOKENS_HELP = "use instance names, 'all', 'tag:<tag>' or ranges like A-D and w1-w8"


def parse_targets(
    expr: str | Sequence[str] | None, registry: Registry, *, field: str = "targets"
) -> list[str]:
    """Expand ``expr`` into known instance names; ``None`` means every registered instance.

    Raises :class:`InvalidRequestError` naming ``field`` for an empty or malformed expression
    and for unknown names (all of them at once, with the known ones).
    """
    tokens = ["all"] if expr is None else _tokens(expr, field)
    fleet = _Fleet(registry)
    budget = _Budget(len(fleet.names) + MAX_EXTRA_NAMES, field)
    expanded: dict[str, None] = {}
    for token in dict.fromkeys(tokens):  # a repeated token adds nothing but work
        expanded.update(dict.fromkeys(_expand(token, fleet, budget, field)))
    known = fleet.names
    registered = frozenset(known)
    unknown = [name for name in expanded if name not in registered]
    if unknown:
        raise InvalidRequestError(
            f"unknown instance(s): {', '.join(unknown)}; known: {', '.join(known) or '(none)'}",
            field=field,
            details={"unknown": unknown, "known": known},
        )
    return list(expanded)


def plain_names(expr: str | Sequence[str]) -> list[str] | None:
    """The names ``expr`` lists when it is nothing but plain names (the common request:
    ``["A"]``, ``"A,C"``), deduplicated in order; None when it holds anything
    :func:`parse_targets` must expand (``all``, ``tag:``, ranges), is malformed or over the
    bounds. Lets a caller that can check membership cheaply skip the full parse."""
    items = _items(expr)
    if items is None or len(items) > MAX_TARGET_TOKENS:
        return None
    if sum(map(len, items)) > MAX_TARGET_CHARS:
        return None
    names: dict[str, None] = {}
    for item in items:
        for token in _SEPARATORS.split(item):
            if not token:
                continue
            if not INSTANCE_NAME.fullmatch(token) or token.lower() == "all":
                return None
            if token[:4].lower() == "tag:":
                return None
            names[token] = None
    return list(names) if 0 < len(names) <= MAX_TARGET_TOKENS else None


class AcceptedTargets:
    """Short expressions a caller accepted -> their names: the same few (``["A"]``, ``"A,C"``)
    come again and again, and remembering them skips the split and the name checks.

    Only what the caller hands to :meth:`remember` is kept (an expression it accepted, never
    one that failed), only when it is at most ``max_expr_chars`` long, and the whole cache
    stays within ``max_entries`` and ``max_chars`` (expression plus names), oldest out first.
    """

    def __init__(
        self, *, max_entries: int = 1024, max_chars: int = 256 * 1024, max_expr_chars: int = 1024
    ) -> None:
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._max_expr_chars = max_expr_chars
        self._names: dict[str | tuple[str, ...], tuple[list[str], int]] = {}
        self._chars = 0

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"<AcceptedTargets [{len(self._names)} expressions, {self._chars} chars]>"

    def get(self, expr: str | Sequence[str]) -> list[str] | None:
        """The names remembered for ``expr`` (the caller's list: do not change it), or None."""
        key = self._key(expr)
        found = None if key is None else self._names.get(key)
        return None if found is None else found[0]

    def remember(self, expr: str | Sequence[str], names: list[str]) -> None:
        """Keep ``names`` for ``expr`` if it is short enough; evict the oldest past a bound."""
        key = self._key(expr)
        if key is None or key in self._names:
            return
        chars = (len(key) if isinstance(key, str) else sum(map(len, key))) + sum(map(len, names))
        self._names[key] = (names, chars)
        self._chars += chars
        while len(self._names) > self._max_entries or self._chars > self._max_chars:
            oldest = next(iter(self._names))
            self._chars -= self._names.pop(oldest)[1]

    def _key(self, expr: str | Sequence[str]) -> str | tuple[str, ...] | None:
        if isinstance(expr, str):
            return expr if len(expr) <= self._max_expr_chars else None
        items = _items(expr)
        if items is None or len(items) > self._max_expr_chars:
            return None
        return items if sum(map(len, items)) <= self._max_expr_chars else None


def _items(expr: object) -> tuple[str, ...] | None:
    """``expr`` as a tuple of strings, or None when it is neither a string nor a list of them."""
    if isinstance(expr, str):
        return (expr,)
    if not isinstance(expr, list | tuple) or not all(isinstance(i, str) for i in expr):
        return None
    return tuple(expr)


def _tokens(expr: str | Sequence[str], field: str) -> list[str]:
    """Split every string on commas and whitespace, once the expression is known to be within
    its bounds; an expression without a token is an error."""
    items: Sequence[object] = [expr] if isinstance(expr, str) else expr
    if not isinstance(items, Sequence) or not all(isinstance(item, str) for item in items):
        raise InvalidRequestError("expected a string or a list of strings", field=field)
    strings = [str(item) for item in items]
    if len(strings) > MAX_TARGET_TOKENS or sum(map(len, strings)) > MAX_TARGET_CHARS:
        raise InvalidRequestError(
            f"at most {MAX_TARGET_TOKENS} items and {MAX_TARGET_CHARS} characters", field=field
        )
    tokens = [token for item in strings for token in _SEPARATORS.split(item) if token]
    if not tokens:
        raise InvalidRequestError(f"no targets given; {_TOKENS_HELP}", field=field)
    if len(tokens) > MAX_TARGET_TOKENS:
        raise InvalidRequestError(f"at most {MAX_TARGET_TOKENS} tokens", field=field)
    return tokens


class _Fleet:
    """The registry, indexed once per parse: a range or a tag costs the names it stands for,
    not a scan of every instance."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.names = [name for name, _ in registry]
        self._positions: dict[str, int] | None = None
        self._tags: dict[str, list[str]] | None = None

    def position(self, name: str) -> int | None:
        """Where ``name`` is in registry order; None when it is not registered."""
        if self._positions is None:
            self._positions = {name: i for i, name in enumerate(self.names)}
        return self._positions.get(name)

    def tagged(self, tag: str) -> list[str]:
        """The instances carrying ``tag``, in registry order."""
        if self._tags is None:
            self._tags = {}
            for name, tags in self._registry:
                for each in tags:
                    self._tags.setdefault(each, []).append(name)
        return self._tags.get(tag, [])


class _Budget:
    """How many names the expression may still stand for; spent before names are made."""

    def __init__(self, names: int, field: str) -> None:
        self._left = names
        self._field = field

    def spend(self, names: int, token: str) -> None:
        """Take ``names`` from the budget, or refuse the expression naming ``token``."""
        self._left -= names
        if self._left < 0:
            raise InvalidRequestError(
                f"{token!r}: the expression stands for more than the registered instances plus "
                f"{MAX_EXTRA_NAMES} names",
                field=self._field,
            )


def _expand(token: str, fleet: _Fleet, budget: _Budget, field: str) -> list[str]:
    """The names one token stands for (not yet checked against the registry)."""
    if token.lower() == "all":
        return _counted(_everything(fleet, field), token, budget)
    if token[:4].lower() == "tag:":
        return _counted(_tagged(token[4:], fleet, field), token, budget)
    if "-" in token:
        return _range(token, fleet, budget, field)
    if INSTANCE_NAME.fullmatch(token):
        return _counted([token], token, budget)
    raise InvalidRequestError(f"{token!r} is not a target; {_TOKENS_HELP}", field=field)


def _counted(names: list[str], token: str, budget: _Budget) -> list[str]:
    budget.spend(len(names), token)
    return names


def _everything(fleet: _Fleet, field: str) -> list[str]:
    if not fleet.names:
        raise InvalidRequestError("no instances are registered", field=field)
    return fleet.names


def _tagged(tag: str, fleet: _Fleet, field: str) -> list[str]:
    """Every instance carrying ``tag``; a tag that matches nothing is surely a typo."""
    names = fleet.tagged(tag)
    if not names:
        raise InvalidRequestError(f"tag {tag!r} matches no instance", field=field)
    return names


def _range(token: str, fleet: _Fleet, budget: _Budget, field: str) -> list[str]:
    """Letters, numbered names, else a registry slice between two known names; each one's
    size is spent from ``budget`` before its names are made."""
    start, _, end = token.partition("-")
    if not (INSTANCE_NAME.fullmatch(start) and INSTANCE_NAME.fullmatch(end)):
        raise InvalidRequestError(f"{token!r} is not a range; {_TOKENS_HELP}", field=field)
    if len(start) == len(end) == 1 and start.isalpha() and end.isalpha():
        return _letters(start, end, token, budget, field)
    numbered = _numbered(start, end)
    if numbered is not None:
        return _numbers(*numbered, token=token, budget=budget, field=field)
    return _registry_slice(start, end, fleet, token, budget, field)


def _letters(start: str, end: str, token: str, budget: _Budget, field: str) -> list[str]:
    """``A-D`` -> A, B, C, D; both ends in the same case, in ascending order."""
    if start.isupper() != end.isupper() or start > end:
        raise InvalidRequestError(f"{token!r}: letter ranges go upwards in one case", field=field)
    budget.spend(ord(end) - ord(start) + 1, token)
    return [chr(code) for code in range(ord(start), ord(end) + 1)]


def _numbered(start: str, end: str) -> tuple[str, str, str] | None:
    """(prefix, low digits, high digits) for ``w1-w8`` and ``w1-8``, else None."""
    first = _NUMBERED.fullmatch(start)
    if first is None:
        return None
    prefix, low = first.groups()
    if end.isdigit():
        return prefix, low, end
    last = _NUMBERED.fullmatch(end)
    if last is None or last.group(1) != prefix:
        return None
    return prefix, low, last.group(2)


def _numbers(
    prefix: str, low: str, high: str, *, token: str, budget: _Budget, field: str
) -> list[str]:
    """``n01-n03`` -> n01, n02, n03: zero padding is kept when both ends share its width."""
    padded = _is_padded(low) or _is_padded(high)
    if padded and len(low) != len(high):
        raise InvalidRequestError(f"{token!r}: both ends need the same zero padding", field=field)
    first, last = int(low), int(high)
    if first > last:
        raise InvalidRequestError(f"{token!r}: the range goes downwards", field=field)
    if last - first >= MAX_RANGE_SIZE:
        raise InvalidRequestError(f"{token!r}: more than {MAX_RANGE_SIZE} names", field=field)
    budget.spend(last - first + 1, token)
    width = len(low) if padded else 0
    return [f"{prefix}{str(number).zfill(width)}" for number in range(first, last + 1)]


def _is_padded(digits: str) -> bool:
    return len(digits) > 1 and digits.startswith("0")


def _registry_slice(
    start: str, end: str, fleet: _Fleet, token: str, budget: _Budget, field: str
) -> list[str]:
    """``alpha-gamma`` -> the registered names from alpha to gamma, inclusive."""
    low, high = fleet.position(start), fleet.position(end)
    if low is None or high is None:
        raise InvalidRequestError(
            f"{token!r}: a range needs single letters, numbered names or two known instances",
            field=field,
        )
    if low > high:
        raise InvalidRequestError(f"{token!r}: {end} comes before {start}", field=field)
    budget.spend(high - low + 1, token)
    return fleet.names[low : high + 1]
