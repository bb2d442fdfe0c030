"""Instance URLs and health paths: what yarl-backed checks accept, refuse and why."""

from __future__ import annotations

import pytest

from openclaw_orchestrator.instance_url import (
    MAX_PATH_LENGTH,
    MAX_URL_LENGTH,
    check_health_path,
    check_instance_url,
    join_path,
)

BAD_URLS = [
    ("http://127.0.0.1:1x", "port"),
    ("http://127.0.0.1:99999", "Port out of range"),
    ("http://127.0.0.1:0", "port must be 1-65535"),
    ("http://[::1", "IPv6"),
    ("http://[v1.x]:80", "not an IPv6 address"),
    ("http://127.0.0.1\\@evil:80", "backslash"),
    ("http://a b:80", "spaces"),
    ("http://h:80/\x00", "control"),
    ("http://:80", "host"),
    ("http:///x", "no host"),
    ("http://user:pw@127.0.0.1:80", "credentials"),
    ("http://@127.0.0.1:80", "credentials"),
    ("http://127.0.0.1:80?x=1", "query"),
    ("http://127.0.0.1:80#top", "fragment"),
    ("http://127.0.0.1:80/a/../b", "'..'"),
    ("http://127.0.0.1:80/a/%2E%2E/b", "'..'"),
    ("http://127.0.0.1:80//b", "empty"),
    ("http://127.1:80", "canonical IPv4"),
    ("http://2130706433:80", "canonical IPv4"),
    ("http://0x7f.0.0.1:80", "canonical IPv4"),
    ("http://ex%41mple:80", "not a valid host name"),
    ("http://bücher.example", "ASCII"),
    ("ftp://127.0.0.1:21", "http:// or https://"),
    ("127.0.0.1:80", "http:// or https://"),
    ("http://h/" + "a" * MAX_URL_LENGTH, f"longer than {MAX_URL_LENGTH}"),
]


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_malformed_urls_are_refused(url: str, why: str) -> None:
    """Each malformed URL is a ValueError saying what is wrong, never echoing a password."""
    with pytest.raises(ValueError, match=r".") as refused:
        check_instance_url(url)
    assert why in str(refused.value)
    assert "pw" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://127.0.0.1:18801", "http://127.0.0.1:18801"),
        ("http://127.0.0.1:18801/", "http://127.0.0.1:18801"),
        ("https://gw.example.com/prefix/v1/", "https://gw.example.com/prefix/v1"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("http://localhost", "http://localhost"),
        ("http://my_host.internal:80", "http://my_host.internal:80"),
    ],
)
def test_good_urls_pass_without_their_trailing_slash(url: str, normal: str) -> None:
    """Well-formed URLs pass, a trailing slash dropped (paths are appended to them)."""
    assert check_instance_url(url) == normal


@pytest.mark.parametrize(
    "path",
    [
        "@127.0.0.1:9/x",
        "//evil.example/x",
        "healthz",
        "/a/../b",
        "/a/%2e%2E/b",
        "/h?full=1",
        "/h#x",
        "/a@b",
        "/a b",
        "/a\\b",
        "/a\r\nX: y",
        "/a//b",
        "/" + "a" * MAX_PATH_LENGTH,
    ],
)
def test_bad_health_paths_are_refused(path: str) -> None:
    """A health path must be a path of plain segments, nothing that could change the host."""
    with pytest.raises(ValueError, match=r"."):
        check_health_path(path)


@pytest.mark.parametrize("path", ["/healthz", "/readyz/", "/api/health/check", "/v1/x:y~z"])
def test_good_health_paths_pass(path: str) -> None:
    """Plain paths pass unchanged."""
    assert check_health_path(path) == path


def test_join_path_stays_on_the_instance() -> None:
    """join_path appends under the URL's prefix and refuses a path that would leave it."""
    assert str(join_path("http://h:1/gw", "/healthz")) == "http://h:1/gw/healthz"
    with pytest.raises(ValueError, match="leads away"):
        join_path("http://127.0.0.1:1", "@127.0.0.1:2/x")
