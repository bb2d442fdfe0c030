"""The SDK against a live orchestrator and real instances on 127.0.0.1 (``start_cluster``).

``AsyncClient`` runs in the test's loop next to the cluster. The sync ``Client`` blocks (and
refuses to run inside a running loop), so its calls go to a worker thread
(``asyncio.to_thread``) while the cluster keeps serving here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Generator
from typing import Any, cast

import pytest

from openclaw_orchestrator import (
    AsyncClient,
    Attempt,
    Client,
    ConflictError,
    ConnectionFailedError,
    FanoutEntry,
    FanoutResult,
    HealthDetail,
    InstanceDownError,
    InstanceError,
    InstanceInfo,
    InstanceRejectedError,
    InvalidRequestError,
    NoHealthyInstanceError,
    NotFoundError,
    OrchestratorError,
    PayloadTooLargeError,
    RouteResult,
    TimeoutExceededError,
    UnauthorizedError,
)
from tests.api.conftest import Cluster, start_cluster
from tests.ports import free_port


@pytest.fixture
async def live() -> AsyncIterator[Cluster]:
    """Eight healthy echo instances A–H; B and D tagged ``gpu``."""
    async with start_cluster(tags={"B": ["gpu"], "D": ["gpu"]}) as c:
        yield c


@pytest.fixture
async def client(live: Cluster) -> AsyncIterator[AsyncClient]:
    """An AsyncClient of ``live`` with its key."""
    async with AsyncClient(live.url, live.api_key) as c:
        yield c


# -- typed results ------------------------------------------------------------------------------


async def test_route_returns_a_typed_result(client: AsyncClient) -> None:
    """route() gives a RouteResult with Attempt models, the serving instance and a request id."""
    routed = await client.route({"data": "task"}, instances=["A", "B"], timeout="10s", retry=3)
    assert isinstance(routed, RouteResult)
    assert routed.instance in ("A", "B")
    assert routed.result == {"instance": routed.instance, "payload": {"data": "task"}}
    assert [type(a) for a in routed.attempts] == [Attempt]
    assert routed.attempts[0].outcome == "ok"
    assert routed.skipped == []
    assert len(routed.request_id) >= 16


async def test_fanout_returns_a_typed_result(client: AsyncClient) -> None:
    """fanout() gives a FanoutResult: one FanoutEntry per target in order, and the aggregate."""
    fanned = await client.fanout({"q": 1}, targets="A-H", aggregate=True, timeout=10)
    assert isinstance(fanned, FanoutResult)
    assert [e.instance for e in fanned.results] == list("ABCDEFGH")
    assert all(isinstance(e, FanoutEntry) and e.status == "ok" for e in fanned.results)
    assert fanned.value == [{"instance": n, "payload": {"q": 1}} for n in "ABCDEFGH"]
    assert (fanned.aggregate, fanned.succeeded, fanned.failed, fanned.timed_out) == (
        "array", 8, 0, 0
    )  # fmt: skip
    merged = await client.fanout({"q": 2}, targets=["A", "tag:gpu"], aggregate="merge")
    assert merged.aggregate == "merge"
    assert merged.value == {"instance": "D", "payload": {"q": 2}}  # later targets win


async def test_fanout_stream_yields_entries_then_the_result(client: AsyncClient) -> None:
    """fanout_stream() yields each target's FanoutEntry as it finishes, then one FanoutResult."""
    items = [item async for item in client.fanout_stream({"s": 1}, targets="A,C,E G")]
    assert [type(i) for i in items] == [FanoutEntry] * 4 + [FanoutResult]
    entries, result = items[:-1], items[-1]
    assert isinstance(result, FanoutResult)
    assert sorted(e.instance for e in entries if isinstance(e, FanoutEntry)) == list("ACEG")
    assert [e.instance for e in result.results] == list("ACEG")
    assert result.succeeded == 4


async def test_leaving_a_stream_early_keeps_the_client_usable(client: AsyncClient) -> None:
    """Breaking out of an aclosing() fanout_stream closes it; the client goes on working."""
    async with contextlib.aclosing(client.fanout_stream(targets="A-H")) as stream:
        async for item in stream:
            assert isinstance(item, FanoutEntry)
            break
    assert (await client.route(instances="B")).instance == "B"


