"""Fencing on the reference instance (protocol v1.2) over raw HTTP: ``X-Session-Epoch`` keeps
a stale sender out, ``X-Session-Seq`` answers a redelivered message without running it, and
a fenced close leaves a tombstone. Every test counts the handler's runs, since "nothing ran"
is the point. The app runs with and without its task fast path (session routes never take
it, and must not start to)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from openclaw_orchestrator.devtools.reference import HandlerContext, create_instance_app
from openclaw_orchestrator.devtools.reference.sessions import SessionStore, StaleError

Serve = Callable[[Any], Awaitable[str]]
SESSIONS = "/api/instance/sessions"


class Counting:
    """An echo handler that counts its runs; a payload ``"block"`` sets ``blocked`` and waits
    for ``release``, ``"fail"`` raises (a 500)."""

    def __init__(self) -> None:
        self.runs = 0
        self.blocked = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, payload: Any, context: HandlerContext) -> Any:
        self.runs += 1
        if payload == "block":
            self.blocked.set()
            await self.release.wait()
        if payload == "fail":
            raise RuntimeError("failed on purpose")
        assert context.session is not None
        return {"payload": payload, "seen": context.session.seen + 1, "run": self.runs}


@pytest.fixture(params=[True, False], ids=["fast-path", "starlette"])
async def served(request: pytest.FixtureRequest, serve: Serve) -> tuple[str, Counting]:
    """A reference instance running a :class:`Counting` handler, and the handler."""
    handler = Counting()
    url = await serve(create_instance_app("A", handler, max_sessions=2, fast_path=request.param))
    return url, handler


def _fence(epoch: int | str | None = None, seq: int | str | None = None) -> dict[str, str]:
    headers = {}
    if epoch is not None:
        headers["X-Session-Epoch"] = str(epoch)
    if seq is not None:
        headers["X-Session-Seq"] = str(seq)
    return headers


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, Any]:
    """``(status, parsed body, headers)`` of one request."""
    async with session.request(method, url, **kwargs) as resp:
        return resp.status, orjson.loads(await resp.read()), resp.headers


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    sid: str,
    payload: Any,
    epoch: int | str | None = None,
    seq: int | str | None = None,
) -> tuple[int, Any, Any]:
    """One session message, fenced as given."""
    return await _call(
        session,
        "POST",
        f"{url}{SESSIONS}/{sid}/messages",
        json={"payload": payload},
        headers=_fence(epoch, seq),
    )


async def _restore(
    session: aiohttp.ClientSession, url: str, sid: str, body: Any, **fence: Any
) -> tuple[int, Any]:
    status, reply, _ = await _call(
        session, "PUT", f"{url}{SESSIONS}/{sid}", json=body, headers=_fence(**fence)
    )
    return status, reply


async def _close(
    session: aiohttp.ClientSession, url: str, sid: str, epoch: int | None = None
) -> tuple[int, Any]:
    status, reply, _ = await _call(
        session, "DELETE", f"{url}{SESSIONS}/{sid}", headers=_fence(epoch)
    )
    return status, reply


async def _state(session: aiohttp.ClientSession, url: str, sid: str) -> tuple[int, Any]:
    status, body, _ = await _call(session, "GET", f"{url}{SESSIONS}/{sid}")
    return status, body


def _error(body: Any) -> tuple[str, str]:
    return body["error"]["code"], body["error"]["message"]


PAIRS = {"history": [{"payload": "a", "result": 1}, {"payload": "b", "result": 2}]}


async def test_a_lower_epoch_is_refused_and_nothing_runs(
    served: tuple[str, Counting], session: aiohttp.ClientSession
) -> None:
    """Epoch 5 runs; 4 is 409 stale_epoch (its message says 4 < 5) and runs nothing; equal
    and higher run, and the higher becomes the session's epoch."""
    url, handler = served
    assert (await _send(session, url, "s", "x", epoch=5))[0] == 200
    status, body, _ = await _send(session, url, "s", "y", epoch=4)
    code, message = _error(body)
    assert (status, code) == (409, "stale_epoch")
    assert "epoch 4 < 5" in message
    assert handler.runs == 1
    assert (await _send(session, url, "s", "z", epoch=5))[0] == 200
    assert (await _send(session, url, "s", "w", epoch=6))[0] == 200
    assert (await _send(session, url, "s", "v", epoch=5))[0] == 409
    _, state = await _state(session, url, "s")
    assert (state["seen"], state["epoch"], handler.runs) == (3, 6, 3)


