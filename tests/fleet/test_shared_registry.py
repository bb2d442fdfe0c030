"""Issue 11, item 2: the instance registry shared by replicas on one PostgreSQL database.

Three in-process replicas (each its own store, pool and fleet) on one fresh database: a
registration, heartbeat or unregistration through any replica reaches every replica within
two of its polls (0.1 s apart: well inside the 1 s asked for; ``-s`` prints the numbers),
and heartbeats expire by the database's clock alone: one replica's clock runs ten times too
fast and another's is frozen, and neither drops or keeps an instance on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import pytest_asyncio

from openclaw_orchestrator.errors import InvalidRequestError, NotFoundError
from openclaw_orchestrator.models import InstanceSpec

from ..storage_faults import postgres_database
from .replicas import ProbedInstance, Replica, probed_instance, replicas, wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

MAX_POLLS = 2  # a change is seen by the first poll that starts after its COMMIT
_started = time.monotonic()
_frozen = time.monotonic()


def fast_clock() -> float:
    """A monotonic clock running ten times too fast."""
    return _started + (time.monotonic() - _started) * 10


def frozen_clock() -> float:
    """A monotonic clock that never moves."""
    return _frozen


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def instance() -> AsyncIterator[ProbedInstance]:
    """The instance every registration points at."""
    async with probed_instance("P") as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(instance: ProbedInstance) -> AsyncIterator[list[Replica]]:
    """Three replicas: 1's clock is frozen, 2's runs 10x fast; 2's config also has Q."""
    static: list[dict[str, Any]] = [{"name": "A", "url": instance.url}]
    config = {"instances": {"static": static}}
    config_q = {"instances": {"static": [*static, {"name": "Q", "url": "http://127.0.0.1:9"}]}}
    async with postgres_database() as url:
        clocks = {1: frozen_clock, 2: fast_clock}
        async with replicas(url, [config, config, config_q], clocks=clocks) as started:
            yield started


_names = (f"R{n}" for n in itertools.count(1))


def spec(url: str, **fields: Any) -> InstanceSpec:
    """A registration of a fresh name at ``url``."""
    return InstanceSpec.model_validate({"name": next(_names), "url": url, **fields})


async def test_a_registration_through_one_replica_is_seen_by_every_replica(
    fleet: list[Replica], instance: ProbedInstance
) -> None:
    """201 through replica 0, credentials and all on 1 and 2 within two polls; the same
    registration through 1 and 2 is a heartbeat (200), not a new instance."""
    registration = spec(instance.url, credentials="tok-s3cret", tags=["x"])
    info, created = await fleet[0].orchestrator.register(registration)
    assert created
    assert info.has_credentials
    for replica in fleet[1:]:
        waited = await wait_until(partial(replica.has, registration.name), fleet=replica.fleet)
        print(f"registration seen on replica {replica.index}: {waited}")
        assert waited.polls <= MAX_POLLS
        record = replica.orchestrator.registry.get(registration.name)
        assert record.source == "registered"
        assert record.spec.credentials is not None
        assert record.spec.credentials.get_secret_value() == "tok-s3cret"
        assert record.spec.tags == ["x"]
        assert "tok-s3cret" not in repr(record.info())
    for replica in fleet[1:]:
        _, created = await replica.orchestrator.register(registration)
        assert not created


async def test_unregistering_through_another_replica_removes_it_everywhere(
    fleet: list[Replica], instance: ProbedInstance
) -> None:
    """Registered through 1, unregistered through 2: gone from 0 and 1 within two polls;
    unregistering it again, anywhere, is a 404."""
    registration = spec(instance.url)
    await fleet[1].orchestrator.register(registration)
    for replica in fleet:
        await wait_until(partial(replica.has, registration.name))
    await fleet[2].orchestrator.unregister(registration.name)
    assert not fleet[2].has(registration.name)
    for replica in fleet[:2]:
        waited = await wait_until(partial(replica.lacks, registration.name), fleet=replica.fleet)
        print(f"unregistration seen on replica {replica.index}: {waited}")
        assert waited.polls <= MAX_POLLS
    with pytest.raises(NotFoundError):
        await fleet[0].orchestrator.unregister(registration.name)


async def test_heartbeats_through_any_replica_keep_it_and_the_database_clock_expires_it(
    fleet: list[Replica], instance: ProbedInstance
) -> None:
    """``heartbeat_ttl`` 0.6 s, heartbeats every 0.2 s through the replicas in turn: no
    replica drops it (2's clock runs 10x fast: its own judgement would drop it within 0.06 s),
    then, heartbeats stopped, every replica drops it (1's clock is frozen: it never would)."""
    registration = spec(instance.url, heartbeat_ttl=0.6)
    _, created = await fleet[0].orchestrator.register(registration)
    assert created
    for replica in fleet:
        await wait_until(partial(replica.has, registration.name))
    absences, created_again = 0, 0
    loop = asyncio.get_running_loop()
    for beat in range(15):
        _, new = await fleet[beat % 3].orchestrator.register(registration)
        created_again += new
        until = loop.time() + 0.2
        while loop.time() < until:
            absences += sum(not r.has(registration.name) for r in fleet)
            await asyncio.sleep(0.02)
    print(f"15 heartbeats over 3 replicas: {absences} absences, {created_again} re-creations")
    assert (absences, created_again) == (0, 0)
    for replica in fleet:
        waited = await wait_until(partial(replica.lacks, registration.name))
        print(f"expired on replica {replica.index} after {waited.seconds:.3f} s")
    _, created = await fleet[1].orchestrator.register(registration)
    assert created  # an expired registration that comes back is new again


async def test_a_registration_cannot_replace_a_config_instance(
    fleet: list[Replica], instance: ProbedInstance
) -> None:
    """ "A" is every replica's config: 400 naming ``name``. "Q" is replica 2's only: it may
    be registered through 0 (and reaches 1) while 2 keeps its own Q, before and after."""
    with pytest.raises(InvalidRequestError) as refused:
        await fleet[0].orchestrator.register(InstanceSpec(name="A", url=instance.url))
    assert refused.value.field == "name"
    q = InstanceSpec(name="Q", url=instance.url)
    _, created = await fleet[0].orchestrator.register(q)
    assert created
    await wait_until(partial(fleet[1].has, "Q"))
    with pytest.raises(InvalidRequestError):
        await fleet[2].orchestrator.register(q)
    await asyncio.sleep(0.3)  # three of 2's polls
    kept = fleet[2].orchestrator.registry.get("Q")
    assert (kept.source, kept.spec.url) == ("config", "http://127.0.0.1:9")
    await fleet[1].orchestrator.unregister("Q")
    await wait_until(partial(fleet[0].lacks, "Q"))
    await asyncio.sleep(0.3)
    assert fleet[2].orchestrator.registry.get("Q").source == "config"


async def test_a_replica_started_later_holds_the_fleet_once_started(
    fleet: list[Replica], instance: ProbedInstance
) -> None:
    """A new replica's start loads every live registration before it serves."""
    registration = spec(instance.url, credentials="late-tok")
    await fleet[0].orchestrator.register(registration)
    url = fleet[0].store.url
    config = {"instances": {"static": [{"name": "A", "url": instance.url}]}}
    async with replicas(url, config, count=1) as (late,):
        assert late.has(registration.name)
        credentials = late.orchestrator.registry.get(registration.name).spec.credentials
        assert credentials is not None
        assert credentials.get_secret_value() == "late-tok"
        assert set(fleet[0].orchestrator.registry.resolve(None, field="t")) <= {
            *late.orchestrator.registry.resolve(None, field="t")
        }
