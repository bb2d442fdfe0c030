"""Bad input is refused at the edge with a 400 naming the field, before anything is delivered
or stored, on SQLite and on the real PostgreSQL; a row poisoned by an older version still
reads; authentication comes before the body; expired tokens are dead on use; the OpenAPI
schema lists what the API really answers; ``reply: "value"`` on fanout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openclaw_orchestrator.domain.sessions import SessionRecord
from openclaw_orchestrator.errors import InvalidRequestError
from openclaw_orchestrator.server.api.strict_json import decode_json
from openclaw_orchestrator.server.composition import open_store
from openclaw_orchestrator.server.stores.sqlite import sqlite_url
from openclaw_orchestrator.settings import Settings

from ..storage_faults import postgres_database
from .conftest import API_KEY, Cluster, start_cluster

S = "/api/orchestrator/sessions"
JSON = {"Content-Type": "application/json"}
SEEN: list[Any] = []
"""Every payload the ``record`` handler's instances received, in this process."""


async def record(payload: Any) -> Any:
    """An instance handler that remembers what it ran (to prove what it did not)."""
    SEEN.append(payload)
    return {"payload": payload}


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database of each kind: a SQLite file, or a new database on the real
    PostgreSQL (dropped after; skipped with the reason when no server answers, failed in CI)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    async with postgres_database() as url:
        yield url


async def raw_post(c: Cluster, path: str, raw: bytes, **headers: str) -> tuple[int, Any]:
    """POST ``raw`` bytes as JSON with the API key (unless headers override it)."""
    async with c.http.post(
        c.url + path, data=raw, headers={**c.headers, **JSON, **headers}
    ) as resp:
        return resp.status, await resp.json()


async def instance_session(c: Cluster, name: str, session_id: str) -> int:
    """The status of the instance's own view of a session: 404 if it never got a message."""
    url = f"{c.instance_urls[name]}/api/instance/sessions/{session_id}"
    async with c.http.get(url) as resp:
        return resp.status


def assert_400(status: int, body: Any, field: str) -> None:
    """A 400 invalid_request naming ``field``."""
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request", body
    assert body["error"]["field"] == field, body


# -- item 1: bounded durations and counts; stored rows always read -------------------------


@pytest.mark.parametrize("ttl", ["99999999999d", 1e308, "31d", 2_592_001, "1" * 400 + "d"])
async def test_absurd_ttl_is_refused_and_nothing_is_stored(store_url: str, ttl: Any) -> None:
    """A spawn with a ttl past 30 days is a 400 naming ttl, and no session is created."""
    async with start_cluster("A", database_url=store_url) as c:
        status, body = await c.post(f"{S}/spawn", {"sessionId": "p1", "ttl": ttl, "instance": "A"})
        assert_400(status, body, "ttl")
        assert "maximum of 30d" in body["error"]["message"]
        assert (await c.get(f"{S}/p1"))[0] == 404
        assert (await c.get(S)) == (200, {"sessions": []})


async def test_a_poisoned_row_still_lists_and_reads(store_url: str) -> None:
    """Rows an older version wrote with absurd times (a 99999999999-day ttl, a time before
    year 1) list and read with their times clamped to the calendar, across a restart."""
    store = open_store(Settings(database_url=store_url))
    await store.open()
    now = time.time()
    poisoned = [
        SessionRecord(id="p1", instance="A", token_hash="h" * 64, ttl=99999999999 * 86400.0,
                      created_at=now, last_active_at=now),
        SessionRecord(id="p2", instance="A", token_hash="h" * 64, ttl=60.0, state="closed",
                      created_at=-1e20, last_active_at=-1e20, closed_at=1e300),
    ]  # fmt: skip
    for row in poisoned:
        await store.create_session(row)
    await store.aclose()
    async with start_cluster("A", database_url=store_url) as c:
        status, listing = await c.get(S)
        assert status == 200, listing
        assert {s["session_id"] for s in listing["sessions"]} == {"p1", "p2"}
        status, p1 = await c.get(f"{S}/p1")
        assert (status, p1["expires_at"]) == (200, "9999-12-30T00:00:00Z")
        status, p2 = await c.get(f"{S}/p2")
        assert status == 200, p2
        assert (p2["created_at"], p2["closed_at"]) == (
            "0001-01-02T00:00:00Z",
            "9999-12-30T00:00:00Z",
        )
        assert (await c.get(f"{S}/p1/history"))[0] == 200
        assert (await c.post(f"{S}/p1/send", {"data": 1}))[0] == 200