async def test_fanout_stream_unmet_min_success_raises_after_the_entries(
    live: Cluster, client: AsyncClient
) -> None:
    """With min_success unmet the stream yields what arrived, then raises the typed error."""
    await live.set_faults("B", fail_rate=1.0, fail_status=500)
    seen: list[Any] = []

    async def drain() -> None:
        async for item in client.fanout_stream(targets=["A", "B"], min_success=2, timeout=5):
            seen.append(item)

    with pytest.raises(InstanceError) as caught:
        await drain()
    assert sorted(e.instance for e in seen) == ["A", "B"]
    assert all(isinstance(e, FanoutEntry) for e in seen)
    assert {e.instance: e.status for e in seen} == {"A": "ok", "B": "error"}
    assert caught.value.code == "instance_error"
    assert len(caught.value.details["results"]) == 2


async def test_health_and_cluster_calls_are_typed(live: Cluster, client: AsyncClient) -> None:
    """health, health_detail, liveness, register, instances, unregister parse into models."""
    assert await client.health("A-C") == {"A": "healthy", "B": "healthy", "C": "healthy"}
    detail = await client.health_detail(["A", "B"])
    assert set(detail) == {"A", "B"}
    assert isinstance(detail["A"], HealthDetail)
    assert detail["A"].state == "healthy"
    assert detail["A"].url == live.instance_urls["A"]
    alive = await client.liveness()
    assert alive["status"] == "healthy"
    assert alive["instances"]["total"] == 8

    info = await client.register(
        "Z9", live.instance_urls["C"], tags=["blue"], credentials="tok-zz", heartbeat_ttl="1m"
    )
    assert isinstance(info, InstanceInfo)
    assert (info.name, info.source, info.has_credentials, info.heartbeat_ttl) == (
        "Z9", "registered", True, 60.0
    )  # fmt: skip
    assert "tok-zz" not in info.model_dump_json()
    listed = await client.instances()
    assert all(isinstance(i, InstanceInfo) for i in listed)
    assert [i.name for i in listed] == [*"ABCDEFGH", "Z9"]
    routed = await client.route(instances="tag:blue")
    assert routed.instance == "Z9"
    await client.unregister("Z9")
    assert "Z9" not in [i.name for i in await client.instances()]
    with pytest.raises(NotFoundError):
        await client.unregister("Z9")


# -- typed errors -------------------------------------------------------------------------------


async def test_wrong_key_is_unauthorized(live: Cluster) -> None:
    """A wrong key raises UnauthorizedError (401); the key never shows in the error or repr."""
    async with AsyncClient(live.url, "wrong-key-555") as bad:
        with pytest.raises(UnauthorizedError) as caught:
            await bad.route(instances="A")
        assert "wrong-key-555" not in repr(bad)
    assert (caught.value.code, caught.value.status) == ("unauthorized", 401)
    assert "wrong-key-555" not in str(caught.value) + repr(caught.value)


async def test_invalid_request_names_the_field(client: AsyncClient) -> None:
    """Unknown instances, a bad policy or a bad duration raise InvalidRequestError with .field."""
    with pytest.raises(InvalidRequestError) as unknown:
        await client.route(instances=["A", "X"])
    assert unknown.value.field == "instances"
    assert "X" in unknown.value.message
    with pytest.raises(InvalidRequestError) as policy:
        await client.route(instances="A", policy="random_walk")
    assert policy.value.field is not None
    assert "policy" in policy.value.field
    with pytest.raises(InvalidRequestError) as duration:
        await client.fanout(timeout="10 parsecs")  # refused before anything is sent
    assert duration.value.field == "timeout"
    with pytest.raises(InvalidRequestError) as targets:
        await client.fanout(targets="tag:nothing")
    assert targets.value.field == "targets"


async def test_an_instance_refusal_is_instance_rejected_in_both_clients(
    live: Cluster, client: AsyncClient
) -> None:
    """A 4xx from the instance reaches the SDK as InstanceRejectedError (an InstanceError
    naming the instance), not as the InvalidRequestError of a malformed request."""
    await live.set_faults("A", fail_rate=1.0, fail_status=422)
    with pytest.raises(InstanceRejectedError) as caught:
        await client.route(instances="A")
    assert (caught.value.instance, caught.value.upstream_status) == ("A", 422)
    assert isinstance(caught.value, InstanceError)

    def use_sync() -> OrchestratorError:
        with Client(live.url, live.api_key) as sync, pytest.raises(InstanceRejectedError) as info:
            sync.route(instances="A")
        return info.value

    assert (await asyncio.to_thread(use_sync)).instance == "A"


