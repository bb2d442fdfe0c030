"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright over
its ``executable_path``; no browser is downloaded), against a real orchestrator with eight
reference instances A–H on 127.0.0.1: A–G in the test's process, H a real
``openclaw-orchestrator instance serve`` process that registers itself.

Proves, without a page reload: log in with the key, see eight instances, kill H's process
with SIGKILL and watch its row turn down (and the change announced), open a session's
history, watch a run's events arrive. Screenshots at desktop (1280×800) and phone
(375×812) sizes go to ``$TEST_ARTIFACTS`` (default ``test-artifacts/``); a basic
accessibility check (landmarks, every input labelled, table headers, buttons named) runs on
the login page and the dashboard, and the phone layout never scrolls sideways.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.api.conftest import API_KEY, Cluster, start_cluster
from tests.conftest import IN_CI
from tests.ports import free_port

playwright_api = pytest.importorskip("playwright.async_api")

WAIT_MS = 15_000
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or "test-artifacts")

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("instance_h"),  # every page waits for eight rows
]

A11Y_CHECK = """() => {
  const problems = [];
  const named = (el) => (el.getAttribute('aria-label') || '').trim()
    || (el.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean)
         .map((id) => (document.getElementById(id) || {}).textContent || '').join('').trim()
    || (el.labels && [...el.labels].map((l) => l.textContent).join('').trim());
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden') continue;
    if (!named(el)) problems.push(`unlabelled ${el.tagName} ${el.id || el.name}`);
  }
  for (const el of document.querySelectorAll('button, a[href]')) {
    if (!(el.textContent.trim() || named(el))) problems.push(`unnamed ${el.tagName}`);
  }
  for (const table of document.querySelectorAll('table')) {
    if (!table.querySelector('th')) problems.push(`table ${table.id} has no headers`);
  }
  for (const img of document.querySelectorAll('img')) {
    if (!img.hasAttribute('alt')) problems.push('image without alt');
  }
  if (!document.querySelector('main')) problems.push('no main landmark');
  if (!document.querySelector('header, [role=banner]')) problems.push('no banner landmark');
  if (!document.querySelector('h1')) problems.push('no h1');
  if (!document.documentElement.lang) problems.push('no lang');
  return problems;
}"""


WIDE_ELEMENTS = """(limit) => [...document.querySelectorAll('body *')]
  .filter((el) => !el.closest('.scroll') && el.getBoundingClientRect().right > limit + 1)
  .slice(0, 5).map((el) => `${el.tagName}#${el.id}.${el.className}`)"""
"""What sticks out past ``limit`` pixels, outside the boxes that scroll sideways."""


def chromium() -> str:
    """The system Chromium's path; skip (fail in CI) without it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "chromium is not installed (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    """A–G in process and H as its own process (``instance_h``), behind one orchestrator
    with a SQLite store (sessions and runs)."""
    async with start_cluster("ABCDEFG") as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def instance_h(cluster: Cluster) -> AsyncIterator[asyncio.subprocess.Process]:
    """Instance H as a real process that registers itself with the cluster (as a deployed
    instance does), healthy before the tests start; reaped at the end, whoever killed it.
    Only H is a process: each costs about a second of CPU to start. Its heartbeat TTL is an
    hour so that, once killed, its row stays (down) for the module's later pages."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["ORCHESTRATOR_API_KEY"] = API_KEY
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "openclaw-orchestrator"),
        "instance", "serve", "--name", "H", "--port", str(port), "--register", cluster.url,
        "--heartbeat-ttl", "3600",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while "H" not in {rec.name for rec in cluster.service.registry}:
            assert proc.returncode is None, f"instance H exited with {proc.returncode}"
            assert loop.time() < deadline, "instance H never registered"
            await asyncio.sleep(0.05)
        cluster.instance_urls["H"] = f"http://127.0.0.1:{port}"
        await cluster.wait_state("H", "healthy", timeout=30)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    """Headless system Chromium, for the whole module."""
    path = chromium()
    async with playwright_api.async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=path, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def logged_in(browser: Any, cluster: Cluster, viewport: dict[str, int]) -> Any:
    """A new browser context at ``viewport``, logged in through the form; its page."""
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(cluster.url + "/ui")
    assert page.url == cluster.url + "/ui/login"
    assert await page.evaluate(A11Y_CHECK) == []
    await page.get_by_label("API key").fill(cluster.api_key)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(cluster.url + "/ui")
    await page.wait_for_selector("#instances tbody tr:nth-child(8)")  # the CSP forbids eval
    return page


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