BOUNDED_BODIES = [
    ("/api/orchestrator/route", {"retry": False}, "retry"),
    ("/api/orchestrator/fanout", {"retry": True}, "retry"),
    ("/api/orchestrator/fanout", {"top_k": True, "aggregate": "topk"}, "top_k"),
    ("/api/orchestrator/fanout", {"min_success": False}, "min_success"),
    ("/api/orchestrator/fanout", {"quorum": 10_001, "aggregate": "quorum"}, "quorum"),
    (f"{S}/spawn", {"metadata": {"blob": "x" * 17_000}}, "metadata"),
    (f"{S}/s1/send", {"timeout": "1" * 400 + "d"}, "timeout"),
]
BOUNDED_QUERIES = [
    ("/s1/history?offset=9223372036854775808", "offset"),
    ("/s1/history?offset=2147483648", "offset"),
    ("?active_within=1e300", "active_within"),
    ("?active_within=inf", "active_within"),
    ("?instance=A%20B", "instance"),
]


async def test_numbers_from_outside_are_bounded(cluster: Cluster) -> None:
    """Every count, size and query number has a documented maximum (a 400 naming the field,
    never a 500), and a boolean is not an integer; nothing reaches the session."""
    assert (await cluster.post(f"{S}/spawn", {"sessionId": "s1", "instance": "A"}))[0] == 201
    for path, body, field in BOUNDED_BODIES:
        assert_400(*await cluster.post(path, body), field)
    for query, field in BOUNDED_QUERIES:
        assert_400(*await cluster.get(S + query), field)
    assert (await cluster.get(f"{S}/s1"))[1]["messages"] == 0


# -- item 5: NaN/Infinity and the Idempotency-Key, refused before delivery ---------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"data": {"x": NaN}}', "data.x"),
        (b'{"data": [1, {"y": Infinity}]}', "data.1.y"),
        (b'{"data": -Infinity}', "data"),
        (b'{"data": {"big": 1e400}}', "data.big"),
    ],
)
async def test_non_finite_numbers_never_reach_the_instance(
    store_url: str, raw: bytes, field: str
) -> None:
    """NaN/Infinity in a session send is a 400 naming the field; the instance never saw the
    message and the next send is seq 1 (the PostgreSQL 500 came after the instance ran it)."""
    async with start_cluster("A", database_url=store_url) as c:
        await c.post(f"{S}/spawn", {"sessionId": "n1", "instance": "A"})
        assert_400(*await raw_post(c, f"{S}/n1/send", raw), field)
        seed_form = b'{"sessionId": "n1", ' + raw[1:]
        assert_400(*await raw_post(c, f"{S}/send", seed_form), field)
        assert await instance_session(c, "A", "n1") == 404
        status, reply = await c.post(f"{S}/n1/send", {"data": 1})
        assert (status, reply["seq"], reply["reply"]["session"]["seen"]) == (200, 1, 1)


async def test_non_finite_metadata_is_refused_on_spawn(store_url: str) -> None:
    """A spawn with NaN in its metadata is a 400 naming metadata.score; nothing is stored."""
    async with start_cluster("A", database_url=store_url) as c:
        raw = b'{"sessionId": "m1", "instance": "A", "metadata": {"score": NaN}}'
        assert_400(*await raw_post(c, f"{S}/spawn", raw), "metadata.score")
        assert (await c.get(f"{S}/m1"))[0] == 404


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/api/orchestrator/route", b'{"payload": {"x": NaN}}', "payload.x"),
        ("/api/orchestrator/fanout", b'{"payload": [Infinity]}', "payload.0"),
        ("/api/orchestrator/fanout", b'{"payload": 1, "timeout": NaN}', "timeout"),
        ("/api/cluster/register", b'{"name": "Z", "url": "http://127.0.0.1:9", "weight": NaN}',
         "weight"),
    ],
)  # fmt: skip
async def test_non_finite_numbers_are_refused_on_every_route(
    path: str, raw: bytes, field: str
) -> None:
    """Route, fanout (the fast path's endpoints) and registration refuse NaN/Infinity with
    a 400 naming the field; no instance runs anything."""
    SEEN.clear()
    async with start_cluster("AB", handler=f"{__name__}:record") as c:
        assert_400(*await raw_post(c, path, raw), field)
        assert_400(*await raw_post(c, path, raw, **{"Idempotency-Key": "k1"}), field)
        assert "Z" not in c.service.registry
    assert SEEN == []