async def test_stopped_instances_raise_down_errors(live: Cluster, client: AsyncClient) -> None:
    """A stopped only candidate is InstanceDownError(.instance); all candidates stopped is
    NoHealthyInstanceError."""
    await live.stop_instance("C")
    await live.stop_instance("D")
    with pytest.raises(InstanceDownError) as one:
        await client.route(instances="C", retry=0)
    assert one.value.instance == "C"
    assert one.value.status == 503
    await live.wait_state("C", "down")
    await live.wait_state("D", "down")
    with pytest.raises(NoHealthyInstanceError) as every:
        await client.route(instances="C,D")
    assert every.value.code == "no_healthy_instance"
    assert (await client.route(instances="C-E")).instance == "E"  # fails over around them


async def test_hanging_instance_raises_timeout(live: Cluster, client: AsyncClient) -> None:
    """An instance that never answers, with timeout=0.5: TimeoutExceededError (504) naming it."""
    await live.set_faults("F", hang=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutExceededError) as caught:
        await client.route({"x": 1}, instances="F", timeout=0.5, retry=0)
    assert loop.time() - started < 3.0
    assert (caught.value.code, caught.value.status, caught.value.instance) == ("timeout", 504, "F")
    assert isinstance(caught.value, InstanceError)


async def test_attempt_timeout_fails_over_past_a_hang(live: Cluster, client: AsyncClient) -> None:
    """attempt_timeout gives up on the hanging candidate in time for the next one."""
    await live.set_faults("G", hang=True)
    served = [
        await client.route({"x": 1}, instances=["G", "H"], timeout=5, attempt_timeout="200ms")
        for _ in range(2)
    ]
    assert {r.instance for r in served} == {"H"}
    assert any(r.attempts[0].instance == "G" and r.attempts[0].outcome == "timeout" for r in served)
    with pytest.raises(InvalidRequestError) as bad:
        await client.route({"x": 1}, instances=["H"], attempt_timeout="soon")
    assert bad.value.field == "attempt_timeout"


async def test_oversized_payload_is_payload_too_large() -> None:
    """A body over max_body_bytes raises PayloadTooLargeError (413); a smaller one passes."""
    async with (
        start_cluster("A", max_body_bytes=4096) as small,
        AsyncClient(small.url, small.api_key) as client,
    ):
        with pytest.raises(PayloadTooLargeError) as caught:
            await client.route({"blob": "x" * 5000}, instances="A")
        assert (caught.value.code, caught.value.status) == ("payload_too_large", 413)
        assert (await client.route({"blob": "x" * 1000}, instances="A")).instance == "A"


async def test_large_payload_sends_without_warnings() -> None:
    """A 1.5 MiB request under a 4 MiB limit reaches the server without an SDK warning (the
    unknown target makes the server answer before any instance is involved)."""
    async with (
        start_cluster("A", max_body_bytes=4 * 1024 * 1024) as big,
        AsyncClient(big.url, big.api_key) as client,
    ):
        with pytest.raises(InvalidRequestError) as caught:
            await client.route({"blob": "x" * (3 * 512 * 1024)}, instances="nope")
    assert caught.value.field == "instances"


async def test_unreachable_orchestrator_is_connection_failed() -> None:
    """Nothing listening: ConnectionFailedError naming the URL, an OrchestratorError."""
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url, "k") as lonely:
        with pytest.raises(ConnectionFailedError) as caught:
            await lonely.health()
    assert url in caught.value.message
    assert isinstance(caught.value, OrchestratorError)


async def test_closed_client_refuses_calls(live: Cluster) -> None:
    """After aclose() every call raises RuntimeError, not OrchestratorError."""
    closed = AsyncClient(live.url, live.api_key)
    await closed.health()
    await closed.aclose()
    assert closed.is_closed
    with pytest.raises(RuntimeError):
        await closed.health()


# -- idempotency --------------------------------------------------------------------------------


