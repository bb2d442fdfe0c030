"""Target expressions as users write them -> the instance names they mean.

A string is split on commas and whitespace; a list's items are each such strings. Tokens::

    A             one instance                  all / ALL     every registered instance
    tag:gpu       every instance tagged gpu     A-D           letters A, B, C, D
    w1-w8, w1-8   w1 ... w8                     n01-n03       n01, n02, n03 (padding kept)
    alpha-gamma   registry order from alpha to gamma (both must be known)

Names cannot contain ``-``, ``,`` or spaces, so a range is never ambiguous. The result is
de-duplicated in first-occurrence order, and every unknown name is reported in one error so a
user fixes the expression in one go.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Sequence

from ..errors import InvalidRequestError

__all__ = ["INSTANCE_NAME", "MAX_RANGE_SIZE", "Registry", "parse_targets", "plain_names"]

INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:]{0,63}")
MAX_RANGE_SIZE = 1024  # a typo like w1-w1000000 must not allocate a million names

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
    expanded = _unique([name for token in tokens for name in _expand(token, registry, field)])
    known = [name for name, _ in registry]
    registered = frozenset(known)
    unknown = [name for name in expanded if name not in registered]
    if unknown:
        raise InvalidRequestError(
            f"unknown instance(s): {', '.join(unknown)}; known: {', '.join(known) or '(none)'}",
            field=field,
            details={"unknown": unknown, "known": known},
        )
    return expanded


def plain_names(expr: str | Sequence[str]) -> list[str] | None:
    """The names ``expr`` lists when it is nothing but plain names (the common request:
    ``["A"]``, ``"A,C"``), deduplicated in order; None when it holds anything
    :func:`parse_targets` must expand (``all``, ``tag:``, ranges) or is malformed. Lets a
    caller that can check membership cheaply skip the full parse. (Remembered: the same
    few expressions come again and again.)"""
    items = (expr,) if isinstance(expr, str) else expr
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        return None
    names = _plain_names(tuple(items))
    return None if names is None else list(names)


@functools.lru_cache(maxsize=1024)
def _plain_names(items: tuple[str, ...]) -> tuple[str, ...] | None:
    names: list[str] = []
    for item in items:
        for token in _SEPARATORS.split(item):
            if not token:
                continue
            if not INSTANCE_NAME.fullmatch(token) or token.lower() == "all":
                return None
            if token[:4].lower() == "tag:":
                return None
            names.append(token)
    return tuple(_unique(names)) if names else None


def _tokens(expr: str | Sequence[str], field: str) -> list[str]:
    """Split every string on commas and whitespace; an expression without a token is an error."""
    items: Sequence[object] = [expr] if isinstance(expr, str) else expr
    if not isinstance(items, Sequence) or not all(isinstance(item, str) for item in items):
        raise InvalidRequestError("expected a string or a list of strings", field=field)
    tokens = [token for item in items for token in _SEPARATORS.split(str(item)) if token]
    if not tokens:
        raise InvalidRequestError(f"no targets given; {_TOKENS_HELP}", field=field)
    return tokens


def _expand(token: str, registry: Registry, field: str) -> list[str]:
    """The names one token stands for (not yet checked against the registry)."""
    if token.lower() == "all":
        return _everything(registry, field)
    if token[:4].lower() == "tag:":
        return _tagged(token[4:], registry, field)
    if "-" in token:
        return _range(token, registry, field)
    if INSTANCE_NAME.fullmatch(token):
        return [token]
    raise InvalidRequestError(f"{token!r} is not a target; {_TOKENS_HELP}", field=field)


def _everything(registry: Registry, field: str) -> list[str]:
    if not registry:
        raise InvalidRequestError("no instances are registered", field=field)
    return [name for name, _ in registry]


def _tagged(tag: str, registry: Registry, field: str) -> list[str]:
    """Every instance carrying ``tag``; a tag that matches nothing is surely a typo."""
    names = [name for name, tags in registry if tag in tags]
    if not names:
        raise InvalidRequestError(f"tag {tag!r} matches no instance", field=field)
    return names


def _range(token: str, registry: Registry, field: str) -> list[str]:
    """Letters, numbered names, else a registry slice between two known names."""
    start, _, end = token.partition("-")
    if not (INSTANCE_NAME.fullmatch(start) and INSTANCE_NAME.fullmatch(end)):
        raise InvalidRequestError(f"{token!r} is not a range; {_TOKENS_HELP}", field=field)
    if len(start) == len(end) == 1 and start.isalpha() and end.isalpha():
        return _letters(start, end, token, field)
    numbered = _numbered(start, end)
    if numbered is not None:
        return _numbers(*numbered, token=token, field=field)
    return _registry_slice(start, end, registry, token, field)


def _letters(start: str, end: str, token: str, field: str) -> list[str]:
    """``A-D`` -> A, B, C, D; both ends in the same case, in ascending order."""
    if start.isupper() != end.isupper() or start > end:
        raise InvalidRequestError(f"{token!r}: letter ranges go upwards in one case", field=field)
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


def _numbers(prefix: str, low: str, high: str, *, token: str, field: str) -> list[str]:
    """``n01-n03`` -> n01, n02, n03: zero padding is kept when both ends share its width."""
    padded = _is_padded(low) or _is_padded(high)
    if padded and len(low) != len(high):
        raise InvalidRequestError(f"{token!r}: both ends need the same zero padding", field=field)
    first, last = int(low), int(high)
    if first > last:
        raise InvalidRequestError(f"{token!r}: the range goes downwards", field=field)
    if last - first >= MAX_RANGE_SIZE:
        raise InvalidRequestError(f"{token!r}: more than {MAX_RANGE_SIZE} names", field=field)
    width = len(low) if padded else 0
    return [f"{prefix}{str(number).zfill(width)}" for number in range(first, last + 1)]


def _is_padded(digits: str) -> bool:
    return len(digits) > 1 and digits.startswith("0")


def _registry_slice(start: str, end: str, registry: Registry, token: str, field: str) -> list[str]:
    """``alpha-gamma`` -> the registered names from alpha to gamma, inclusive."""
    names = [name for name, _ in registry]
    if start not in names or end not in names:
        raise InvalidRequestError(
            f"{token!r}: a range needs single letters, numbered names or two known instances",
            field=field,
        )
    low, high = names.index(start), names.index(end)
    if low > high:
        raise InvalidRequestError(f"{token!r}: {end} comes before {start}", field=field)
    return names[low : high + 1]


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
