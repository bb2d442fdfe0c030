"""The callbacks' pure rules: the signature a receiver checks, and what each attempt's
outcome makes of a callback (delivered, failed, expired, or due again after a backoff)."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from openclaw_orchestrator.domain.callbacks import (
    CallbackPolicy,
    CallbackRecord,
    Decision,
    decide,
    is_acknowledged,
    sign,
    verify,
)

SECRET = "0123456789abcdef"
BODY = b'{"run_id":"run_1","state":"succeeded"}'
POLICY = CallbackPolicy(base=1.0, cap=8.0, max_attempts=5, expiry=1000.0)


def test_the_signature_is_the_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, BODY) == f"v1={expected}"


def test_verify_accepts_only_the_same_secret_body_and_a_recent_timestamp() -> None:
    signature = sign(SECRET, 1000, BODY)
    assert verify(SECRET, "1000", BODY, signature, now=1100)
    assert not verify("another-secret-000", "1000", BODY, signature, now=1100)
    assert not verify(SECRET, "1000", BODY + b" ", signature, now=1100)
    assert not verify(SECRET, "1001", BODY, signature, now=1100)
    assert not verify(SECRET, "1000", BODY, signature, now=1000 + 301)  # replayed later
    assert not verify(SECRET, "-1000", BODY, signature, now=1000)


def test_the_secret_is_not_in_a_records_repr() -> None:
    record = CallbackRecord(run_id="r", url="http://h/x", secret=SECRET, delivery_id="d")
    assert SECRET not in repr(record)


@pytest.mark.parametrize(("status", "acked"), [(200, True), (204, True), (299, True),
                                               (None, False), (199, False), (301, False),
                                               (404, False), (500, False)])  # fmt: skip
def test_any_2xx_acknowledges(status: int | None, acked: bool) -> None:
    assert is_acknowledged(status) is acked


def test_a_2xx_delivers_and_410_fails_at_once() -> None:
    rng = random.Random(1)
    assert decide(1, 202, now=0, expires_at=10, policy=POLICY, rng=rng) == Decision("delivered")
    gone = decide(1, 410, now=0, expires_at=1000, policy=POLICY, rng=rng)
    assert gone.state == "failed"
    assert "410" in gone.reason


@pytest.mark.parametrize("status", [None, 301, 400, 401, 404, 408, 429, 500, 503])
def test_anything_else_is_retried_after_a_backoff_within_its_ceiling(status: int | None) -> None:
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)):
        for seed in range(20):
            d = decide(attempt, status, now=100, expires_at=1000, policy=POLICY,
                       rng=random.Random(seed))  # fmt: skip
            assert d.state == "pending"
            assert d.next_at is not None
            assert 100 <= d.next_at <= 100 + ceiling


def test_the_cap_bounds_the_backoff() -> None:
    policy = CallbackPolicy(base=1.0, cap=3.0, max_attempts=50, expiry=10**6)
    for seed in range(20):
        d = decide(30, 500, now=0, expires_at=10**6, policy=policy, rng=random.Random(seed))
        assert d.next_at is not None
        assert d.next_at <= 3.0


def test_the_last_attempt_fails_and_a_retry_past_the_expiry_expires() -> None:
    last = decide(5, 500, now=0, expires_at=1000, policy=POLICY, rng=random.Random(0))
    assert last.state == "failed"
    assert "5 attempts" in last.reason
    for seed in range(20):  # due at or after the expiry, whatever the jitter drew
        late = decide(1, 500, now=1000, expires_at=1000, policy=POLICY, rng=random.Random(seed))
        assert late.state == "expired"
    on_time = decide(1, 500, now=0, expires_at=1000, policy=POLICY, rng=random.Random(0))
    assert on_time.state == "pending"


def test_a_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        CallbackPolicy(max_attempts=0)
