"""Edit one key of a JSON5 file (OpenClaw's ``openclaw.json``) in place, keeping the rest.

OpenClaw reads its config as JSON5 (comments, trailing commas, unquoted keys, single
quotes) and its own writers re-serialise the whole file as plain JSON, dropping comments
(``docs/cli/config.md``). An installer should not do that to a file a person keeps, so
:func:`set_value` parses the text once, remembers where every value sits, and splices in
the one value it changes: every other byte — comments, key order, quoting, blank lines —
stays as it was. The result is parsed again and compared with what was meant before it is
returned, so a splice can never silently write something else.

Only what JSON5 defines is read (ECMAScript identifiers as keys, ``//`` and ``/* */``
comments, hex numbers, ``Infinity``/``NaN``, line continuations in strings); anything
else is a :class:`Json5Error` naming the line and column.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Json5Error", "Node", "loads", "parse", "set_value"]

_NUMBER = re.compile(
    r"[+-]?(?:Infinity|NaN|0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
)
_IDENT = re.compile(r"[^\W\d]|[$_]")
_IDENT_REST = re.compile(r"[\w$\u200c\u200d]*")
_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_ESCAPES = {
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "0": "\0",
}
_LINE_BREAKS = "\n\r\u2028\u2029"
_LITERALS = {"true": True, "false": False, "null": None}


class Json5Error(ValueError):
    """The text is not JSON5 (the message names the line and column)."""


@dataclass
class Node:
    """One value of the document and where it sits: ``text[start:end]``. An object's
    members keep their key's offset, so an insertion can copy its indentation."""

    start: int
    end: int
    value: Any
    members: dict[str, tuple[int, Node]] = field(default_factory=dict)
    is_object: bool = False


class _Parser:
    """Recursive descent over ``text``; ``pos`` is the next character to read."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, pos: int | None = None) -> Json5Error:
        at = self.pos if pos is None else pos
        line = self.text.count("\n", 0, at) + 1
        column = at - (self.text.rfind("\n", 0, at) + 1) + 1
        return Json5Error(f"{message} at line {line}, column {column}")

    def skip(self) -> None:
        """Past whitespace and comments."""
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char.isspace() or char == "\ufeff":
                self.pos += 1
            elif text.startswith("//", self.pos):
                ends = [text.find(b, self.pos) for b in _LINE_BREAKS]
                found = [e for e in ends if e >= 0]
                self.pos = min(found) if found else len(text)
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.fail("unterminated comment")
                self.pos = end + 2
            else:
                return

    def document(self) -> Node:
        self.skip()
        node = self.value()
        self.skip()
        if self.pos != len(self.text):
            raise self.fail("unexpected text after the value")
        return node

    def value(self) -> Node:
        if self.pos >= len(self.text):
            raise self.fail("unexpected end of text")
        char = self.text[self.pos]
        if char == "{":
            return self.object()
        if char == "[":
            return self.array()
        start = self.pos
        if char in "\"'":
            text = self.string()
            return Node(start, self.pos, text)
        for word, literal in _LITERALS.items():
            if self.text.startswith(word, start) and not self._ident_follows(start + len(word)):
                self.pos = start + len(word)
                return Node(start, self.pos, literal)
        number = self.number()
        return Node(start, self.pos, number)

    def _ident_follows(self, at: int) -> bool:
        return at < len(self.text) and bool(_IDENT_REST.match(self.text, at).group())  # type: ignore[union-attr]

    def number(self) -> float | int:
        match = _NUMBER.match(self.text, self.pos)
        if match is None or self._ident_follows(match.end()):
            raise self.fail("expected a value")
        self.pos = match.end()
        word = match.group()
        sign = -1 if word.startswith("-") else 1
        bare = word.lstrip("+-")
        if bare == "Infinity":
            return sign * math.inf
        if bare == "NaN":
            return math.nan
        if bare[:2] in ("0x", "0X"):
            return sign * int(bare, 16)
        number = float(bare)
        is_integer = not any(c in bare for c in ".eE")
        return sign * int(bare) if is_integer else sign * number

    def string(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise self.fail("unterminated string")
            char = text[self.pos]
            self.pos += 1
            if char == quote:
                return "".join(out)
            if char in "\n\r":
                raise self.fail("line break in a string", self.pos - 1)
            if char != "\\":
                out.append(char)
                continue
            out.append(self.escape())

    def escape(self) -> str:
        text = self.text
        if self.pos >= len(text):
            raise self.fail("unterminated string")
        char = text[self.pos]
        self.pos += 1
        if char in _LINE_BREAKS:  # a line continuation
            if char == "\r" and text.startswith("\n", self.pos):
                self.pos += 1
            return ""
        if char in _ESCAPES:
            return _ESCAPES[char]
        if char in "xu":
            width = 2 if char == "x" else 4
            digits = text[self.pos : self.pos + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise self.fail(f"bad \\{char} escape")
            self.pos += width
            return chr(int(digits, 16))
        return char

    def key(self) -> str:
        char = self.text[self.pos] if self.pos < len(self.text) else ""
        if char in ('"', "'"):
            return self.string()
        if not char or not _IDENT.match(char):
            raise self.fail("expected a key")
        match = _IDENT_REST.match(self.text, self.pos + 1)
        end = match.end() if match else self.pos + 1
        word = self.text[self.pos : end]
        self.pos = end
        return word

    def object(self) -> Node:
        node = Node(self.pos, self.pos, {}, is_object=True)
        self.pos += 1
        while True:
            self.skip()
            if self.text.startswith("}", self.pos):
                break
            key_at = self.pos
            key = self.key()
            self.skip()
            if not self.text.startswith(":", self.pos):
                raise self.fail("expected ':'")
            self.pos += 1
            self.skip()
            member = self.value()
            node.members[key] = (key_at, member)
            node.value[key] = member.value
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("}", self.pos):
                raise self.fail("expected ',' or '}'")
        self.pos += 1
        node.end = self.pos
        return node

    def array(self) -> Node:
        node = Node(self.pos, self.pos, [])
        self.pos += 1
        while True:
            self.skip()
            if self.text.startswith("]", self.pos):
                break
            node.value.append(self.value().value)
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("]", self.pos):
                raise self.fail("expected ',' or ']'")
        self.pos += 1
        node.end = self.pos
        return node


def parse(text: str) -> Node:
    """The document's root value with the position of everything in it."""
    return _Parser(text).document()