async def test_the_same_seq_is_answered_again_without_running(
    served: tuple[str, Counting], session: aiohttp.ClientSession
) -> None:
    """A redelivered seq gets the remembered reply with ``X-Session-Replayed: true`` and
    the handler does not run; a newer epoch redelivering it (the next lease holder after a
    crash) gets it too; a lower seq is 409 stale_seq."""
    url, handler = served
    status, first, headers = await _send(session, url, "s", "x", epoch=1, seq=1)
    assert status == 200
    assert "X-Session-Replayed" not in headers
    status, again, headers = await _send(session, url, "s", "x", epoch=2, seq=1)
    assert (status, again, headers["X-Session-Replayed"]) == (200, first, "true")
    assert handler.runs == 1
    status, second, _ = await _send(session, url, "s", "y", epoch=2, seq=3)  # gaps are fine
    assert (status, second["seen"], handler.runs) == (200, 2, 2)
    status, body, _ = await _send(session, url, "s", "x", epoch=2, seq=1)
    assert (status, _error(body)[0], handler.runs) == (409, "stale_seq", 2)
    _, state = await _state(session, url, "s")
    assert (state["seen"], state["seq"]) == (2, 3)


async def test_a_failed_message_leaves_the_seq_where_it_was(
    served: tuple[str, Counting], session: aiohttp.ClientSession
) -> None:
    """A message whose handler fails is not remembered: its seq sent again runs again."""
    url, handler = served
    assert (await _send(session, url, "s", "fail", seq=1))[0] == 500
    status, body, headers = await _send(session, url, "s", "ok", seq=1)
    assert (status, body["seen"], handler.runs) == (200, 1, 2)
    assert "X-Session-Replayed" not in headers


async def test_a_restore_sets_epoch_and_seq_and_a_stale_one_lands_nowhere(
    served: tuple[str, Counting], session: aiohttp.ClientSession
) -> None:
    """A fenced restore sets the session's epoch and, on its final page, its seq with no
    reply kept (that seq again is stale_seq, the next runs); a restore below the epoch,
    whole or one page of it, is refused and the session keeps its history."""
    url, handler = served
    assert (await _restore(session, url, "s", PAIRS, epoch=3, seq=7))[0] == 200
    _, state = await _state(session, url, "s")
    assert (state["seen"], state["epoch"], state["seq"]) == (2, 3, 7)
    status, body, _ = await _send(session, url, "s", "x", epoch=3, seq=7)
    assert (status, _error(body)[0], handler.runs) == (409, "stale_seq", 0)
    status, body, _ = await _send(session, url, "s", "x", epoch=3, seq=8)
    assert (status, body["seen"], handler.runs) == (200, 3, 1)

    status, body = await _restore(session, url, "s", {"history": []}, epoch=2, seq=1)
    assert (status, _error(body)[0]) == (409, "stale_epoch")
    page = {"history": [{"payload": "p", "result": 0}], "offset": 0, "final": False}
    assert (await _restore(session, url, "s", page, epoch=3))[0] == 200
    assert (await _send(session, url, "s", "y", epoch=4, seq=9))[0] == 200  # a newer lease
    last = {"history": [], "offset": 1, "final": True}
    status, body = await _restore(session, url, "s", last, epoch=3, seq=1)
    assert (status, _error(body)[0]) == (409, "stale_epoch")
    _, state = await _state(session, url, "s")
    assert (state["seen"], state["epoch"], state["seq"]) == (4, 4, 9)


async def test_a_fenced_close_leaves_a_tombstone(
    served: tuple[str, Counting], session: aiohttp.ClientSession
) -> None:
    """After a close at epoch 3, a late message at 3 or below is stale_epoch and starts no
    session; closing again at 3 is fine, at 2 is refused; a message at 4 starts afresh."""
    url, handler = served
    assert (await _send(session, url, "s", "x", epoch=2))[0] == 200
    assert await _close(session, url, "s", epoch=3) == (200, {"closed": "s"})
    for epoch in (3, 2):
        status, body, _ = await _send(session, url, "s", "late", epoch=epoch)
        assert (status, _error(body)[0]) == (409, "stale_epoch")
        assert f"epoch {epoch} <= 3" in _error(body)[1]
    assert (await _state(session, url, "s"))[0] == 404
    assert (await _close(session, url, "s", epoch=3))[0] == 200
    status, body = await _close(session, url, "s", epoch=2)
    assert (status, _error(body)[0]) == (409, "stale_epoch")
    status, body, _ = await _send(session, url, "s", "new", epoch=4, seq=1)
    assert (status, body["seen"], handler.runs) == (200, 1, 2)


