"""Sessions on the reference instance: the conversation so far, per session id, in memory.

The orchestrator keeps the durable history; an instance only remembers what it has seen, so
ordering, replay (``PUT``) and migration show from outside. Memory is bounded twice: at most
``max_sessions`` sessions (the least recently used one is forgotten first) and at most
``max_history`` exchanges per session (the oldest are dropped, ``seen`` still counts them).

A replay comes whole or in pages (protocol v1.1): pages are *staged* in order, each one's
``offset`` the number staged before it, and the final page swaps the staged history in; the
session keeps answering from its old history until then. Staging is bounded like history.

Stdlib only: the app maps the ``ValueError`` raised here to its 400 envelope.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MAX_HISTORY",
    "DEFAULT_MAX_SESSIONS",
    "Exchange",
    "Restore",
    "RestoreOrderError",
    "Session",
    "SessionContext",
    "SessionStore",
    "is_valid_session_id",
    "parse_history",
    "parse_restore",
]

DEFAULT_MAX_SESSIONS = 10_000
DEFAULT_MAX_HISTORY = 1_000

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def is_valid_session_id(text: str) -> bool:
    """1-128 characters of ``A-Za-z0-9._:-``, starting with a letter or digit."""
    return _SESSION_ID.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Exchange:
    """One message of a conversation and the handler's result for it."""

    payload: Any
    result: Any

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape used by ``PUT`` and ``GET /api/instance/sessions/{id}``."""
        return {"payload": self.payload, "result": self.result}


@dataclass(frozen=True, slots=True)
class SessionContext:
    """The session a message belongs to, as its handler sees it (``HandlerContext.session``).

    ``history`` is the conversation *before* this message, oldest first, after trimming;
    ``trimmed`` counts the exchanges dropped from its front to bound memory.
    """

    id: str
    history: tuple[Exchange, ...] = ()
    trimmed: int = 0

    @property
    def seen(self) -> int:
        """Messages this session saw on this instance before this one (trimmed ones included)."""
        return self.trimmed + len(self.history)


class RestoreOrderError(ValueError):
    """A restore page that does not continue the staged ones (its ``offset`` is off)."""

    def __init__(self, offset: int, expected: int | None) -> None:
        if expected is None:
            message = f"offset: {offset}, but no paged restore is under way (start at 0)"
        else:
            message = f"offset: expected {expected} (exchanges staged so far), got {offset}"
        super().__init__(message)
        self.expected = expected


class Session:
    """One session's live state: kept exchanges, the count of all, and the lock ordering them.

    Messages of a session take ``lock`` in arrival order (``asyncio.Lock`` is FIFO), so the
    handler of one message sees every earlier message's exchange.
    """

    __slots__ = ("history", "id", "lock", "seen", "staged", "staged_count")

    def __init__(self, session_id: str, max_history: int) -> None:
        self.id = session_id
        self.history: deque[Exchange] = deque(maxlen=max_history)
        self.seen = 0
        self.lock = asyncio.Lock()
        self.staged: deque[Exchange] | None = None
        self.staged_count = 0

    def context(self) -> SessionContext:
        """A frozen snapshot for the handler of the next message."""
        return SessionContext(self.id, tuple(self.history), self.seen - len(self.history))

    def record(self, payload: Any, result: Any) -> None:
        """Append one exchange; the oldest falls off past ``max_history``."""
        self.history.append(Exchange(payload, result))
        self.seen += 1

    def replace(self, exchanges: Sequence[Exchange]) -> None:
        """Become the replayed conversation ``exchanges`` (its newest ``max_history`` kept)."""
        self.stage(exchanges, 0)
        self.commit()

    def stage(self, exchanges: Sequence[Exchange], offset: int) -> int:
        """Stage one restore page; ``offset`` 0 starts over, any other must equal the count
        staged so far (else RestoreOrderError). Returns the count staged."""
        staged = self.staged
        if offset == 0:
            staged = self.staged = deque(maxlen=self.history.maxlen)
            self.staged_count = 0
        elif staged is None or offset != self.staged_count:
            raise RestoreOrderError(offset, None if staged is None else self.staged_count)
        staged.extend(exchanges)
        self.staged_count += len(exchanges)
        return self.staged_count

    def commit(self) -> None:
        """Become the staged conversation (its newest ``max_history`` kept)."""
        if self.staged is None:
            raise RestoreOrderError(0, None)
        self.history, self.seen = self.staged, self.staged_count
        self.staged, self.staged_count = None, 0

    def to_dict(self) -> dict[str, Any]:
        """The body of ``GET /api/instance/sessions/{id}``."""
        history = [exchange.to_dict() for exchange in self.history]
        return {"session_id": self.id, "seen": self.seen, "history": history}

    def __repr__(self) -> str:
        state = "busy" if self.lock.locked() else "idle"
        return f"<Session {self.id} seen={self.seen} kept={len(self.history)} {state}>"


class SessionStore:
    """The sessions of one instance, least recently used first; bounded in count and length."""

    __slots__ = ("_sessions", "evicted", "max_history", "max_sessions")

    def __init__(
        self, *, max_sessions: int = DEFAULT_MAX_SESSIONS, max_history: int = DEFAULT_MAX_HISTORY
    ) -> None:
        if max_sessions < 1 or max_history < 1:
            raise ValueError("max_sessions and max_history must be positive")
        self.max_sessions = max_sessions
        self.max_history = max_history
        self.evicted = 0
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def get(self, session_id: str) -> Session | None:
        """The session, if this instance knows it; looking does not count as use."""
        return self._sessions.get(session_id)

    def open(self, session_id: str) -> Session:
        """The session, created when new and marked most recently used; may evict the LRU one.

        A session evicted or closed while a message of it runs finishes that message; the
        next message starts afresh.
        """
        session = self._sessions.get(session_id)
        if session is not None:
            self._sessions.move_to_end(session_id)
            return session
        session = self._sessions[session_id] = Session(session_id, self.max_history)
        if len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
            self.evicted += 1
        return session

    def close(self, session_id: str) -> bool:
        """Forget the session; whether it existed."""
        return self._sessions.pop(session_id, None) is not None

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def __repr__(self) -> str:
        return (
            f"<SessionStore open={len(self._sessions)} evicted={self.evicted}"
            f" max_sessions={self.max_sessions} max_history={self.max_history}>"
        )


@dataclass(frozen=True, slots=True)
class Restore:
    """One restore ``PUT``: its exchanges, the count staged before them, whether it ends."""

    exchanges: list[Exchange]
    offset: int = 0
    final: bool = True


def parse_restore(body: Any) -> Restore:
    """A restore body: ``{"history": [...]}`` (whole: offset 0, final) or a page with
    ``"offset"`` and ``"final"``; ValueError naming the field."""
    exchanges = parse_history(body)
    offset, final = body.get("offset", 0), body.get("final", True)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError("offset: expected an integer of 0 or more")
    if not isinstance(final, bool):
        raise ValueError("final: expected true or false")
    return Restore(exchanges, offset, final)


def parse_history(body: Any) -> list[Exchange]:
    """``{"history": [{"payload", "result"}, ...]}`` to exchanges; ValueError naming the field."""
    items = body.get("history") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ValueError('history: expected {"history": [{"payload": ..., "result": ...}]}')
    exchanges = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "payload" not in item or "result" not in item:
            raise ValueError(f'history[{index}]: expected {{"payload": ..., "result": ...}}')
        exchanges.append(Exchange(item["payload"], item["result"]))
    return exchanges
