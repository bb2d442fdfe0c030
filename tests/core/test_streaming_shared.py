"""Streamed session sends under the session lease (replicas sharing PostgreSQL): two
Orchestrators on one fresh database, a real reference instance running the ``stream``
handler, sends alternating between them. Deltas reach each caller in order, every reply is
recorded once at its position, and the instance saw each message once (fenced)."""

from __future__ import annotations

import contextlib
from typing import Any

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import resolve_handler
from openclaw_orchestrator.models import SpawnRequest
from openclaw_orchestrator.server.composition import build_drivers, client_session
from openclaw_orchestrator.server.core.dispatcher import Streaming
from openclaw_orchestrator.server.core.orchestrator import Orchestrator
from openclaw_orchestrator.server.hosting import BackgroundServer
from openclaw_orchestrator.server.stores.postgres import PostgresStore
from openclaw_orchestrator.settings import Settings

from ..storage_faults import postgres_database


async def test_streamed_sends_over_two_replicas_are_relayed_and_recorded() -> None:
    async with (
        postgres_database() as url,
        client_session() as http,
        contextlib.AsyncExitStack() as stack,
    ):
        instance_url = await stack.enter_async_context(
            BackgroundServer(create_instance_app("A", resolve_handler("stream")))
        )
        config = Settings.model_validate({"instances": [{"name": "A", "url": instance_url}]})
        replicas = []
        for _ in range(2):
            store = PostgresStore(url)
            await store.open()
            stack.push_async_callback(store.aclose)
            replicas.append(Orchestrator(config, drivers=build_drivers(http), store=store))
        spawned = await replicas[0].sessions.spawn(SpawnRequest(instance="A"))
        seen: list[list[Any]] = []
        for n in range(4):
            got: list[Any] = []

            async def take(instance: str, delta: Any, got: list[Any] = got) -> None:
                got.append((instance, delta))

            sent = await replicas[n % 2].sessions.send(
                spawned.session_id,
                {"text": f"message {n} here"},
                timeout=10,
                idempotency_key=None,
                request_id=f"r{n}",
                stream=Streaming(take),
            )
            assert (sent.seq, sent.reply) == (n + 1, {"text": f"message {n} here"})
            seen.append(got)
        assert seen == [
            [("A", {"text": "message "}), ("A", {"text": f"{n} "}), ("A", {"text": "here"})]
            for n in range(4)
        ]
        page = await replicas[1].sessions.history(spawned.session_id, offset=0, limit=10)
        assert [(m.seq, m.reply["text"]) for m in page.messages] == [
            (n + 1, f"message {n} here") for n in range(4)
        ]
