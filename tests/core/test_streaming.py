"""Streamed routes and session sends on the real core, with a small scripted streaming driver
and the fake clock: deltas reach the caller in order, failover works until the first delta
and never after it, a driver that does not stream gives just the result, and a durable run
records the deltas coalesced."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openclaw_orchestrator.domain.health import HealthPolicy
from openclaw_orchestrator.errors import InstanceDownError, InstanceError, OrchestratorError
from openclaw_orchestrator.models import InstanceSpec, RouteRequest, SpawnRequest
from openclaw_orchestrator.server.core.dispatcher import Dispatcher, Streaming
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.server.core.registry import Registry
from openclaw_orchestrator.server.core.routing import STREAMED
from openclaw_orchestrator.server.core.run_work import DeltaLog
from openclaw_orchestrator.server.core.sessions import SessionService
from openclaw_orchestrator.server.drivers.base import Delta, Fence
from openclaw_orchestrator.server.stores.sqlite import SqliteStore, sqlite_url
from openclaw_orchestrator.settings import Settings
from tests.fakes import FakeCall, FakeClock, FakeDriver


@dataclass
class Script:
    """What one instance does when asked: emit ``deltas`` (to a caller that streams), then
    fail with ``error`` or answer ``result``."""

    deltas: list[Any] = field(default_factory=list)
    result: Any = None
    error: OrchestratorError | None = None


class StreamingDriver(FakeDriver):
    """The fake driver, streaming: each instance follows its :class:`Script`."""

    def __init__(self, scripts: dict[str, Script]) -> None:
        super().__init__()
        self.scripts = scripts
        self.streamed: list[bool] = []

    async def _play(self, name: str, on_delta: Delta | None) -> Any:
        script = self.scripts[name]
        self.streamed.append(on_delta is not None)
        if on_delta is not None:
            for delta in script.deltas:
                await on_delta(delta)
        if script.error is not None:
            raise script.error
        return script.result

    async def invoke(
        self,
        instance: InstanceSpec,
        payload: Any,
        *,
        timeout: float,
        request_id: str,
        on_delta: Delta | None = None,
    ) -> Any:
        self.calls.append(FakeCall("invoke", instance.name, payload, timeout))
        return await self._play(instance.name, on_delta)

    async def session_send(
        self,
        instance: InstanceSpec,
        session_id: str,
        payload: Any,
        *,
        timeout: float,
        request_id: str,
        fence: Fence | None = None,
        on_delta: Delta | None = None,
    ) -> Any:
        self.calls.append(FakeCall("session_send", instance.name, payload, timeout, session_id))
        return await self._play(instance.name, on_delta)


def down(name: str) -> InstanceDownError:
    return InstanceDownError(f"instance {name} refused", instance=name)


def broke(name: str) -> InstanceError:
    return InstanceError(f"instance {name} failed", instance=name, upstream_status=503)


class Caller:
    """The caller's end of a stream: every delta it got, and when the attempt began."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []
        self.begun = 0

    def stream(self) -> Streaming:
        def begin() -> None:
            self.begun += 1

        return Streaming(self._take, begin)

    async def _take(self, instance: str, delta: Any) -> None:
        self.got.append((instance, delta))


def routed(scripts: dict[str, Script]) -> tuple[Orchestrator, StreamingDriver]:
    """An orchestrator over the scripted instances (round robin from the first)."""
    clock = FakeClock()
    driver = StreamingDriver(scripts)
    settings = Settings.model_validate(
        {"instances": [{"name": n, "url": f"http://127.0.0.1:9/{n}"} for n in scripts]}
    )
    orchestrator = Orchestrator(
        settings,
        drivers={"worker": driver},
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
    )
    return orchestrator, driver


async def test_deltas_reach_the_caller_in_order_then_the_result() -> None:
    orchestrator, driver = routed(
        {"A": Script([{"text": "he"}, {"text": "llo"}, [1]], {"text": "hello"})}
    )
    caller = Caller()
    result = await orchestrator.route(
        RouteRequest(payload={}), request_id="r1", stream=caller.stream()
    )
    assert caller.got == [("A", {"text": "he"}), ("A", {"text": "llo"}), ("A", [1])]
    assert (result.instance, result.result, caller.begun) == ("A", {"text": "hello"}, 1)
    assert driver.streamed == [True]


async def test_failover_works_until_the_first_delta() -> None:
    """A fails before it streams anything: B serves, and the caller sees only B's output."""
    orchestrator, _ = routed({"A": Script(error=down("A")), "B": Script([{"text": "b"}], "B!")})
    caller = Caller()
    result = await orchestrator.route(
        RouteRequest(payload={}, instances=["A", "B"]), request_id="r2", stream=caller.stream()
    )
    assert (result.instance, caller.got) == ("B", [("B", {"text": "b"})])
    assert [(a.instance, a.outcome) for a in result.attempts] == [("A", "down"), ("B", "ok")]


async def test_no_failover_after_the_first_delta() -> None:
    """A fails after one delta reached the caller: the route fails there, B is never tried
    (it would run the work again behind output already shown), and the attempt is listed."""
    orchestrator, driver = routed({"A": Script([{"text": "par"}], error=broke("A")), "B": Script()})
    caller = Caller()
    with pytest.raises(InstanceError) as caught:
        await orchestrator.route(
            RouteRequest(payload={}, instances=["A", "B"], retry=3),
            request_id="r3",
            stream=caller.stream(),
        )
    assert driver.tried() == ["A"]
    assert caller.got == [("A", {"text": "par"})]
    details = caught.value.details
    assert details["reason"] == STREAMED
    assert [(a["instance"], a["outcome"]) for a in details["attempts"]] == [("A", "error")]


