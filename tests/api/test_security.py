"""Authentication, body limits, error envelopes and secrets."""

from __future__ import annotations

import io

import orjson
import pytest

from openclaw_orchestrator.server.serve import UnsafeBindError, check_bind
from openclaw_orchestrator.settings import Settings

from .conftest import Cluster

PROTECTED = [
    ("POST", "/api/orchestrator/route"),
    ("POST", "/api/orchestrator/fanout"),
    ("GET", "/api/orchestrator/health"),
    ("POST", "/api/cluster/register"),
    ("GET", "/api/cluster/instances"),
    ("DELETE", "/api/cluster/instances/A"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", "Basic abc", "Bearer "])
async def test_every_endpoint_needs_the_key(
    cluster: Cluster, method: str, path: str, auth: str | None
) -> None:
    """Without the right bearer key every API endpoint is 401 unauthorized."""
    headers = {} if auth is None else {"Authorization": auth}
    async with cluster.http.request(method, cluster.url + path, json={}, headers=headers) as resp:
        body = await resp.json()
    assert resp.status == 401
    assert body["error"]["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert "A" in cluster.service.registry


async def test_body_over_limit_is_413(cluster: Cluster) -> None:
    """A body over 1 MiB is refused with 413 payload_too_large."""
    big = orjson.dumps({"payload": {"blob": "x" * (1024 * 1024 + 10)}})
    async with cluster.http.post(
        cluster.url + "/api/orchestrator/route",
        data=io.BytesIO(big),
        headers={**cluster.headers, "Content-Type": "application/json"},
    ) as resp:
        status, body = resp.status, await resp.json()
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"


async def test_chunked_body_over_limit_is_413(cluster: Cluster) -> None:
    """A body without Content-Length is counted while it streams in."""

    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"payload": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    async with cluster.http.post(
        cluster.url + "/api/orchestrator/route",
        data=chunks(),
        headers={**cluster.headers, "Content-Type": "application/json"},
    ) as resp:
        body = await resp.json()
    assert resp.status == 413
    assert body["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"{not json", "body"),
        (b'{"timeout": "soon"}', "timeout"),
        (b'{"retry": -1}', "retry"),
        (b'{"policy": "fastest"}', "policy"),
        (b'{"surprise": 1}', "surprise"),
    ],
)
async def test_bad_input_is_400_naming_the_field(cluster: Cluster, raw: bytes, field: str) -> None:
    """Malformed requests get 400 invalid_request with the field named, never a 500."""
    async with cluster.http.post(
        cluster.url + "/api/orchestrator/route",
        data=raw,
        headers={**cluster.headers, "Content-Type": "application/json"},
    ) as resp:
        body = await resp.json()
    assert resp.status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["field"] == field


async def test_unknown_path_is_404_envelope(cluster: Cluster) -> None:
    """Unknown paths answer the JSON envelope too."""
    status, body = await cluster.get("/api/orchestrator/nope")
    assert status == 404
    assert body["error"]["code"] == "not_found"


async def test_request_id_passes_through(cluster: Cluster) -> None:
    """The caller's X-Request-ID is returned and reported in the reply."""
    async with cluster.http.post(
        cluster.url + "/api/orchestrator/route",
        json={"instances": "A"},
        headers={**cluster.headers, "X-Request-ID": "req-123"},
    ) as resp:
        body = await resp.json()
    assert resp.headers["X-Request-ID"] == "req-123"
    assert body["request_id"] == "req-123"


def test_refuses_non_loopback_bind_without_key() -> None:
    """No API key and a non-loopback address: the server refuses to start."""
    with pytest.raises(UnsafeBindError, match="ORCHESTRATOR_API_KEY"):
        check_bind(Settings(host="0.0.0.0"))  # noqa: S104
    check_bind(Settings(host="0.0.0.0", api_key="k"))  # noqa: S104
    check_bind(Settings(host="127.0.0.1"))
    check_bind(Settings(host="::1"))


def test_settings_repr_hides_secrets() -> None:
    """Secrets never show in reprs of the settings or instance specs."""
    s = Settings(
        api_key="super-secret",
        instances=[{"name": "A", "url": "http://127.0.0.1:1", "credentials": "tok-secret"}],
    )
    assert "super-secret" not in repr(s)
    assert "tok-secret" not in repr(s)
    assert "tok-secret" not in s.instances.static[0].model_dump_json()
