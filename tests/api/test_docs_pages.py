"""``/docs`` and ``/redoc`` work offline (every asset comes from the orchestrator itself, no
CDN), and ``/`` points a newcomer at them; all without an API key.

The browser test loads the pages in headless Chromium with every host but 127.0.0.1
unreachable, as on a machine without internet, and looks for the rendered operations.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ..conftest import IN_CI
from .conftest import Cluster, start_cluster

ASSET_TYPES = {
    ".css": {"text/css"},
    ".js": {"text/javascript", "application/javascript"},
    ".png": {"image/png"},
    ".json": {"application/json"},
}
ABSOLUTE_URL = re.compile(r"""https?://[^\s"'<>]+""")
SWAGGER_SPEC_URL = re.compile(r"""url: '([^']+)'""")
REDOC_SPEC_URL = re.compile(r"""spec-url="([^"]+)\"""")
BROWSER_TIMEOUT = 60.0
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in CI containers
    "--disable-gpu",
    "--proxy-server=127.0.0.1:9",  # nothing listens there; loopback bypasses proxies
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--virtual-time-budget=10000",  # run the page's scripts until idle, up to 10 s of page time
)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """One echo instance behind an orchestrator with an API key (the pages need none)."""
    async with start_cluster("A") as c:
        yield c


class _References(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


async def page(cluster: Cluster, path: str, accept: str = "*/*") -> tuple[int, str, str]:
    """GET ``path`` without an API key: status, content type, text."""
    async with cluster.http.get(cluster.url + path, headers={"Accept": accept}) as resp:
        return resp.status, resp.content_type, await resp.text()


def references(html: str, spec_url: re.Pattern[str]) -> list[str]:
    """The assets and the schema a docs page loads."""
    parser = _References()
    parser.feed(html)
    return [*parser.urls, *spec_url.findall(html)]


@pytest.mark.parametrize(
    ("path", "spec_url", "kinds"),
    [
        ("/docs", SWAGGER_SPEC_URL, {".css", ".js", ".png", ".json"}),
        ("/redoc", REDOC_SPEC_URL, {".js", ".png", ".json"}),
    ],
    ids=["docs", "redoc"],
)
async def test_docs_page_loads_only_same_origin_assets(
    cluster: Cluster, path: str, spec_url: re.Pattern[str], kinds: set[str]
) -> None:
    """The docs page names no other host, and every asset it loads answers 200 with its
    content type, without an API key."""
    status, kind, html = await page(cluster, path)
    assert (status, kind) == (200, "text/html")
    assert [url for url in ABSOLUTE_URL.findall(html) if not url.startswith(cluster.url)] == []
    urls = references(html, spec_url)
    assert {Path(url).suffix for url in urls} == kinds
    for url in urls:
        assert url.startswith("/"), url
        async with cluster.http.get(cluster.url + url) as resp:
            await resp.read()
            assert resp.status == 200, url
            assert resp.content_type in ASSET_TYPES[Path(url).suffix], url


async def test_root_points_to_the_docs(cluster: Cluster) -> None:
    """GET / without a key: JSON links to the dashboard, docs, schema and health; HTML for a
    browser; never the API key."""
    status, kind, text = await page(cluster, "/")
    assert (status, kind) == (200, "application/json")
    links = {"dashboard": "/ui", "docs": "/docs", "redoc": "/redoc", "openapi": "/openapi.json"}
    body = json.loads(text)
    assert body == {
        "name": "openclaw-orchestrator",
        "version": body["version"],
        **links,
        "health": "/api/health/check",
    }
    status, kind, html = await page(cluster, "/", accept="text/html,application/xhtml+xml")
    assert (status, kind) == (200, "text/html")
    for url in [*links.values(), "/api/health/check"]:
        assert f'href="{url}"' in html
    assert cluster.api_key not in text + html
    for url in links.values():
        assert (await page(cluster, url))[0] == 200


async def test_asset_paths_stay_inside_the_assets(cluster: Cluster) -> None:
    """An encoded ``..`` under the assets path reaches no file beside them (the package's own
    modules sit one level up)."""
    for path in ("/docs/assets/%2e%2e/__init__.py", "/docs/assets/..%2fcore.py"):
        assert (await page(cluster, path))[0] == 404


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        ("/docs", 'class="opblock-summary-path" data-path="/api/orchestrator/route"'),
        ("/redoc", 'id="tag/orchestrator/operation/route_api_orchestrator_route_post"'),
    ],
    ids=["docs", "redoc"],
)
async def test_docs_render_offline_in_a_browser(
    cluster: Cluster, tmp_path: Path, path: str, rendered: str
) -> None:
    """Headless Chromium with no network but loopback renders the page's operations."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        reason = "chromium is not installed (.ci/run installs it)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    proc = await asyncio.create_subprocess_exec(
        browser, *OFFLINE_FLAGS, f"--user-data-dir={tmp_path}", "--dump-dom", cluster.url + path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        dom, _ = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rendered in dom.decode(), dom.decode()[-2000:]