async def test_the_same_failure_fails_over_without_a_stream() -> None:
    orchestrator, driver = routed({"A": Script([{"text": "par"}], error=broke("A")), "B": Script()})
    await orchestrator.route(RouteRequest(payload={}, instances=["A", "B"]), request_id="r4")
    assert driver.tried() == ["A", "B"]
    assert driver.streamed == [False, False]


async def test_an_instance_that_does_not_stream_gives_just_the_result() -> None:
    orchestrator, _ = routed({"A": Script([], {"whole": True})})
    caller = Caller()
    result = await orchestrator.route(
        RouteRequest(payload={}), request_id="r5", stream=caller.stream()
    )
    assert (result.result, caller.got, caller.begun) == ({"whole": True}, [], 1)


async def test_nothing_begins_when_every_candidate_is_down() -> None:
    """The API answers such a failure as plain JSON: the stream never began."""
    orchestrator, driver = routed({"A": Script(error=down("A"))})
    with pytest.raises(InstanceDownError):  # passive detection marks A down
        await orchestrator.route(RouteRequest(payload={}), request_id="r6")
    caller = Caller()
    with pytest.raises(InstanceDownError):
        await orchestrator.route(RouteRequest(payload={}), request_id="r7", stream=caller.stream())
    assert (caller.begun, driver.tried()) == (0, ["A"])


# -- sessions --------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(sqlite_url(tmp_path / "data"))
    await s.open()
    yield s
    await s.aclose()


def sessions_over(store: SqliteStore, driver: StreamingDriver) -> SessionService:
    settings = Settings.model_validate(
        {"instances": [{"name": n, "url": "http://127.0.0.1:9"} for n in driver.scripts]}
    )
    registry = Registry(HealthPolicy())
    for spec in settings.instances.static:
        registry.upsert(spec, "config", 0.0)
    dispatcher = Dispatcher(settings, {"worker": driver}, clock=lambda: 0.0)
    return SessionService(
        dispatcher, registry, store, settings, place=lambda names, _policy: tuple(names)
    )


async def test_a_streamed_send_records_its_final_reply(store: SqliteStore) -> None:
    driver = StreamingDriver({"A": Script([{"text": "o"}, {"text": "k"}], "ok")})
    sessions = sessions_over(store, driver)
    spawned = await sessions.spawn(SpawnRequest(instance="A"))
    caller = Caller()
    sent = await sessions.send(
        spawned.session_id,
        "hi",
        timeout=5,
        idempotency_key=None,
        request_id="s1",
        stream=caller.stream(),
    )
    assert (sent.reply, sent.seq) == ("ok", 1)
    assert caller.got == [("A", {"text": "o"}), ("A", {"text": "k"})]
    page = await sessions.history(spawned.session_id, offset=0, limit=10)
    assert [(m.data, m.reply) for m in page.messages] == [("hi", "ok")]


async def test_a_send_that_streamed_is_not_migrated(store: SqliteStore) -> None:
    """A 'migrate' session whose instance drops after a delta: the send fails, nothing is
    replayed elsewhere; without the delta it would have moved to B."""
    driver = StreamingDriver({"A": Script([{"text": "x"}], error=down("A")), "B": Script(result=1)})
    sessions = sessions_over(store, driver)
    spawned = await sessions.spawn(SpawnRequest(instance="A", failover="migrate"))
    with pytest.raises(InstanceDownError):
        await sessions.send(
            spawned.session_id,
            "hi",
            timeout=5,
            idempotency_key=None,
            request_id="s2",
            stream=Caller().stream(),
        )
    assert [c.op for c in driver.calls] == ["session_send"]
    # A is down now (passive detection): the next send moves the session, as always
    moved = await sessions.send(
        spawned.session_id,
        "again",
        timeout=5,
        idempotency_key=None,
        request_id="s3",
        stream=Caller().stream(),
    )
    assert (moved.instance, moved.migrated_from, moved.reply) == ("B", "A", 1)


# -- a run's delta events --------------------------------------------------------------------


class Emitted:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))


async def test_delta_log_coalesces_text_and_keeps_order() -> None:
    """Within one interval the pieces wait; consecutive text joins; other values stay
    separate, in order; the first delta after a quiet interval is written at once."""
    now = [0.0]
    emitted = Emitted()
    log = DeltaLog(emitted, interval=10.0, clock=lambda: now[0])
    await log("A", {"text": "a"})  # written at once
    await log("A", {"text": "b"})
    await log("A", {"text": "c"})
    await log("A", {"n": 1})
    await log("A", {"text": "d"})
    assert len(emitted.events) == 1
    now[0] = 20.0
    await log("A", {"text": "e"})  # the interval passed: everything pending goes now
    await log.flush()
    log.close()
    assert emitted.events == [
        ("delta", {"instance": "A", "deltas": [{"text": "a"}]}),
        ("delta", {"instance": "A", "deltas": [{"text": "bc"}, {"n": 1}, {"text": "de"}]}),
    ]


async def test_delta_log_timer_writes_what_waits() -> None:
    emitted = Emitted()
    log = DeltaLog(emitted, interval=0.02)
    await log("A", {"text": "a"})
    await log("A", {"text": "b"})
    for _ in range(200):
        if len(emitted.events) == 2:
            break
        await asyncio.sleep(0.01)
    log.close()
    assert [e[1]["deltas"] for e in emitted.events] == [[{"text": "a"}], [{"text": "b"}]]
