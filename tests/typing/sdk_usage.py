"""How the SDK is meant to be used, checked by mypy only (pytest does not collect this file).

Run: ``.venv/bin/mypy tests/typing/sdk_usage.py``. A change to a public signature or return
type that breaks these lines breaks users' type checking too.
"""

from __future__ import annotations

from typing import Any, assert_type

from openclaw_orchestrator import (
    AsyncClient,
    AsyncSession,
    Client,
    FanoutEntry,
    FanoutResult,
    HealthDetail,
    HistoryEntry,
    HistoryPage,
    InstanceInfo,
    NoHealthyInstanceError,
    OrchestratorError,
    RouteResult,
    SendResult,
    Session,
    SessionInfo,
    TimeoutExceededError,
    __version__,
)


async def async_usage() -> None:
    """Every AsyncClient method with its knobs, and the types that come back."""
    async with AsyncClient("http://127.0.0.1:18790", api_key="key", timeout=30.0) as client:
        routed = await client.route(
            {"data": "task"},
            instances=["A", "B"],
            timeout="10s",
            retry=2,
            policy="least_outstanding",
            idempotency_key="job-1",
        )
        assert_type(routed, RouteResult)
        assert_type(routed.attempts[0].latency_ms, float)

        fanned = await client.fanout(
            {"q": "x"}, targets="A-H", aggregate="topk", top_k=3, timeout=5, min_success=4
        )
        assert_type(fanned, FanoutResult)
        assert_type(fanned.results, list[FanoutEntry])

        async for item in client.fanout_stream(targets="tag:gpu", aggregate=False):
            if isinstance(item, FanoutEntry):
                assert_type(item.instance, str)
            else:
                assert_type(item, FanoutResult)

        assert_type(await client.health("A-H"), dict[str, str])
        assert_type(await client.health_detail(), dict[str, HealthDetail])
        info = await client.register(
            "Z", "http://127.0.0.1:18809", tags=("gpu",), credentials="token", heartbeat_ttl="30s"
        )
        assert_type(info, InstanceInfo)
        assert_type(await client.instances(), list[InstanceInfo])
        assert_type(await client.unregister("Z"), None)
        assert_type(await client.liveness(), dict[str, Any])


async def async_session_usage() -> None:
    """The session namespace and its handles, with the types that come back."""
    async with AsyncClient() as client:
        handle = await client.sessions.spawn("s1", instance="A", ttl="1h", failover="migrate")
        assert_type(handle, AsyncSession)
        assert_type(handle.token, str | None)
        assert_type(await handle.send({"k": "v"}, timeout=5, idempotency_key="m1"), SendResult)
        assert_type(await handle.history(offset=0, limit=10), HistoryPage)
        async for entry in handle.iter_history(page_size=50):
            assert_type(entry, HistoryEntry)
        assert_type(await handle.close(), SessionInfo)
        assert_type(await client.sessions.send("s1", {"k": 1}), SendResult)
        assert_type(await client.sessions.history("s1", limit=5), HistoryPage)
        assert_type(await client.sessions.list(state="open", active_within=5), list[SessionInfo])
        assert_type(await client.sessions.get("s1"), SessionInfo)
        assert_type(await client.sessions.close("s1"), SessionInfo)
        assert_type(client.sessions.session("s1", token="ocs_t"), AsyncSession)


def sync_session_usage() -> None:
    """The same session calls on the sync client."""
    with Client() as client, client.sessions.spawn(instance="A") as handle:
        assert_type(handle, Session)
        assert_type(handle.send({"k": "v"}, timeout="5s"), SendResult)
        assert_type(handle.history(limit=10), HistoryPage)
        for entry in handle.iter_history():
            assert_type(entry, HistoryEntry)
        assert_type(client.sessions.send("s1"), SendResult)
        assert_type(client.sessions.list(instance="A"), list[SessionInfo])
        assert_type(client.sessions.session("s1").get(), SessionInfo)


def sync_usage() -> None:
    """The synchronous client: same methods, plain iterator for the stream."""
    with Client() as client:
        try:
            assert_type(client.route(instances="A"), RouteResult)
        except NoHealthyInstanceError as exc:
            assert_type(exc.code, str)
        except TimeoutExceededError as exc:
            assert_type(exc.instance, str | None)
        except OrchestratorError as exc:
            assert_type(exc.details, dict[str, Any])
        for item in client.fanout_stream({"q": 1}, targets=["A", "B"]):
            assert_type(item, FanoutEntry | FanoutResult)
    assert_type(__version__, str)