async def test_login_then_eight_instances_and_one_turns_down_live(
    browser: Any, cluster: Cluster, instance_h: asyncio.subprocess.Process
) -> None:
    """Eight rows after login; ``kill -9`` of H's process turns its row down and announces
    it, with no reload (a marker set on the page survives)."""
    page = await logged_in(browser, cluster, DESKTOP)
    try:
        assert await page.evaluate(A11Y_CHECK) == []
        cookies = await page.context.cookies()
        assert all(cluster.api_key not in c["value"] for c in cookies)
        names = await page.locator("#instances tbody th").all_inner_texts()
        assert names == list("ABCDEFGH")
        await page.wait_for_selector("#connection[data-state=live]")
        await page.evaluate("window.__noReload = true")
        status, _ = await cluster.post(
            "/api/orchestrator/route", {"instances": ["A"], "payload": {}}
        )
        assert status == 200
        await page.wait_for_selector("#activity tbody tr[data-kind=route]")
        await page.screenshot(path=artifact("dashboard-desktop.png"), full_page=True)
        os.kill(instance_h.pid, signal.SIGKILL)  # no goodbye: it cannot deregister
        assert await instance_h.wait() == -signal.SIGKILL
        await page.wait_for_selector("#instance-H[data-state=down]")
        assert await page.evaluate("window.__noReload") is True
        await page.wait_for_selector("#announcer p:has-text('Instance H')", state="attached")
        await page.screenshot(path=artifact("dashboard-desktop-H-down.png"), full_page=True)
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement.textContent")
        assert focused == "Skip to content"
    finally:
        await page.context.close()


async def test_a_sessions_history_opens_on_click(browser: Any, cluster: Cluster) -> None:
    """A session spawned and sent to shows in the list; opening it from the keyboard shows
    its messages and moves the focus to them."""
    status, spawned = await cluster.post(
        "/api/orchestrator/sessions/spawn", {"sessionId": "ui-session", "instance": "B"}
    )
    assert status == 201, spawned
    status, sent = await cluster.post(
        "/api/orchestrator/sessions/ui-session/send", {"data": {"said": "hello-dashboard"}}
    )
    assert status == 200, sent
    page = await logged_in(browser, cluster, DESKTOP)
    try:
        button = page.get_by_role("button", name="ui-session")
        await button.focus()
        await page.keyboard.press("Enter")  # a real button: the keyboard opens it
        await page.wait_for_selector("#history:not([hidden])")
        await page.wait_for_selector("#history-table tbody tr")
        text = await page.locator("#history-table").inner_text()
        assert "hello-dashboard" in text
        assert await page.evaluate("document.activeElement.id") == "history-heading"
    finally:
        await page.context.close()


async def test_a_runs_events_arrive_live(browser: Any, cluster: Cluster) -> None:
    """A fanout run over a fast and a slow instance: the fast one's entry shows before the
    result, which arrives later on the same open page."""
    page = await logged_in(browser, cluster, DESKTOP)
    await cluster.set_faults("C", latency=6.0)
    try:
        status, run = await cluster.post(
            "/api/orchestrator/runs", {"kind": "fanout", "targets": ["A", "C"], "payload": {}}
        )
        assert status == 202, run
        await page.get_by_role("button", name=run["run_id"]).click()
        await page.wait_for_selector("#run-events-list li[data-type=entry]")
        assert await page.locator("#run-events-list li[data-type=result]").count() == 0
        await page.wait_for_selector("#run-events-list li[data-type=result]")
        types = await page.locator("#run-events-list li").evaluate_all(
            "items => items.map((item) => item.dataset.type)"
        )
        assert types[-1] == "result"
        assert types.count("entry") == 2
    finally:
        await cluster.set_faults("C", latency=0)
        await page.context.close()


async def test_phone_width_layout(browser: Any, cluster: Cluster) -> None:
    """At 375 px the page does not scroll sideways (wide tables scroll in their box) and
    every section is there."""
    page = await logged_in(browser, cluster, PHONE)
    try:
        width = await page.evaluate("document.documentElement.scrollWidth")
        wide = await page.evaluate(WIDE_ELEMENTS, PHONE["width"])
        assert width <= PHONE["width"], wide
        for heading in ("Instances", "Recent routes and fanouts", "Sessions", "Runs"):
            assert await page.get_by_role("heading", name=heading, exact=True).is_visible()
        await page.screenshot(path=artifact("dashboard-phone.png"), full_page=True)
    finally:
        await page.context.close()
