"""Sessions on the reference instance: the conversation so far, per session id, in memory.

The orchestrator keeps the durable history; an instance only remembers what it has seen, so
ordering, replay (``PUT``) and migration show from outside. Memory is bounded twice: at most
``max_sessions`` sessions (the least recently used one is forgotten first) and at most
``max_history`` exchanges per session (the oldest are dropped, ``seen`` still counts them).

A replay comes whole or in pages (protocol v1.1): pages are *staged* in order, each one's
``offset`` the number staged before it, and the final page swaps the staged history in; the
session keeps answering from its old history until then. Staging is bounded like history.

Fencing (protocol v1.2) keeps a stale sender out: each session remembers the highest
``epoch`` it was sent (a request below it is :class:`StaleError`, ``stale_epoch``), the last
message position ``seq`` it ran and that run's reply (the same ``seq`` again is answered from
it, a lower one is ``stale_seq``). A close with an epoch leaves a *tombstone*, id -> epoch,
bounded like the sessions, so a late message of the closed session is refused rather than
starting a new one. Requests without an epoch or seq are not fenced at all (v1.1).

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
    "StaleError",
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


class StaleError(Exception):
    """A fenced request from behind the session's fence (protocol v1.2); ``code`` is
    ``stale_epoch`` or ``stale_seq``. Nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Session:
    """One session's live state: kept exchanges, the count of all, the lock ordering them and
    its fence (``epoch``: the highest seen, None before any; ``seq``: the last position run
    or restored, 0 before any; ``reply``: the body that run answered, to answer it again).

    Messages of a session take ``lock`` in arrival order (``asyncio.Lock`` is FIFO), so the
    handler of one message sees every earlier message's exchange.
    """

    __slots__ = ("epoch", "history", "id", "lock", "reply", "seen", "seq", "staged", "staged_count")

    def __init__(self, session_id: str, max_history: int, epoch: int | None = None) -> None:
        self.id = session_id
        self.history: deque[Exchange] = deque(maxlen=max_history)
        self.seen = 0
        self.lock = asyncio.Lock()
        self.staged: deque[Exchange] | None = None
        self.staged_count = 0
        self.epoch = epoch
        self.seq = 0
        self.reply: bytes | None = None

    def admit(self, epoch: int | None) -> None:
        """Take a request fenced with ``epoch`` (None: unfenced, always taken), raising the
        session's epoch to it; StaleError when it is below the session's."""
        if epoch is None:
            return
        if self.epoch is not None and epoch < self.epoch:
            raise StaleError(
                "stale_epoch",
                f"session {self.id}: epoch {epoch} < {self.epoch}, the newest this instance "
                "has seen; a newer lease holds the session",
            )
        self.epoch = epoch

    def replayed(self, seq: int | None) -> bytes | None:
        """The reply to answer again when message ``seq`` is the last one run; None when it
        is to run (unfenced, or past the last); StaleError when it is behind."""
        if seq is None or seq > self.seq:
            return None
        if seq == self.seq and self.reply is not None:
            return self.reply
        if seq < self.seq:
            why = f"{seq} < {self.seq}, the last position this instance ran or restored"
        else:
            why = f"{seq} is where the restored history ends; no reply is kept to repeat"
        raise StaleError("stale_seq", f"session {self.id}: seq {why}")

    def remember(self, seq: int | None, reply: bytes) -> None:
        """Note that message ``seq`` ran and answered ``reply`` (unfenced: nothing to note)."""
        if seq is not None:
            self.seq, self.reply = seq, reply

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

    def commit(self, seq: int | None = None) -> None:
        """Become the staged conversation (its newest ``max_history`` kept), which ends at
        message position ``seq`` when given; no reply of the old conversation is kept."""
        if self.staged is None:
            raise RestoreOrderError(0, None)
        self.history, self.seen = self.staged, self.staged_count
        self.staged, self.staged_count = None, 0
        if seq is not None:
            self.seq = seq
        self.reply = None

    def to_dict(self) -> dict[str, Any]:
        """The body of ``GET /api/instance/sessions/{id}``."""
        history = [exchange.to_dict() for exchange in self.history]
        body: dict[str, Any] = {"session_id": self.id, "seen": self.seen, "history": history}
        if self.epoch is not None:
            body["epoch"] = self.epoch
        if self.seq:
            body["seq"] = self.seq
        return body

    def __repr__(self) -> str:
        state = "busy" if self.lock.locked() else "idle"
        fence = "" if self.epoch is None else f" epoch={self.epoch} seq={self.seq}"
        return f"<Session {self.id} seen={self.seen} kept={len(self.history)}{fence} {state}>"


class SessionStore:
    """The sessions of one instance, least recently used first; bounded in count and length.
    So are the tombstones of fenced closes (id -> epoch), the oldest forgotten first."""

    __slots__ = ("_sessions", "_tombstones", "evicted", "max_history", "max_sessions")

    def __init__(
        self, *, max_sessions: int = DEFAULT_MAX_SESSIONS, max_history: int = DEFAULT_MAX_HISTORY
    ) -> None:
        if max_sessions < 1 or max_history < 1:
            raise ValueError("max_sessions and max_history must be positive")
        self.max_sessions = max_sessions
        self.max_history = max_history
        self.evicted = 0
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._tombstones: OrderedDict[str, int] = OrderedDict()

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
        closed_at = self._tombstones.pop(session_id, None)  # a new life, as fenced as the old
        session = Session(session_id, self.max_history, closed_at)
        self._sessions[session_id] = session
        if len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
            self.evicted += 1
        return session

    def admit(self, session_id: str, epoch: int | None) -> Session:
        """:meth:`open` for a request fenced with ``epoch`` (None: unfenced, as ``open``),
        raising the session's epoch to it; StaleError, before anything changes, when it is
        below the session's or not above the epoch the session was closed at."""
        known = self._sessions.get(session_id)
        if known is not None:
            known.admit(epoch)  # before open() counts it as used
            return self.open(session_id)
        if epoch is not None:
            self._check_tombstone(session_id, epoch, closing=False)
        session = self.open(session_id)  # a new life starts at the tombstone's epoch
        session.admit(epoch)
        return session

    def close(self, session_id: str, epoch: int | None = None) -> bool:
        """Forget the session; whether it existed. With an ``epoch`` (checked as by
        :meth:`admit`, though closing again at the same epoch is fine) leave a tombstone."""
        session = self._sessions.get(session_id)
        if epoch is not None:
            if session is not None:
                session.admit(epoch)  # a message still queued behind now finds itself stale
            else:
                self._check_tombstone(session_id, epoch, closing=True)
            self._tombstones[session_id] = epoch
            self._tombstones.move_to_end(session_id)
            if len(self._tombstones) > self.max_sessions:
                self._tombstones.popitem(last=False)
        return self._sessions.pop(session_id, None) is not None

    def _check_tombstone(self, session_id: str, epoch: int, *, closing: bool) -> None:
        """StaleError when ``session_id`` was closed at an epoch a request at ``epoch``
        cannot follow: a message or restore needs a higher one, a close at least the same."""
        closed_at = self._tombstones.get(session_id)
        if closed_at is None or epoch > closed_at or (closing and epoch == closed_at):
            return
        sign = "<" if closing else "<="
        raise StaleError(
            "stale_epoch",
            f"session {session_id}: epoch {epoch} {sign} {closed_at}, the epoch it was closed at",
        )

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def __repr__(self) -> str:
        return (
            f"<SessionStore open={len(self._sessions)} evicted={self.evicted}"
            f" tombstones={len(self._tombstones)}"
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
