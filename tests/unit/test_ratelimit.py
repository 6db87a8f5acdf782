"""Token bucket and per-tenant limiter, driven by explicit ``now`` values."""

from __future__ import annotations

import pytest

from jobd.ratelimit import Decision, RateLimiter, TokenBucket

T0 = 1_750_000_000.0


def drain(bucket: TokenBucket, now: float, n: int) -> list[Decision]:
    return [bucket.take(now) for _ in range(n)]


def test_fresh_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=1.0, burst=3, now=T0)
    decisions = drain(bucket, T0, 4)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert all(d.limit == 3 for d in decisions)


@pytest.mark.parametrize(
    ("rate", "burst", "retry_after"),
    [
        (1.0, 1, 1),
        (10.0, 20, 1),     # 0.1 s to the next token still says 1 (whole seconds, >= 1)
        (1000.0, 5, 1),
        (0.5, 1, 2),       # one token every two seconds
        (0.5, 4, 2),
        (0.25, 2, 4),
        (1 / 3, 1, 3),
        (0.1, 3, 10),
    ],
)
def test_retry_after_is_a_whole_number_of_seconds_at_least_one(
        rate: float, burst: int, retry_after: int) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=T0)
    drain(bucket, T0, burst)
    refused = bucket.take(T0)
    assert not refused.allowed
    assert isinstance(refused.retry_after_s, int)
    assert refused.retry_after_s == retry_after
    assert refused.headers()["Retry-After"] == str(retry_after)


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(1.0, 1), (2.0, 5), (0.5, 2), (10.0, 20), (4.0, 1)],
)
def test_one_token_is_back_after_one_over_rate_seconds(rate: float, burst: int) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=T0)
    drain(bucket, T0, burst)
    assert not bucket.take(T0 + 0.9 / rate).allowed
    # unix-epoch floats carry ~1e-7 s of rounding; a microsecond later is "1/rate seconds"
    back_at = T0 + 1.0 / rate + 1e-6
    again = bucket.take(back_at)
    assert again.allowed
    assert again.remaining == 0
    assert not bucket.take(back_at).allowed


def test_retry_after_shrinks_as_time_passes() -> None:
    bucket = TokenBucket(rate=0.25, burst=1, now=T0)
    assert bucket.take(T0).allowed
    assert bucket.take(T0).retry_after_s == 4
    assert bucket.take(T0 + 1).retry_after_s == 3
    assert bucket.take(T0 + 2.5).retry_after_s == 2  # 1.5 s to go → rounds up
    assert bucket.take(T0 + 3.9).retry_after_s == 1
    assert bucket.take(T0 + 4).allowed


@pytest.mark.parametrize(
    ("rate", "burst", "taken", "reset"),
    [
        (1.0, 5, 1, 1),
        (1.0, 5, 3, 3),
        (1.0, 5, 5, 5),
        (2.0, 5, 5, 3),    # 5 tokens at 2/s = 2.5 s → 3
        (0.5, 2, 1, 2),
        (0.5, 2, 2, 4),
        (10.0, 20, 20, 2),
        (3.0, 3, 1, 1),
    ],
)
def test_reset_is_whole_seconds_until_full(rate: float, burst: int, taken: int, reset: int) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=T0)
    last = drain(bucket, T0, taken)[-1]
    assert last.allowed
    assert last.reset_s == reset
    assert last.headers()["RateLimit-Reset"] == str(reset)


def test_refused_take_reports_reset_and_does_not_consume() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, now=T0)
    drain(bucket, T0, 2)
    refused = bucket.take(T0 + 0.5)
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.reset_s == 2          # 1.5 tokens missing at 1/s
    assert refused.retry_after_s == 1    # 0.5 s to the next token, rounded up
    assert bucket.take(T0 + 1.0).allowed


def test_reset_headers_of_a_full_bucket_after_refill() -> None:
    bucket = TokenBucket(rate=1.0, burst=3, now=T0)
    drain(bucket, T0, 3)
    later = bucket.take(T0 + 100)          # refilled to 3, took 1
    assert later.allowed
    assert later.remaining == 2
    assert later.reset_s == 1
    headers = later.headers()
    assert headers == {"RateLimit-Limit": "3", "RateLimit-Remaining": "2", "RateLimit-Reset": "1"}
    assert "Retry-After" not in headers


def test_refill_never_exceeds_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=2, now=T0)
    decisions = drain(bucket, T0 + 3600, 3)
    assert [d.allowed for d in decisions] == [True, True, False]


def test_remaining_is_never_negative_under_hammering() -> None:
    bucket = TokenBucket(rate=3.0, burst=2, now=T0)
    now = T0
    for i in range(500):
        now += 0.01 * (i % 7)
        decision = bucket.take(now)
        assert decision.remaining >= 0
        assert decision.remaining <= decision.limit
        assert decision.reset_s >= 0
        assert decision.retry_after_s >= 1
        assert isinstance(decision.remaining, int)
        assert isinstance(decision.reset_s, int)


def test_long_run_admits_rate_times_duration_plus_burst() -> None:
    bucket = TokenBucket(rate=5.0, burst=10, now=T0)
    allowed = sum(bucket.take(T0 + i * 0.01).allowed for i in range(1000))  # 10 s at 100 req/s
    assert allowed in range(59, 61)  # 10 burst + ~5/s × 9.99 s


def test_time_going_backwards_does_not_refill() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=T0)
    assert bucket.take(T0).allowed
    assert not bucket.take(T0 - 10).allowed


# the per-tenant limiter -------------------------------------------------------------


def test_limiter_keeps_one_bucket_per_tenant() -> None:
    limiter = RateLimiter()
    assert limiter.take("a", 1.0, 1, T0).allowed
    assert not limiter.take("a", 1.0, 1, T0).allowed
    assert limiter.take("b", 1.0, 1, T0).allowed  # b has its own bucket


def test_limiter_keeps_the_bucket_while_limits_are_unchanged() -> None:
    limiter = RateLimiter()
    assert limiter.take("a", 1.0, 2, T0).remaining == 1
    assert limiter.take("a", 1.0, 2, T0).remaining == 0
    assert not limiter.take("a", 1.0, 2, T0).allowed


@pytest.mark.parametrize(("rate", "burst"), [(2.0, 1), (1.0, 5), (0.5, 3)])
def test_limiter_replaces_the_bucket_when_limits_change(rate: float, burst: int) -> None:
    limiter = RateLimiter()
    assert limiter.take("a", 1.0, 1, T0).allowed
    assert not limiter.take("a", 1.0, 1, T0).allowed
    decision = limiter.take("a", rate, burst, T0)
    assert decision.allowed
    assert decision.limit == burst
    assert decision.remaining == burst - 1
