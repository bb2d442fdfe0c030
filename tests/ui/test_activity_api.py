"""The activity feed and the dashboard's login over real HTTP: a real orchestrator with
reference instances (``start_cluster``), driven with aiohttp as a browser would be.

Proves: routes (with a failover), fanouts and health changes land in the feed with their
attempts and skips; pages of the feed follow their cursor; the instances view shows
in-flight work and a down instance's ejection; the stream pushes entries live and resumes
by ``Last-Event-ID``; the login cookie is derived from the key, HttpOnly and SameSite=Strict,
grants reads only, and logout clears it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from openclaw_orchestrator.activity import ActivityPage, InstanceActivity
from openclaw_orchestrator.sdk.async_client import AsyncClient
from openclaw_orchestrator.server.api.security import UI_COOKIE
from tests.api.conftest import Cluster, start_cluster

STREAM_TIMEOUT = 10.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    """A–E behind one orchestrator (module-scoped: D and E are each stopped by one test)."""
    async with start_cluster("ABCDE") as c:
        yield c


pytestmark = pytest.mark.asyncio(loop_scope="module")


async def login(cluster: Cluster, jar: aiohttp.CookieJar | None = None) -> aiohttp.ClientSession:
    """A client session logged in to the dashboard (cookie only, no bearer header)."""
    http = aiohttp.ClientSession(cookie_jar=jar or aiohttp.CookieJar(unsafe=True))
    async with http.post(
        cluster.url + "/ui/login", data={"key": cluster.api_key}, allow_redirects=False
    ) as resp:
        assert resp.status == 303, await resp.text()
        assert resp.headers["Location"] == "/ui"
    return http


async def test_routes_fanouts_and_failover_are_in_the_feed(cluster: Cluster) -> None:
    """A route, a failover past a down instance and a fanout each become an entry with
    the serving instance, attempts, skips and statuses."""
    status, _ = await cluster.post("/api/orchestrator/route", {"instances": ["A"], "payload": {}})
    assert status == 200
    await cluster.stop_instance("D")
    status, body = await cluster.post(
        "/api/orchestrator/route", {"instances": ["D", "C"], "payload": {}}
    )
    assert status == 200, body
    status, fan = await cluster.post("/api/orchestrator/fanout", {"targets": "A-D"})
    assert status == 200, fan
    status, page = await cluster.get("/api/orchestrator/activity?limit=200")
    assert status == 200
    by_request = {e["request_id"]: e for e in page["entries"] if e["request_id"]}
    routed = by_request[body["request_id"]]
    assert routed["kind"] == "route"
    assert routed["instance"] == "C"
    assert routed["outcome"] == "ok"
    assert routed["attempts"] == body["attempts"]
    assert routed["skipped"] == body["skipped"]
    assert routed["targets"] == ["D", "C"]  # D refused (attempts) or skipped as down
    fanned = by_request[fan["request_id"]]
    assert fanned["kind"] == "fanout"
    assert fanned["statuses"] == {r["instance"]: r["status"] for r in fan["results"]}
    assert "result" not in str(fanned)  # statuses only: never a payload or a result
    health = [e for e in page["entries"] if e["kind"] == "health" and e["instance"] == "D"]
    assert any(e["outcome"] == "down" for e in health), health


async def test_a_failed_route_is_in_the_feed_with_its_error(cluster: Cluster) -> None:
    """A route that nothing could serve is recorded with its error code."""
    await cluster.set_faults("B", fail_rate=1.0)
    try:
        status, body = await cluster.post(
            "/api/orchestrator/route", {"instances": ["B"], "payload": {}, "retry": 0}
        )
    finally:
        await cluster.set_faults("B", fail_rate=0.0)
    assert status == 502, body
    _, page = await cluster.get("/api/orchestrator/activity?limit=20")
    [failed] = [
        e
        for e in page["entries"]
        if e["request_id"] == body["error"].get("request_id")
        or (e["kind"] == "route" and e["outcome"] == body["error"]["code"])
    ][:1]
    assert failed["error"]["code"] == body["error"]["code"]
    assert failed["targets"] == ["B"]
    assert [a["outcome"] for a in failed["attempts"]] == ["error"]


async def test_pages_follow_the_cursor(cluster: Cluster) -> None:
    """Pages are newest first, ``next_before`` leads to the older ones, no entry twice."""
    for _ in range(5):
        await cluster.post("/api/orchestrator/route", {"instances": ["A"], "payload": {}})
    seen: list[int] = []
    path = "/api/orchestrator/activity?limit=2"
    for _ in range(3):
        status, page = await cluster.get(path)
        assert status == 200
        ids = [e["id"] for e in page["entries"]]
        assert ids == sorted(ids, reverse=True)
        assert len(ids) == 2
        seen += ids
        path = f"/api/orchestrator/activity?limit=2&before={page['next_before']}"
    assert seen == sorted(set(seen), reverse=True)
    status, body = await cluster.get("/api/orchestrator/activity?limit=0")
    assert status == 400
    assert body["error"]["field"] == "limit"


async def test_instances_show_in_flight_work_and_ejection(cluster: Cluster) -> None:
    """A slow call shows as in flight on its instance; a down instance has an ejection end
    and a timeline ending in ``down``."""
    await cluster.set_faults("C", latency=1.5)
    task = asyncio.create_task(
        cluster.post("/api/orchestrator/route", {"instances": ["C"], "payload": {}})
    )
    try:
        for _ in range(100):
            _, view = await cluster.get("/api/orchestrator/activity/instances")
            c = next(i for i in view["instances"] if i["name"] == "C")
            if c["in_flight"] >= 1:
                break
            await asyncio.sleep(0.02)
        assert c["in_flight"] >= 1, view
    finally:
        await task
        await cluster.set_faults("C", latency=0)
    await cluster.stop_instance("E")
    await cluster.post("/api/orchestrator/route", {"instances": ["E"], "payload": {}, "retry": 0})
    _, view = await cluster.get("/api/orchestrator/activity/instances")
    e = next(i for i in view["instances"] if i["name"] == "E")
    assert e["state"] == "down"
    assert e["ejected_until"] is not None
    assert e["timeline"][-1]["state"] == "down"


async def read_events(resp: aiohttp.ClientResponse, want: int) -> list[dict[str, Any]]:
    """The first ``want`` ``activity`` events of an SSE response (id and JSON data)."""
    found: list[dict[str, Any]] = []
    event: dict[str, Any] = {}
    async with asyncio.timeout(STREAM_TIMEOUT):
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if event.get("event") == "activity":
                    found.append(event)
                    if len(found) == want:
                        return found
                event = {}
                continue
            name, _, value = line.partition(":")
            event[name] = value.strip()
    return found


async def test_the_stream_pushes_entries_and_resumes(cluster: Cluster) -> None:
    """An entry recorded while a client listens arrives at once; reconnecting with
    ``Last-Event-ID`` replays what came after it."""
    url = cluster.url + "/api/orchestrator/activity/stream?interval=5"
    async with cluster.http.get(url, headers=cluster.headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        _, routed = await cluster.post(
            "/api/orchestrator/route", {"instances": ["A"], "payload": {}}
        )
        [first] = await read_events(resp, 1)
    assert orjson.loads(first["data"])["request_id"] == routed["request_id"]
    for _ in range(2):
        await cluster.post("/api/orchestrator/route", {"instances": ["A"], "payload": {}})
    headers = {**cluster.headers, "Last-Event-ID": first["id"]}
    async with cluster.http.get(url, headers=headers) as resp:
        replayed = await read_events(resp, 2)
    assert [int(e["id"]) for e in replayed] == [int(first["id"]) + 1, int(first["id"]) + 2]
    async with cluster.http.get(url, headers={**cluster.headers, "Last-Event-ID": "x"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["field"] == "Last-Event-ID"


async def test_the_feed_needs_the_key(cluster: Cluster) -> None:
    """Without a key or a dashboard cookie the feed is 401."""
    for path in ("", "/instances", "/stream"):
        async with cluster.http.get(cluster.url + "/api/orchestrator/activity" + path) as resp:
            assert resp.status == 401


async def test_login_sets_a_derived_strict_cookie_that_grants_reads_only(cluster: Cluster) -> None:
    """The cookie is HttpOnly, SameSite=Strict, not the key; it reads the feed, health and
    sessions but cannot route (a change needs the bearer key); logout clears it."""
    async with aiohttp.ClientSession() as raw:
        async with raw.post(
            cluster.url + "/ui/login", data={"key": cluster.api_key}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
            cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"{UI_COOKIE}=")
    assert re.search(r"(?i)\bHttpOnly\b", cookie)
    assert re.search(r"(?i)SameSite=Strict", cookie)
    assert "Secure" not in cookie  # plain http on loopback; https adds it
    assert cluster.api_key not in cookie
    http = await login(cluster)
    try:
        for path in (
            "/api/orchestrator/activity",
            "/api/orchestrator/health",
            "/api/orchestrator/sessions",
            "/api/orchestrator/runs",
            "/ui",
        ):
            async with http.get(cluster.url + path, allow_redirects=False) as resp:
                assert resp.status == 200, path
        async with http.post(
            cluster.url + "/api/orchestrator/route", json={"instances": ["A"], "payload": {}}
        ) as resp:
            assert resp.status == 401
        async with http.post(cluster.url + "/ui/logout", allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.get(cluster.url + "/ui", allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/ui/login"
        async with http.get(cluster.url + "/api/orchestrator/activity") as resp:
            assert resp.status == 401
    finally:
        await http.close()


async def test_a_wrong_key_or_forged_cookie_is_refused(cluster: Cluster) -> None:
    """A wrong key shows the form again (401) and sets nothing; a made-up or expired cookie
    grants nothing."""
    async with aiohttp.ClientSession() as http:
        async with http.post(cluster.url + "/ui/login", data={"key": "nope"}) as resp:
            assert resp.status == 401
            assert "Set-Cookie" not in resp.headers
            assert 'role="alert"' in await resp.text()
        for forged in ("9999999999.00", "1.abc", cluster.api_key, ""):
            async with http.get(
                cluster.url + "/api/orchestrator/activity", cookies={UI_COOKIE: forged}
            ) as resp:
                assert resp.status == 401, forged


async def test_ui_pages_load_only_same_origin_assets(cluster: Cluster) -> None:
    """The login page and the dashboard name no other host; their assets are served from
    the package with their content types; every page forbids framing and foreign scripts."""
    http = await login(cluster)
    try:
        for path in ("/ui", "/ui/static/app.js", "/ui/static/app.css"):
            async with http.get(cluster.url + path) as resp:
                text = await resp.text()
                assert resp.status == 200, path
                assert not re.search(r"https?://", text), path
        async with http.get(cluster.url + "/ui") as resp:
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        async with http.get(cluster.url + "/ui/static/app.js") as resp:
            assert resp.content_type in {"text/javascript", "application/javascript"}
    finally:
        await http.close()


async def test_the_sdk_reads_the_feed_typed(cluster: Cluster) -> None:
    """``AsyncClient.activity`` pages with typed entries; ``instances_activity`` lists every
    instance with its in-flight count."""
    status, routed = await cluster.post(
        "/api/orchestrator/route", {"instances": ["A"], "payload": {}}
    )
    assert status == 200
    async with AsyncClient(cluster.url, cluster.api_key) as client:
        page = await client.activity(limit=50)
        older = await client.activity(limit=1, before=page.entries[0].id)
        view = await client.instances_activity()
    assert isinstance(page, ActivityPage)
    assert routed["request_id"] in {e.request_id for e in page.entries}
    assert [e.id for e in older.entries] == [page.entries[0].id - 1]
    assert [i.name for i in view.instances] == list("ABCDE")
    assert all(isinstance(i, InstanceActivity) and i.in_flight >= 0 for i in view.instances)