@pytest.mark.parametrize(
    "key",
    ["k" * 256, "k" * 300, "has space", "tab\there", ""],
    ids=["256", "300", "sp", "tab", "empty"],
)
async def test_bad_idempotency_keys_are_refused_before_delivery(store_url: str, key: str) -> None:
    """An Idempotency-Key that is too long or not visible ASCII is a 400 naming the header on
    route, fanout and both session sends; the instance never ran the request."""
    SEEN.clear()
    async with start_cluster("A", handler=f"{__name__}:record", database_url=store_url) as c:
        await c.post(f"{S}/spawn", {"sessionId": "k1", "instance": "A"})
        for path, body in [
            ("/api/orchestrator/route", {"payload": 1}),
            ("/api/orchestrator/fanout", {"payload": 1}),
            (f"{S}/k1/send", {"data": 1}),
            (f"{S}/send", {"sessionId": "k1", "data": 1}),
        ]:
            assert_400(*await c.post(path, body, **{"Idempotency-Key": key}), "Idempotency-Key")
        assert SEEN == []
        assert (await c.get(f"{S}/k1"))[1]["messages"] == 0
        status, reply = await c.post(f"{S}/k1/send", {"data": 1}, **{"Idempotency-Key": "k" * 255})
        assert (status, reply["seq"]) == (200, 1)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"a": NaN}', "a"),
        (b"[0, [1, [2, -Infinity]]]", "1.1.1"),
        (b'{"a": {"b": 1e999}}', "a.b"),
        (b"NaN", "body"),
        (b"{not json", "body"),
        (b'"\\ud800"', "body"),
        (b"[" * 100_000, "body"),
        (b'{"a": "\xff"}', "body"),
    ],
)
def test_strict_decoding_names_the_field(raw: bytes, field: str) -> None:
    """Only RFC 8259 JSON decodes; a non-finite number is located, anything else is 'body'."""
    with pytest.raises(InvalidRequestError) as info:
        decode_json(raw)
    assert info.value.field == field


def test_strict_decoding_keeps_ordinary_json() -> None:
    """Ordinary JSON decodes to the same value the standard library gives."""
    assert decode_json(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}


# -- item 11: expiry on use, auth before the body, 401 for a wrong key, a true schema ------


