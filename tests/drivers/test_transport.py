"""The instance transports: which one start-up picks, and what the lean one hands to aiohttp."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr, ValidationError

from openclaw_orchestrator.devtools.reference import create_instance_app, resolve_handler
from openclaw_orchestrator.models import InstanceSpec
from openclaw_orchestrator.sdk.bodies import STREAM_FROM_BYTES
from openclaw_orchestrator.server.composition import build_drivers
from openclaw_orchestrator.server.drivers.base import InstanceRequest, Reply
from openclaw_orchestrator.server.drivers.instance_transport import (
    AiohttpTransport,
    LeanTransport,
    open_transport,
)
from openclaw_orchestrator.server.drivers.lean import LeanHttp
from openclaw_orchestrator.server.drivers.worker import WorkerDriver
from openclaw_orchestrator.settings import InstancesSettings

Serve = Callable[[Any], Awaitable[str]]
SMALL = b'{"payload": 1}'
BIG = b'{"payload": "' + b"x" * STREAM_FROM_BYTES + b'"}'


class RecordingTransport(AiohttpTransport):
    """The aiohttp transport, noting each exchange it is handed."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        super().__init__(session)
        self.handed: list[str] = []

    async def exchange(self, request: InstanceRequest) -> Reply:
        self.handed.append(f"{request.method} {request.path}")
        return await super().exchange(request)


@pytest.mark.parametrize(
    ("method", "url", "body", "deadline", "lean"),
    [
        pytest.param("POST", "http://127.0.0.1:9", SMALL, True, True, id="small-post"),
        pytest.param("POST", "http://127.0.0.1:9/p", SMALL, True, True, id="with-prefix"),
        pytest.param("POST", "https://127.0.0.1:9", SMALL, True, False, id="https"),
        pytest.param("POST", "http://127.0.0.1:9", BIG, True, False, id="streamed-body"),
        pytest.param("POST", "http://127.0.0.1:9", SMALL, False, False, id="no-deadline"),
        pytest.param("PUT", "http://127.0.0.1:9", SMALL, True, False, id="put"),
        pytest.param("GET", "http://127.0.0.1:9", None, False, False, id="get"),
        pytest.param("DELETE", "http://127.0.0.1:9", None, True, False, id="delete"),
    ],
)
async def test_what_the_lean_transport_carries(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None,
    deadline: bool,
    lean: bool,
) -> None:
    """Only a small POST with a deadline to a plain http:// URL goes lean; the rest is aiohttp's."""
    transport = LeanTransport(LeanHttp(), fallback=AiohttpTransport(session))
    spec = InstanceSpec(name="A", url=url)
    request = InstanceRequest(
        method, spec, "/api/instance/task", body, 2.0, "r1", 1024, deadline=deadline
    )
    target = transport.lean_target(request)
    assert (target is not None) is lean
    await transport.aclose()


async def test_the_lean_transport_hands_the_rest_to_its_fallback(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """Against a real instance: the task goes lean; a probe, a restore, a close, a big body
    and a request id that cannot go out verbatim go through the fallback, and all succeed."""
    url = await serve(
        create_instance_app("A", resolve_handler("echo"), max_body_bytes=2 * STREAM_FROM_BYTES)
    )
    fallback = RecordingTransport(session)
    async with WorkerDriver(
        session, transport=LeanTransport(LeanHttp(), fallback=fallback)
    ) as driver:
        spec = InstanceSpec(name="A", url=url, credentials=SecretStr("t0k"))
        assert (await driver.invoke(spec, 1, timeout=2, request_id="r1"))["payload"] == 1
        assert fallback.handed == []
        await driver.probe(spec, timeout=2)
        await driver.invoke(spec, "x" * STREAM_FROM_BYTES, timeout=2, request_id="r2")
        await driver.invoke(spec, 2, timeout=2, request_id="r\u00e9")
        await driver.session_restore(spec, "s", [(1, 1)], timeout=2, request_id="r3")
        await driver.session_close(spec, "s", timeout=2)
    assert fallback.handed == [
        "GET /api/health/check",
        "POST /api/instance/task",
        "POST /api/instance/task",
        "PUT /api/instance/sessions/s",
        "DELETE /api/instance/sessions/s",
    ]


@pytest.mark.parametrize(
    ("kind", "expected"), [("lean", LeanTransport), ("aiohttp", AiohttpTransport)]
)
async def test_start_up_picks_the_configured_transport(
    session: aiohttp.ClientSession, kind: str, expected: type
) -> None:
    """``instances.transport`` decides the worker driver's transport once, at start-up."""
    drivers = build_drivers(session, InstancesSettings.model_validate({"transport": kind}))
    assert f"transport=<{expected.__name__}" in repr(drivers["worker"])
    for driver in drivers.values():
        await driver.aclose()


def test_an_unknown_transport_names_the_setting() -> None:
    """A transport that does not exist is refused at start-up, naming the field."""
    with pytest.raises(ValidationError, match="transport"):
        InstancesSettings.model_validate({"transport": "curl"})
    with pytest.raises(ValueError, match="unknown instance transport 'curl'"):
        open_transport("curl", None)  # type: ignore[arg-type]  # what a bad caller passes
