"""Session rules: tokens, sendability, expiry and rendezvous placement (pure)."""

from __future__ import annotations

from collections import Counter

import pytest

from openclaw_orchestrator.domain.sessions import (
    SessionRecord,
    as_of,
    check_sendable,
    check_token,
    hash_token,
    is_idle_expired,
    make_token,
    rendezvous_order,
    token_matches,
)
from openclaw_orchestrator.errors import (
    ForbiddenError,
    NotFoundError,
    SessionClosedError,
    UnauthorizedError,
)

NAMES = list("ABCDEFGH")


def record(**kw: object) -> SessionRecord:
    """A session with test defaults."""
    base: dict[str, object] = {
        "id": "s", "instance": "A", "token_hash": hash_token("ocs_t"), "ttl": 10.0,
        "created_at": 100.0, "last_active_at": 100.0,
    }  # fmt: skip
    return SessionRecord(**{**base, **kw})  # type: ignore[arg-type]


def test_token_shape_and_hash() -> None:
    """Tokens carry the ocs_ prefix; only a SHA-256 hex digest is kept."""
    token = make_token(bytes(range(24)))
    assert token.startswith("ocs_")
    assert "=" not in token
    assert len(hash_token(token)) == 64
    assert hash_token(token) != token


def test_token_needs_enough_randomness() -> None:
    """Fewer than 16 random bytes is refused."""
    with pytest.raises(ValueError, match="16 random bytes"):
        make_token(b"short")


@pytest.mark.parametrize(("token", "ok"), [("ocs_t", True), ("ocs_x", False), ("", False)])
def test_token_matches(token: str, ok: bool) -> None:
    """Only the session's own token matches."""
    assert token_matches(token, record()) is ok


@pytest.mark.parametrize(
    ("state", "now", "expired"),
    [("open", 109.0, False), ("open", 110.5, True), ("closed", 500.0, False)],
)
def test_idle_expiry(state: str, now: float, expired: bool) -> None:
    """An open session expires once idle past its TTL; closed ones have no expiry."""
    assert is_idle_expired(record(state=state), now) is expired


@pytest.mark.parametrize(
    ("state", "now", "seen"),
    [("open", 109.0, "open"), ("open", 110.5, "expired"), ("closed", 500.0, "closed"),
     ("expired", 105.0, "expired")],
)  # fmt: skip
def test_as_of_applies_expiry_before_the_sweeper(state: str, now: float, seen: str) -> None:
    """A reader sees an open session idle past its TTL as expired, with no expiry time."""
    current = as_of(record(state=state), now)
    assert current.state == seen
    assert (current.expires_at is None) is (seen != "open")


@pytest.mark.parametrize(
    ("rec", "token", "now", "error"),
    [
        (record(), "ocs_t", 105.0, None),
        (None, "ocs_t", 105.0, ForbiddenError),
        (record(), "ocs_x", 105.0, ForbiddenError),
        (record(), "ocs_t", 110.5, UnauthorizedError),
        (record(state="closed"), "ocs_t", 105.0, UnauthorizedError),
    ],
)
def test_check_token(
    rec: SessionRecord | None, token: str, now: float, error: type[Exception] | None
) -> None:
    """A token works for its own session while it is open and not idle past its TTL; another
    session's token is Forbidden, an expired or closed session's token Unauthorized."""
    if error is None:
        check_token(rec, token, now)
        return
    with pytest.raises(error):
        check_token(rec, token, now)


def test_check_sendable() -> None:
    """Unknown is NotFound; closed, expired or idle-past-TTL is SessionClosed."""
    assert check_sendable(record(), "s", 105.0).id == "s"
    with pytest.raises(NotFoundError):
        check_sendable(None, "s", 105.0)
    for rec, now, state in [
        (record(state="closed"), 105.0, "closed"),
        (record(state="expired"), 105.0, "expired"),
        (record(), 111.0, "expired"),
    ]:
        with pytest.raises(SessionClosedError) as info:
            check_sendable(rec, "s", now)
        assert info.value.details == {"state": state}


def test_rendezvous_is_stable() -> None:
    """The same key always maps to the same instance, whatever the candidate order."""
    first = rendezvous_order("session1", NAMES, {})
    assert rendezvous_order("session1", list(reversed(NAMES)), {}) == first
    assert sorted(first) == NAMES


def test_rendezvous_moves_only_the_removed_instances_keys() -> None:
    """Removing one instance moves only the keys that lived on it."""
    keys = [f"k{i}" for i in range(400)]
    before = {k: rendezvous_order(k, NAMES, {})[0] for k in keys}
    rest = [n for n in NAMES if n != "C"]
    after = {k: rendezvous_order(k, rest, {})[0] for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "C"}


def test_rendezvous_spreads_and_follows_weights() -> None:
    """Keys spread over every instance, about in proportion to weight."""
    counts = Counter(rendezvous_order(f"k{i}", ["A", "B"], {"A": 3.0})[0] for i in range(2000))
    assert 0.68 < counts["A"] / 2000 < 0.82
    even = Counter(rendezvous_order(f"k{i}", NAMES, {})[0] for i in range(2000))
    assert set(even) == set(NAMES)
    assert max(even.values()) < 2 * min(even.values())
