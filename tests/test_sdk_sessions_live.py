"""Sessions through the SDK against a live orchestrator and real instances (``start_cluster``).

``AsyncClient`` runs in the test's loop next to the cluster. The sync ``Client`` drives its own
private loop, which cannot run inside this one, so its calls go to a worker thread
(``asyncio.to_thread``) while the cluster keeps serving here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from openclaw_orchestrator import (
    AsyncClient,
    AsyncSession,
    Client,
    ForbiddenError,
    HistoryEntry,
    NotFoundError,
    Session,
    SessionClosedError,
    SessionExistsError,
    SessionInfo,
    UnauthorizedError,
)
from tests.api.conftest import Cluster, start_cluster


@pytest.fixture(autouse=True)
def _no_orchestrator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token-only client must really have no key: no ORCHESTRATOR_* from the developer."""
    for name in ("ORCHESTRATOR_URL", "ORCHESTRATOR_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def live() -> AsyncIterator[Cluster]:
    """Four healthy echo instances A–D behind an orchestrator with a SQLite store."""
    async with start_cluster("ABCD") as c:
        yield c


@pytest.fixture
async def client(live: Cluster) -> AsyncIterator[AsyncClient]:
    """An AsyncClient of ``live`` with its API key."""
    async with AsyncClient(live.url, live.api_key) as c:
        yield c


async def test_spawn_send_history_close(client: AsyncClient) -> None:
    """A spawned handle holds its token, sends in order, pages its history and closes."""
    session = await client.sessions.spawn(
        "session1", instance="B", metadata={"user": "u1"}, ttl="1h"
    )
    assert isinstance(session, AsyncSession)
    assert session.id == "session1"
    assert session.token is not None
    assert session.token.startswith("ocs_")
    assert session.info is not None
    assert (session.info.instance, session.info.state, session.info.ttl) == ("B", "open", 3600)
    for n in (1, 2, 3):
        sent = await session.send({"n": n})
        assert (sent.seq, sent.instance, sent.migrated_from) == (n, "B", None)
        assert sent.reply == {
            "instance": "B",
            "payload": {"n": n},
            "session": {"id": "session1", "seen": n},
        }
    page = await session.history(limit=2)
    assert ([e.data for e in page.messages], page.total, page.next_offset) == (
        [{"n": 1}, {"n": 2}],
        3,
        2,
    )
    entries = [entry async for entry in client.sessions.iter_history("session1", page_size=2)]
    assert all(isinstance(entry, HistoryEntry) for entry in entries)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].kind == "message"
    assert entries[0].instance == "B"
    closed = await session.close()
    assert closed.state == "closed"
    assert session.is_closed
    assert (await client.sessions.get("session1")).messages == 3


async def test_list_filters_and_get(client: AsyncClient) -> None:
    """list filters by instance, state and recent activity; get returns one SessionInfo."""
    await client.sessions.spawn("on-a", instance="A")
    await client.sessions.spawn("on-c", instance="C")
    await client.sessions.close("on-c")
    on_a = await client.sessions.list(instance="A")
    assert [s.session_id for s in on_a] == ["on-a"]
    closed = await client.sessions.list(state="closed")
    assert [s.session_id for s in closed] == ["on-c"]
    recent = await client.sessions.list(active_within=5)
    assert {s.session_id for s in recent} == {"on-a", "on-c"}
    info = await client.sessions.get("on-a")
    assert isinstance(info, SessionInfo)
    assert (info.instance, info.state, info.messages) == ("A", "open", 0)


async def test_session_errors_are_typed(client: AsyncClient) -> None:
    """A taken id is SessionExistsError, an unknown one NotFoundError, a closed one
    SessionClosedError; closing a closed session again with the API key is fine."""
    await client.sessions.spawn("taken")
    with pytest.raises(SessionExistsError):
        await client.sessions.spawn("taken")
    with pytest.raises(NotFoundError):
        await client.sessions.send("nobody-here", {"x": 1})
    await client.sessions.close("taken")
    with pytest.raises(SessionClosedError):
        await client.sessions.send("taken", {"x": 1})
    assert (await client.sessions.close("taken")).state == "closed"


