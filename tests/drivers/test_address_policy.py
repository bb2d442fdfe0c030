"""instances.allow/deny on every connect, on both instance transports (lean: tasks by the
httptools client, probes by aiohttp; aiohttp: both by aiohttp), for literal addresses and for
names after DNS.

Only loopback is used: a "denied" server is a real one on 127.0.0.1 that counts the
connections it accepts, so a test proves the refused connect never happened.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from openclaw_orchestrator.devtools.reference import create_instance_app, resolve_handler
from openclaw_orchestrator.domain.addresses import AddressPolicy
from openclaw_orchestrator.errors import AddressNotAllowedError
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.server.composition import client_session
from openclaw_orchestrator.server.drivers.instance_transport import TransportKind
from openclaw_orchestrator.server.drivers.worker import WorkerDriver

from ..counting_server import counting_server

Serve = Callable[[Any], Awaitable[str]]
Call = Callable[[WorkerDriver, InstanceSpec], Awaitable[Any]]

LOOPBACK_DENIED = AddressPolicy.parse(deny=["127.0.0.0/8"])
ONLY_127_0_0_1 = AddressPolicy.parse(allow=["127.0.0.1/32"])


async def _task(driver: WorkerDriver, spec: InstanceSpec) -> Any:
    """A task: the lean client's path on the lean transport."""
    return await driver.invoke(spec, {"n": 1}, timeout=2, request_id="r1")


async def _probe(driver: WorkerDriver, spec: InstanceSpec) -> Any:
    """A probe: the aiohttp session's path on either transport."""
    return await driver.probe(spec, timeout=2)


CALLS = [pytest.param(_task, id="task"), pytest.param(_probe, id="probe")]


@contextlib.asynccontextmanager
async def _driver(policy: AddressPolicy, transport: TransportKind) -> AsyncIterator[WorkerDriver]:
    """A WorkerDriver over a session built as the runtime builds it, both under ``policy``."""
    async with client_session(address_policy=policy) as session:
        async with WorkerDriver(session, transport=transport, address_policy=policy) as driver:
            yield driver


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_a_denied_address_is_never_connected_to(
    call: Call, host: str, transport: TransportKind
) -> None:
    """A literal denied address, or a name resolving into a denied range, fails with
    address_not_allowed in either client, and the server never sees a connection."""
    async with counting_server() as (port, accepted), _driver(LOOPBACK_DENIED, transport) as driver:
        spec = InstanceSpec(name="D", url=f"http://{host}:{port}")
        with pytest.raises(AddressNotAllowedError, match=r"instances\.deny 127\.0\.0\.0/8") as e:
            await call(driver, spec)
    assert (e.value.instance, e.value.code, e.value.status) == ("D", "address_not_allowed", 502)
    assert accepted == []


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_allow_list_admits_what_it_lists(
    call: Call, host: str, serve: Serve, transport: TransportKind
) -> None:
    """With only 127.0.0.1/32 allowed, the literal and a name resolving to it both work."""
    url = await serve(create_instance_app("A", resolve_handler("echo")))
    port = url.rsplit(":", 1)[1]
    async with _driver(ONLY_127_0_0_1, transport) as driver:
        assert await call(driver, InstanceSpec(name="A", url=f"http://{host}:{port}"))


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(
    ("policy", "host"),
    [
        pytest.param(ONLY_127_0_0_1, "127.0.0.2", id="literal-outside-allow"),
        pytest.param(AddressPolicy.parse(allow=["10.0.0.0/8"]), "localhost", id="name-outside"),
        pytest.param(AddressPolicy.parse(deny=["localhost"]), "localhost", id="denied-name"),
    ],
)
async def test_allow_list_refuses_the_rest(
    call: Call, policy: AddressPolicy, host: str, transport: TransportKind
) -> None:
    """Outside the allow list (or a denied name) is refused before any connect."""
    async with counting_server() as (port, accepted), _driver(policy, transport) as driver:
        with pytest.raises(AddressNotAllowedError):
            await call(driver, InstanceSpec(name="X", url=f"http://{host}:{port}"))
    assert accepted == []


async def test_the_default_policy_still_reaches_loopback(
    serve: Serve, transport: TransportKind
) -> None:
    """The default deny list (link-local, metadata) leaves loopback instances alone."""
    url = await serve(create_instance_app("A", resolve_handler("echo")))
    async with _driver(AddressPolicy.parse(), transport) as driver:
        spec = InstanceSpec(name="A", url=url.replace("127.0.0.1", "localhost"))
        assert await _task(driver, spec) == {"payload": {"n": 1}, "instance": "A"}
        assert (await _probe(driver, spec)).degraded is False