async def test_an_expired_token_cannot_read_or_close_before_the_sweeper() -> None:
    """Once idle past its TTL a session's token is 401 on read and close, although the
    sweeper has not run; with the API key it reads as expired, and lists as expired."""
    async with start_cluster("A", sessions={"sweep_interval": 3600}) as c:
        token = (await c.post(f"{S}/spawn", {"sessionId": "e1", "ttl": "50ms"}))[1]["token"]
        await asyncio.sleep(0.2)
        stored = await c.service.sessions._store.get_session("e1")
        assert stored is not None
        assert stored.state == "open"  # the sweeper has not run
        for method, path in [("GET", f"{S}/e1"), ("GET", f"{S}/e1/history"),
                             ("POST", f"{S}/e1/close"), ("DELETE", f"{S}/e1")]:  # fmt: skip
            async with c.http.request(
                method, c.url + path, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                body = await resp.json()
            assert (resp.status, body["error"]["code"]) == (401, "unauthorized"), (path, body)
        status, info = await c.get(f"{S}/e1")
        assert (status, info["state"], info["expires_at"]) == (200, "expired", None)
        assert [s["session_id"] for s in (await c.get(f"{S}?state=expired"))[1]["sessions"]] == [
            "e1"
        ]
        assert (await c.get(f"{S}?state=open"))[1]["sessions"] == []


PROTECTED_POSTS = [
    "/api/orchestrator/route",
    "/api/orchestrator/fanout",
    "/api/cluster/register",
    f"{S}/spawn",
    f"{S}/send",
    f"{S}/x1/send",
    f"{S}/x1/close",
]


@pytest.mark.parametrize("raw", [b"{not json", b'{"data": NaN, "payload": NaN}', b'{"zz": 1}'])
async def test_a_stranger_gets_401_whatever_the_body(cluster: Cluster, raw: bytes) -> None:
    """Authentication runs before the body is parsed: a bad body without the key (or with
    a wrong one) is a 401 on every protected POST, which says nothing about the body."""
    for path in PROTECTED_POSTS:
        for auth in ({}, {"Authorization": "Bearer wrong-key"}):
            async with cluster.http.post(
                cluster.url + path, data=raw, headers={**JSON, **auth}
            ) as resp:
                body = await resp.json()
            assert (resp.status, body["error"]["code"]) == (401, "unauthorized"), (path, body)
            assert "field" not in body["error"]


SESSION_ROUTES = [
    ("GET", f"{S}/w1"), ("GET", f"{S}/w1/history"), ("POST", f"{S}/w1/send"),
    ("POST", f"{S}/send"), ("POST", f"{S}/w1/close"), ("DELETE", f"{S}/w1"),
    ("GET", S), ("POST", f"{S}/spawn"),
]  # fmt: skip


async def test_a_wrong_api_key_on_session_routes_is_401(cluster: Cluster) -> None:
    """A wrong API key (not a session token) is 401 unauthorized on every session route,
    and the session is untouched."""
    await cluster.post(f"{S}/spawn", {"sessionId": "w1"})
    for method, path in SESSION_ROUTES:
        async with cluster.http.request(
            method,
            cluster.url + path,
            json={"sessionId": "w1", "data": 1},
            headers={"Authorization": f"Bearer not-{API_KEY}"},
        ) as resp:
            body = await resp.json()
        assert (resp.status, body["error"]["code"]) == (401, "unauthorized"), (path, body)
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    _, info = await cluster.get(f"{S}/w1")
    assert (info["state"], info["messages"]) == ("open", 0)


async def test_openapi_lists_the_errors_the_api_answers(cluster: Cluster) -> None:
    """No operation documents the 422 the API never sends; every protected one documents
    400/401/403/413 as the error envelope and needs the bearer; the session and fanout
    operations list what they can answer."""
    async with cluster.http.get(cluster.url + "/openapi.json") as resp:
        schema = await resp.json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    envelope = {"$ref": "#/components/schemas/ErrorReply"}
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            assert "422" not in responses, (method, path)
            if path.startswith(("/api/orchestrator", "/api/cluster")):
                for status in ("401", "403", "413"):
                    assert responses[status]["content"]["application/json"]["schema"] == envelope
                assert op["security"] == [{"bearer": []}]
    paths = schema["paths"]
    assert {"400", "404", "409", "410", "502", "503", "504"} <= set(
        paths[f"{S}/{{session_id}}/send"]["post"]["responses"]
    )
    assert "404" in paths[f"{S}/{{session_id}}/history"]["get"]["responses"]
    assert "409" in paths[f"{S}/spawn"]["post"]["responses"]
    assert {"400", "409", "502", "503", "504"} <= set(
        paths["/api/orchestrator/route"]["post"]["responses"]
    )


# -- item 18: fanout "reply": "value" -------------------------------------------------------


async def test_fanout_reply_value_is_exactly_the_aggregate(cluster: Cluster) -> None:
    """``reply: "value"`` answers the aggregated value alone, on the fast path and (with an
    Idempotency-Key) on the full app, whose replay says so."""
    body = {"targets": "A-C", "payload": {"q": 1}, "reply": "value"}
    expected = [{"instance": n, "payload": {"q": 1}} for n in "ABC"]
    assert await cluster.post("/api/orchestrator/fanout", body) == (200, expected)
    assert await cluster.post("/api/orchestrator/fanout", body, **{"Idempotency-Key": "v1"}) == (
        200,
        expected,
    )
    async with cluster.http.post(
        cluster.url + "/api/orchestrator/fanout",
        json=body,
        headers={**cluster.headers, "Idempotency-Key": "v1", "Accept": "application/x-ndjson"},
    ) as resp:
        assert (resp.status, await resp.json()) == (200, expected)
        assert resp.headers["Idempotent-Replayed"] == "true"
    merged = {**body, "aggregate": "merge", "payload": {"k": "v"}}
    status, value = await cluster.post("/api/orchestrator/fanout", merged)
    assert (status, value) == (200, {"instance": "C", "payload": {"k": "v"}})


async def test_fanout_reply_value_without_a_value_is_an_error(cluster: Cluster) -> None:
    """When the aggregate cannot be computed there is no value: 502 aggregation_failed with
    the entries; and a value cannot be streamed (400 naming reply)."""
    body = {"targets": "A,B", "aggregate": "concat", "reply": "value"}
    status, reply = await cluster.post("/api/orchestrator/fanout", body)
    assert (status, reply["error"]["code"]) == (502, "aggregation_failed"), reply
    assert [e["instance"] for e in reply["error"]["details"]["results"]] == ["A", "B"]
    status, reply = await cluster.post("/api/orchestrator/fanout", {**body, "stream": True})
    assert_400(status, reply, "reply")