async def test_a_stale_close_changes_nothing(
    served: tuple[str, Counting], session: aiohttp.ClientSession
) -> None:
    """A close below the session's epoch is refused and the session stays as it was."""
    url, _ = served
    assert (await _send(session, url, "s", "x", epoch=5))[0] == 200
    status, body = await _close(session, url, "s", epoch=4)
    assert (status, _error(body)[0]) == (409, "stale_epoch")
    _, state = await _state(session, url, "s")
    assert (state["seen"], state["epoch"]) == (1, 5)


async def test_tombstones_are_bounded_like_sessions(
    served: tuple[str, Counting], session: aiohttp.ClientSession
) -> None:
    """With max_sessions 2, a third fenced close forgets the oldest tombstone: that id then
    takes an old epoch as a new session."""
    url, _ = served
    for sid in ("a", "b", "c"):
        assert (await _close(session, url, sid, epoch=5))[0] == 200
    assert (await _send(session, url, "b", "x", epoch=1))[0] == 409
    assert (await _send(session, url, "a", "x", epoch=1))[0] == 200


async def test_a_message_queued_behind_a_newer_epoch_does_not_run(
    served: tuple[str, Counting], session: aiohttp.ClientSession
) -> None:
    """Epoch 1's second message waits behind its first; epoch 2 arrives meanwhile: when its
    turn comes, the queued epoch-1 message is refused, and epoch 2's runs."""
    url, handler = served
    first = asyncio.create_task(_send(session, url, "s", "block", epoch=1))
    await handler.blocked.wait()
    queued = asyncio.create_task(_send(session, url, "s", "queued", epoch=1))
    await asyncio.sleep(0.05)
    newer = asyncio.create_task(_send(session, url, "s", "newer", epoch=2))
    await asyncio.sleep(0.05)
    handler.release.set()
    statuses = [(await task)[0] for task in (first, queued, newer)]
    assert (statuses, handler.runs) == ([200, 409, 200], 2)


@pytest.mark.parametrize(
    ("method", "header", "value"),
    [
        ("POST", "X-Session-Epoch", "-1"),
        ("POST", "X-Session-Epoch", "abc"),
        ("POST", "X-Session-Epoch", "1.5"),
        ("POST", "X-Session-Epoch", "9" * 19),
        ("POST", "X-Session-Seq", "0"),
        ("PUT", "X-Session-Seq", "x"),
        ("PUT", "X-Session-Epoch", ""),
        ("DELETE", "X-Session-Epoch", "٣"),  # a digit, but not ASCII (sent as UTF-8 bytes)
    ],
)
async def test_a_malformed_fence_header_is_a_400_naming_it(
    served: tuple[str, Counting],
    session: aiohttp.ClientSession,
    method: str,
    header: str,
    value: str,
) -> None:
    """A fence header that is not a decimal integer in range is 400 invalid_request naming
    the header, and no session is created or run."""
    url, handler = served
    path = f"{url}{SESSIONS}/s" + ("/messages" if method == "POST" else "")
    body = {"payload": 1} if method == "POST" else PAIRS
    headers = {header: value.encode().decode("latin-1")}
    status, reply, _ = await _call(session, method, path, json=body, headers=headers)
    code, message = _error(reply)
    assert (status, code, handler.runs) == (400, "invalid_request", 0)
    assert message.startswith(f"{header}:")
    assert (await _state(session, url, "s"))[0] == 404


async def test_without_headers_nothing_is_fenced(
    served: tuple[str, Counting], session: aiohttp.ClientSession
) -> None:
    """v1.1 exactly: unfenced messages always run, GET shows no epoch or seq, and an
    unfenced close leaves no tombstone."""
    url, handler = served
    for _ in range(2):
        assert (await _send(session, url, "s", "same"))[0] == 200
    _, state = await _state(session, url, "s")
    assert (state.keys(), handler.runs) == ({"session_id", "seen", "history"}, 2)
    assert (await _close(session, url, "s"))[0] == 200
    assert (await _send(session, url, "s", "again", epoch=0))[1]["seen"] == 1


def test_store_admit_and_close_rules() -> None:
    """The session store's fence rules, without HTTP: stale epochs raise before anything
    changes, a tombstone outlives the close and is consumed by the next life."""
    store = SessionStore(max_sessions=2)
    live = store.admit("s", 3)
    with pytest.raises(StaleError, match="epoch 2 < 3") as stale:
        store.admit("s", 2)
    assert stale.value.code == "stale_epoch"
    assert store.admit("s", None) is live  # unfenced: never refused
    assert store.close("s", 4)
    with pytest.raises(StaleError, match="epoch 4 <= 4"):
        store.admit("s", 4)
    assert "s" not in store
    reborn = store.admit("s", 5)
    assert (reborn is not live, reborn.epoch, repr(store)) == (
        True,
        5,
        "<SessionStore open=1 evicted=0 tombstones=0 max_sessions=2 max_history=1000>",
    )