def loads(text: str) -> Any:
    """The document's value (dicts, lists, str, int, float, bool, None)."""
    return parse(text).value


def _line_indent(text: str, at: int) -> str:
    """The whitespace that starts the line holding offset ``at``."""
    start = text.rfind("\n", 0, at) + 1
    line = text[start:at]
    return line[: len(line) - len(line.lstrip(" \t"))]


@dataclass(frozen=True, slots=True)
class _Style:
    """How new text should look: the file's indentation step and key quoting."""

    step: str
    quote_keys: bool

    def key(self, key: str) -> str:
        return key if not self.quote_keys and _PLAIN_KEY.match(key) else json.dumps(key)

    def render(self, value: Any, indent: str) -> str:
        """``value`` as JSON5 text whose inner lines start at ``indent`` + one step."""
        inner = indent + self.step
        if isinstance(value, dict) and value:
            items = [f"{inner}{self.key(k)}: {self.render(v, inner)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}"
        if isinstance(value, list) and value:
            items = [f"{inner}{self.render(v, inner)}" for v in value]
            return "[\n" + ",\n".join(items) + "\n" + indent + "]"
        return json.dumps(value, ensure_ascii=False)


def _style(text: str, root: Node) -> _Style:
    """The style of the root object's first member (two spaces and quoted keys if none)."""
    if not root.members:
        return _Style("  ", quote_keys=True)
    key_at, _ = next(iter(root.members.values()))
    step = _line_indent(text, key_at) or "  "
    return _Style(step, quote_keys=text[key_at] in "\"'")


def _append_after(text: str, end: int, member: str) -> str:
    """``member`` (starting with its line break) after the value ending at ``end``: after a
    ``//`` comment that ends the value's line, else right after the value, with the
    separating comma where JSON5 needs it and a trailing comma kept trailing."""
    at = end
    while at < len(text) and text[at] in " \t":
        at += 1
    has_comma = text.startswith(",", at)
    after = at + 1 if has_comma else at
    while after < len(text) and text[after] in " \t":
        after += 1
    if not text.startswith("//", after):
        return text[:end] + "," + member + text[end:]
    breaks = [found for b in _LINE_BREAKS if (found := text.find(b, after)) >= 0]
    eol = min(breaks) if breaks else len(text)
    comma = "" if has_comma else ","
    trailing = "," if has_comma else ""
    return text[:end] + comma + text[end:eol] + member + trailing + text[eol:]


def _insert(text: str, obj: Node, key: str, value: Any, style: _Style) -> str:
    """``text`` with member ``key: value`` added at the end of object ``obj``."""
    if obj.members:
        key_at, last = list(obj.members.values())[-1]
        indent = _line_indent(text, key_at)
        member = f"{style.key(key)}: {style.render(value, indent)}"
        return _append_after(text, last.end, f"\n{indent}{member}")
    outer = _line_indent(text, obj.start)
    indent = outer + style.step
    member = f"{style.key(key)}: {style.render(value, indent)}"
    close = obj.end - 1
    body = text[obj.start + 1 : close].rstrip()
    return text[: obj.start + 1] + body + f"\n{indent}{member}\n{outer}" + text[close:]


def _with_value(tree: Any, path: Sequence[str], value: Any) -> Any:
    """A copy of ``tree`` with ``value`` at ``path`` (objects created on the way)."""
    if not path:
        return value
    base = dict(tree) if isinstance(tree, dict) else {}
    base[path[0]] = _with_value(base.get(path[0]), path[1:], value)
    return base


def set_value(text: str, path: Sequence[str], value: Any) -> str:
    """``text`` with ``value`` at ``path`` (a key per level), every other byte kept.

    Objects missing on the way are created; a non-object on the way is a
    :class:`Json5Error`. An empty (or blank) text is an empty object. Unchanged text when
    the value is already there."""
    if not path:
        raise ValueError("path: at least one key")
    source = text if text.strip() else "{}\n"
    root = parse(source)
    if not root.is_object:
        raise Json5Error("the config is not an object")
    style = _style(source, root)
    node, depth = root, 0
    while True:
        key = path[depth]
        if key not in node.members:
            rest = _with_value(None, path[depth + 1 :], value)
            result = _insert(source, node, key, rest, style)
            break
        key_at, child = node.members[key]
        if depth == len(path) - 1:
            if child.value == value:
                return text
            rendered = style.render(value, _line_indent(source, key_at))
            result = source[: child.start] + rendered + source[child.end :]
            break
        if not child.is_object:
            where = ".".join(path[: depth + 1])
            raise Json5Error(f"{where} is not an object")
        node, depth = child, depth + 1
    if loads(result) != _with_value(root.value, path, value):  # pragma: no cover - a bug guard
        raise RuntimeError("JSON5 splice produced a different document")
    return result
