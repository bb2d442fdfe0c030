"""Skill registration on ``POST /api/cluster/register`` (``{"skillId": ...}``) and the
listing at ``GET /api/cluster/skills``, beside the instance registrations the same endpoint
keeps taking; one live cluster per side of the fast paths, shared by the module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
import pytest_asyncio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from openclaw_orchestrator.skills import load_skill

from .conftest import Cluster, start_cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

REGISTER = "/api/cluster/register"
SKILL = {"skillId": "orchestrator"}


@pytest.fixture(scope="module")
def fast_paths(request: pytest.FixtureRequest) -> bool:
    """The side of the fast paths this module's cluster is on (one cluster per side)."""
    return bool(getattr(request, "param", True))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(fast_paths: bool) -> AsyncIterator[Cluster]:
    async with start_cluster("AB", fast_paths=fast_paths) as c:
        yield c


async def post_raw(c: Cluster, body: bytes, **headers: str) -> tuple[int, Any]:
    async with c.http.post(
        c.url + REGISTER,
        data=body,
        headers={**c.headers, "Content-Type": "application/json", **headers},
    ) as resp:
        return resp.status, await resp.json()


async def test_registering_the_orchestrator_skill_answers_its_manifest(live: Cluster) -> None:
    """201 with the name, description, this orchestrator's /mcp URL, the seed's tags and
    hint, and the SKILL.md exactly as the package ships it."""
    status, body = await live.post(REGISTER, SKILL)
    assert status == 201, body
    shipped = load_skill("orchestrator")
    assert body == {
        "name": "orchestrator",
        "description": shipped.description,
        "mcp_url": live.url + "/mcp",
        "mcp_transport": "streamable-http",
        "cluster": "distributed-comms",
        "tags": shipped.tags,
        "embedding_hint": "orchestrate delegate multi-instance session spawn send fanout "
        "aggregate instances",
        "metadata": dict(shipped.metadata),
        "skill_md": shipped.text,
    }
    assert body["skill_md"].startswith("---\nname: orchestrator\n")


async def test_registering_again_is_idempotent_and_lists_the_skill(live: Cluster) -> None:
    """A repeat answers the same manifest; the listing shows it, and only once."""
    first = await live.post(REGISTER, SKILL)
    again = await live.post(REGISTER, SKILL)
    assert first == again
    status, listing = await live.get("/api/cluster/skills")
    assert status == 200
    assert listing == {"skills": [first[1]]}


async def test_the_manifest_url_is_the_one_the_caller_used(live: Cluster) -> None:
    """Behind a name (a proxy, a DNS name), the MCP URL follows the Host the caller sent."""
    status, body = await post_raw(live, b'{"skillId": "orchestrator"}', Host="orch.internal:8443")
    assert status == 201, body
    assert body["mcp_url"] == "http://orch.internal:8443/mcp"


async def test_the_manifest_mcp_url_serves_the_tools(live: Cluster) -> None:
    """An MCP client given only the manifest's URL and the key lists the tools the skill
    names, and a call through it works."""
    _, manifest = await live.post(REGISTER, SKILL)
    headers = {"Authorization": f"Bearer {live.api_key}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(manifest["mcp_url"], http_client=http)) as client,
    ):
        names = {tool.name for tool in (await client.list_tools()).tools}
        health = await client.call_tool("health", {"instances": "A-B"})
    for tool in ("route", "fanout", "sessions_spawn", "sessions_send", "health", "runs_wait"):
        assert tool in names
        assert f"`{tool}`" in manifest["skill_md"]
    assert health.structured_content == {"A": "healthy", "B": "healthy"}


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"skillId": "nope"}, 404, "not_found", "skillId"),
        ({"skillId": "Not A Skill!"}, 400, "invalid_request", "skillId"),
        ({"skillId": 7}, 400, "invalid_request", "skillId"),
        ({"skillId": "orchestrator", "name": "A"}, 400, "invalid_request", "name"),
        ({"name": "K", "url": "ftp://x"}, 400, "invalid_request", "url"),
        ({"url": "http://127.0.0.1:9"}, 400, "invalid_request", "name"),
        ([{"skillId": "orchestrator"}], 400, "invalid_request", "body"),
    ],
)
async def test_bad_registrations_name_their_field(
    live: Cluster, body: Any, status: int, code: str, field: str
) -> None:
    """An unknown skill is 404 naming skillId; a malformed body of either form is 400
    naming the field of its own form (never a union's branch name)."""
    got_status, got = await live.post(REGISTER, body)
    assert got_status == status, got
    assert got["error"]["code"] == code
    assert got["error"]["field"] == field


async def test_instances_still_register_on_the_same_endpoint(live: Cluster) -> None:
    """An instance body registers an instance (201, then 200 as a heartbeat), not a skill,
    and a skill registration adds no instance."""
    spec = {"name": "J", "url": "http://127.0.0.1:9", "heartbeat_ttl": 30, "tags": ["x"]}
    status, body = await live.post(REGISTER, spec)
    assert status == 201, body
    assert (body["name"], body["source"], body["tags"]) == ("J", "registered", ["x"])
    assert (await live.post(REGISTER, spec))[0] == 200
    await live.post(REGISTER, SKILL)
    _, listing = await live.get("/api/cluster/instances")
    assert [i["name"] for i in listing["instances"]] == ["A", "B", "J"]
    async with live.http.delete(live.url + "/api/cluster/instances/J", headers=live.headers):
        pass


async def test_skills_need_the_api_key(live: Cluster) -> None:
    """No key is 401 and a session token is 403, on both the register and the listing."""
    async with live.http.get(live.url + "/api/cluster/skills") as resp:
        assert resp.status == 401
    _, spawned = await live.post("/api/orchestrator/sessions/spawn", {"instance": "A"})
    token = {"Authorization": f"Bearer {spawned['token']}"}
    async with live.http.get(live.url + "/api/cluster/skills", headers=token) as resp:
        assert resp.status == 403
    status, body = await post_raw(live, b'{"skillId": "orchestrator"}', **token)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    await live.post(f"/api/orchestrator/sessions/{spawned['session_id']}/close", {})


async def test_openapi_documents_both_body_forms(live: Cluster) -> None:
    """The schema of the register body offers an instance or a skill registration, and its
    201 reply an instance or a manifest; /skills is listed."""
    async with live.http.get(live.url + "/openapi.json") as resp:
        schema = await resp.json()
    operation = schema["paths"]["/api/cluster/register"]["post"]
    body_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = schema["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    forms = {item["$ref"].rsplit("/", 1)[1] for item in body["anyOf"]}
    assert forms == {"InstanceSpec", "SkillRegistration"}
    created = str(operation["responses"]["201"]["content"]["application/json"]["schema"])
    assert "InstanceInfo" in created
    assert "SkillManifest" in created
    assert "404" in operation["responses"]
    assert "get" in schema["paths"]["/api/cluster/skills"]