async def test_idempotency_key_replays_the_first_result(client: AsyncClient) -> None:
    """A repeat with the same key and body returns the first result; another body is 409."""
    first = await client.route({"n": 1}, instances="A,B", idempotency_key="job-1")
    again = await client.route({"n": 1}, instances="A,B", idempotency_key="job-1")
    fresh = await client.route({"n": 1}, instances="A,B", idempotency_key="job-2")
    assert again == first  # same instance, same request id: the task did not run twice
    assert fresh.request_id != first.request_id
    assert fresh.instance != first.instance  # round robin moved on: job-2 really ran
    with pytest.raises(ConflictError) as conflict:
        await client.route({"n": 2}, instances="A,B", idempotency_key="job-1")
    assert conflict.value.status == 409
    fanned = await client.fanout({"f": 1}, targets="A-C", idempotency_key="fan-1")
    assert await client.fanout({"f": 1}, targets="A-C", idempotency_key="fan-1") == fanned


# -- environment --------------------------------------------------------------------------------


async def test_reads_url_and_key_from_environment(
    live: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AsyncClient() and Client() take ORCHESTRATOR_URL/ORCHESTRATOR_API_KEY from the env."""
    monkeypatch.setenv("ORCHESTRATOR_URL", live.url + "/")
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", live.api_key)
    async with AsyncClient() as from_env:
        assert from_env.url == live.url
        assert repr(from_env) == f"<AsyncClient url={live.url!r}>"
        assert (await from_env.route(instances="G")).instance == "G"
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", "not-it")
    async with AsyncClient() as wrong:
        with pytest.raises(UnauthorizedError):
            await wrong.health()
    async with AsyncClient(api_key=live.api_key) as explicit:  # an argument beats the env
        assert await explicit.health("H") == {"H": "healthy"}

    def sync_from_env() -> str:
        with Client(api_key=live.api_key) as sync:
            assert sync.url == live.url
            return sync.route(instances="H").instance

    assert await asyncio.to_thread(sync_from_env) == "H"


# -- the sync client -----------------------------------------------------------------------------


async def test_sync_client_in_a_worker_thread(live: Cluster) -> None:
    """Client has the same methods, typed results, a plain-iterator stream and typed errors."""

    def use_sync() -> dict[str, Any]:
        with Client(live.url, live.api_key) as sync:
            out: dict[str, Any] = {
                "route": sync.route({"d": 1}, instances=["A", "B"], retry=3),
                "fanout": sync.fanout(targets="A-D", aggregate="concat"),
                "stream": list(sync.fanout_stream({"s": 2}, targets=["A", "B"])),
                "health": sync.health("A,B"),
                "instances": sync.instances(),
            }
            with pytest.raises(InvalidRequestError) as caught:
                sync.route(instances="nope")
            out["field"] = caught.value.field
        out["closed"] = sync.is_closed
        return out

    got = await asyncio.to_thread(use_sync)
    assert isinstance(got["route"], RouteResult)
    assert got["route"].result["payload"] == {"d": 1}
    assert isinstance(got["fanout"], FanoutResult)
    assert got["fanout"].aggregate == "concat"
    assert [type(i) for i in got["stream"]] == [FanoutEntry, FanoutEntry, FanoutResult]
    assert got["health"] == {"A": "healthy", "B": "healthy"}
    assert [i.name for i in got["instances"]] == list("ABCDEFGH")
    assert got["field"] == "instances"
    assert got["closed"] is True


async def test_sync_client_refuses_a_running_loop(live: Cluster) -> None:
    """Client called inside an event loop raises RuntimeError pointing at AsyncClient."""
    with Client(live.url, live.api_key) as sync, pytest.raises(RuntimeError, match="AsyncClient"):
        sync.health()


async def test_sync_stream_closed_early_releases_the_connection(live: Cluster) -> None:
    """Breaking out of Client.fanout_stream and closing leaves no open transport behind."""

    def partial() -> FanoutEntry | FanoutResult:
        with Client(live.url, live.api_key) as sync:
            stream = cast("Generator[FanoutEntry | FanoutResult, None, None]", sync.fanout_stream())
            with contextlib.closing(stream):
                first = next(stream)
            assert sync.health("A") == {"A": "healthy"}  # the client is still usable
            return first

    assert isinstance(await asyncio.to_thread(partial), FanoutEntry)