async def test_idempotency_key_replays_the_recorded_reply(client: AsyncClient) -> None:
    """The same Idempotency-Key twice runs once: same seq, replayed=True, one history entry."""
    session = await client.sessions.spawn("idem", instance="A")
    first = await session.send({"x": 1}, idempotency_key="m-1")
    again = await session.send({"x": 1}, idempotency_key="m-1")
    assert (first.seq, again.seq, first.replayed, again.replayed) == (1, 1, False, True)
    assert again.reply == first.reply
    assert (await session.history()).total == 1


async def test_async_with_closes_on_exit(client: AsyncClient) -> None:
    """`async with` closes the session on exit, even when the body closed it already."""
    async with await client.sessions.spawn("ctx") as session:
        await session.send({"hello": 1})
    assert (await client.sessions.get("ctx")).state == "closed"
    async with await client.sessions.spawn("ctx-twice") as session:
        await session.close()
    async with client.sessions.session("ctx-twice"):
        pass  # closing a closed session with the API key: 200 again
    assert (await client.sessions.get("ctx-twice")).state == "closed"


async def test_token_only_client_reaches_its_session_and_nothing_else(
    client: AsyncClient, live: Cluster
) -> None:
    """With no API key, a session token sends, reads and closes its own session; another
    session or any admin call is ForbiddenError; after close the token is dead (401)."""
    mine = await client.sessions.spawn("mine", instance="C")
    await client.sessions.spawn("other", instance="C")
    assert mine.token is not None
    async with AsyncClient(live.url) as keyless:
        handle = keyless.sessions.session("mine", token=mine.token)
        assert (await handle.send({"key": "value"})).seq == 1
        assert [e.seq async for e in handle.iter_history()] == [1]
        assert (await handle.get()).messages == 1
        with pytest.raises(ForbiddenError):
            await keyless.sessions.session("other", token=mine.token).send({"x": 1})
        with pytest.raises(UnauthorizedError):
            await keyless.sessions.list()
        async with handle:
            pass
        assert handle.is_closed
        with pytest.raises(UnauthorizedError) as dead:
            await handle.send({"x": 2})
        async with keyless.sessions.session("mine", token=mine.token):
            pass  # exit tolerates the dead token's 401
    assert mine.token not in repr(handle) + repr(handle.info) + str(dead.value)
    assert (await client.sessions.get("other")).messages == 0


async def test_token_on_admin_routes_is_forbidden(client: AsyncClient, live: Cluster) -> None:
    """A session token in place of the API key is 403 forbidden on list and spawn."""
    spawned = await client.sessions.spawn("scoped")
    assert spawned.token is not None
    async with AsyncClient(live.url, api_key=spawned.token) as wrong:
        with pytest.raises(ForbiddenError):
            await wrong.sessions.list()
        with pytest.raises(ForbiddenError):
            await wrong.sessions.spawn("stolen")


async def test_sync_sessions_in_a_worker_thread(live: Cluster) -> None:
    """Client.sessions works from a thread; a Session context manager closes on exit."""

    def use() -> tuple[Session, list[int], list[str]]:
        with Client(live.url, live.api_key) as client:
            with client.sessions.spawn("sync1", instance="D") as session:
                for n in range(3):
                    session.send({"n": n})
                seqs = [entry.seq for entry in session.iter_history(page_size=2)]
            listed = [info.session_id for info in client.sessions.list(state="closed")]
            return session, seqs, listed

    session, seqs, listed = await asyncio.to_thread(use)
    assert seqs == [1, 2, 3]
    assert session.is_closed
    assert listed == ["sync1"]
    assert repr(session) == "<Session id='sync1'>"
    async with AsyncClient(live.url, live.api_key) as client:
        assert (await client.sessions.get("sync1")).state == "closed"


async def test_sync_token_only_session(client: AsyncClient, live: Cluster) -> None:
    """The sync facade with only a token: send and history work, another session is 403."""
    spawned = await client.sessions.spawn("sync-token", instance="A")
    await client.sessions.spawn("sync-other", instance="A")
    token = spawned.token

    def use() -> tuple[int, int]:
        with Client(live.url) as keyless:
            session = keyless.sessions.session("sync-token", token=token)
            sent = session.send({"k": "v"})
            with pytest.raises(ForbiddenError):
                keyless.sessions.session("sync-other", token=token).history()
            return sent.seq, session.history().total

    assert await asyncio.to_thread(use) == (1, 1)
