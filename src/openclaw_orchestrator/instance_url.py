"""Instance URLs and health paths, checked where they enter (config, registration) with
yarl, the parser aiohttp and the lean client use, so what passes here is what they send.

An instance URL is ``http(s)://host[:port][/prefix]``, ASCII, at most
:data:`MAX_URL_LENGTH` characters: a host name or a literal address (a numeric host must be
a canonical dotted IPv4 address, never ``127.1`` or ``2130706433``), a port in 1–65535,
no userinfo (the instance's token goes in ``credentials``), no query or fragment, no
backslash, whitespace or control character, no ``.``/``..`` or empty path segment.

A health path is a path: it starts with one ``/`` and is at most :data:`MAX_PATH_LENGTH`
characters of RFC 3986 path characters without ``@``, ``.``/``..`` or empty segments.
:func:`join_path` then appends it to the instance URL and checks that the result still
names the instance's host and port, so no path can send a request elsewhere.
"""

from __future__ import annotations

import ipaddress
import re

from yarl import URL

from .domain.addresses import parse_address

__all__ = [
    "MAX_PATH_LENGTH",
    "MAX_URL_LENGTH",
    "check_health_path",
    "check_instance_url",
    "join_path",
    "url_host",
]

MAX_URL_LENGTH = 2048
"""Longest instance URL accepted."""
MAX_PATH_LENGTH = 1024
"""Longest health path accepted."""

_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_PATH_RE = re.compile(r"^(?:/(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*)*$")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_NUMERIC_LABEL_RE = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)
_USERINFO = (
    "must not contain userinfo (user:password@); give the instance's token in 'credentials' instead"
)


def _check_characters(value: str, *, limit: int) -> None:
    if len(value) > limit:
        raise ValueError(f"longer than {limit} characters")
    if not value.isascii():
        raise ValueError("must be ASCII (write an international host name in its xn-- form)")
    if _FORBIDDEN_CHARS.search(value):
        raise ValueError("must not contain spaces, control characters or backslashes")


def _check_path(path: str) -> None:
    """A path of plain segments: no ``.``, ``..`` or empty ones, only path characters."""
    if not _PATH_RE.match(path):
        raise ValueError("the path may hold only RFC 3986 path characters, without '@'")
    segments = [s.lower().replace("%2e", ".") for s in path.split("/")[1:]]
    if "" in segments[:-1] or any(s in (".", "..") for s in segments):  # "/healthz/" is fine
        raise ValueError("the path must not contain empty, '.' or '..' segments")


def _check_host(host: str | None, *, bracketed: bool) -> None:
    if not host:
        raise ValueError("has no host")
    if parse_address(host) is not None:
        return
    if bracketed:
        raise ValueError(f"host [{host}] is not an IPv6 address")
    last = host.rstrip(".").rpartition(".")[2]
    if _NUMERIC_LABEL_RE.match(last):  # a number: the URL standard reads it as IPv4
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"host {host!r} is not a canonical IPv4 address") from None
    elif not _HOST_NAME_RE.match(host):
        raise ValueError(f"host {host!r} is not a valid host name")


def check_instance_url(value: str) -> str:
    """``value`` without its trailing ``/``; ValueError says what is wrong (never echoing
    the URL, which may hold a secret)."""
    _check_characters(value, limit=MAX_URL_LENGTH)
    if "?" in value or "#" in value:
        raise ValueError("must not have a query (?) or fragment (#)")
    try:
        url = URL(value)
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {str(exc).removeprefix('Invalid URL: ')}") from None
    if url.scheme not in ("http", "https") or not value.lower().startswith(url.scheme + "://"):
        raise ValueError("must be an http:// or https:// URL")
    if "@" in value:  # the path may not hold one, so this is userinfo, even an empty one
        raise ValueError(_USERINFO)
    normal = value.rstrip("/")
    authority, slash, path = normal.split("://", 1)[1].partition("/")
    _check_host(url.raw_host, bracketed=authority.startswith("["))
    if not 1 <= (url.port or 0) <= 65535:
        raise ValueError("the port must be 1-65535")
    _check_path(slash + path)
    return normal


def check_health_path(value: str) -> str:
    """``value`` when it is a path (module docstring); ValueError says what is wrong."""
    _check_characters(value, limit=MAX_PATH_LENGTH)
    if not value.startswith("/") or value.startswith("//"):
        raise ValueError("must be a path starting with a single '/', e.g. /healthz")
    if "?" in value or "#" in value:
        raise ValueError("must be a path, without a query (?) or fragment (#)")
    _check_path(value)
    return value


def url_host(url: str) -> str:
    """The host an instance URL names, as the clients connect to it (IPv6 unbracketed)."""
    return URL(url).raw_host or ""


def join_path(base: str, path: str) -> URL:
    """``base`` (an instance URL) with ``path`` appended; ValueError when the result would
    not be ``base``'s host and port, whatever ``base`` and ``path`` hold."""
    origin = URL(base)
    joined = URL(base.rstrip("/") + path)
    if joined.raw_authority != origin.raw_authority or joined.scheme != origin.scheme:
        raise ValueError(f"the path {path!r} leads away from the instance's address")
    return joined
