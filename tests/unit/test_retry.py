"""Backoff with jitter and the retry-or-give-up decision: pure, seeded, no sleeping."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobd.clock import FakeClock
from jobd.retry import GiveUp, RetryAt, backoff_delay_s, decide

BASE_S = 10.0
MAX_S = 3600.0


def ceiling(attempt: int, base_s: float = BASE_S, max_s: float = MAX_S) -> float:
    return min(max_s, base_s * 2.0 ** (attempt - 1))


# backoff_delay_s --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [
        (1, 5.0, 10.0),
        (2, 10.0, 20.0),
        (3, 20.0, 40.0),
        (4, 40.0, 80.0),
        (5, 80.0, 160.0),
        (9, 1280.0, 2560.0),
        (10, 1800.0, 3600.0),   # 5120 capped at 3600
        (11, 1800.0, 3600.0),
        (50, 1800.0, 3600.0),
    ],
)
def test_delay_is_within_half_and_full_ceiling(attempt: int, low: float, high: float) -> None:
    rng = random.Random(attempt)
    for _ in range(200):
        delay = backoff_delay_s(attempt, base_s=BASE_S, max_s=MAX_S, rng=rng)
        assert low <= delay <= high


def test_same_seed_same_delays() -> None:
    a = [backoff_delay_s(n, base_s=BASE_S, max_s=MAX_S, rng=random.Random(7)) for n in range(1, 12)]
    b = [backoff_delay_s(n, base_s=BASE_S, max_s=MAX_S, rng=random.Random(7)) for n in range(1, 12)]
    assert a == b


def test_jitter_actually_spreads_delays() -> None:
    rng = random.Random(1)
    delays = {round(backoff_delay_s(3, base_s=BASE_S, max_s=MAX_S, rng=rng), 6) for _ in range(50)}
    assert len(delays) > 40


def test_jitter_uses_the_extremes_of_the_range() -> None:
    class Extreme(random.Random):
        def __init__(self, pick_high: bool) -> None:
            super().__init__(0)
            self.pick_high = pick_high

        def uniform(self, a: float, b: float) -> float:
            return b if self.pick_high else a

    assert backoff_delay_s(3, base_s=BASE_S, max_s=MAX_S, rng=Extreme(False)) == 20.0
    assert backoff_delay_s(3, base_s=BASE_S, max_s=MAX_S, rng=Extreme(True)) == 40.0


def test_ceiling_is_monotone_and_then_flat() -> None:
    rng_high = _AlwaysHigh()
    tops = [backoff_delay_s(n, base_s=BASE_S, max_s=MAX_S, rng=rng_high) for n in range(1, 40)]
    assert tops == sorted(tops)
    assert tops[:5] == [10.0, 20.0, 40.0, 80.0, 160.0]
    assert max(tops) == MAX_S
    first_capped = tops.index(MAX_S)
    assert all(t == MAX_S for t in tops[first_capped:])


def test_capped_at_backoff_max() -> None:
    rng = random.Random(3)
    for attempt in range(1, 100):
        assert backoff_delay_s(attempt, base_s=BASE_S, max_s=60.0, rng=rng) <= 60.0


@pytest.mark.parametrize("attempt", [63, 64, 100, 1_000, 10**6, 10**18])
def test_huge_attempt_numbers_do_not_overflow(attempt: int) -> None:
    delay = backoff_delay_s(attempt, base_s=BASE_S, max_s=MAX_S, rng=random.Random(0))
    assert math.isfinite(delay)
    assert MAX_S / 2 <= delay <= MAX_S


def test_tiny_durations_for_tests_work() -> None:
    delay = backoff_delay_s(2, base_s=0.01, max_s=0.05, rng=random.Random(0))
    assert 0.01 <= delay <= 0.02


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    base_s=st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False),
    max_s=st.floats(min_value=0.001, max_value=1e7, allow_nan=False, allow_infinity=False),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_property_delay_is_within_bounds(attempt: int, base_s: float, max_s: float,
                                         seed: int) -> None:
    delay = backoff_delay_s(attempt, base_s=base_s, max_s=max_s, rng=random.Random(seed))
    top = min(max_s, base_s * 2.0 ** min(attempt - 1, 1023))
    assert math.isfinite(delay)
    assert top / 2 <= delay <= top
    assert delay > 0


@given(
    attempt=st.integers(min_value=1, max_value=200),
    base_s=st.floats(min_value=0.001, max_value=1e4),
    max_s=st.floats(min_value=0.001, max_value=1e5),
)
def test_property_upper_bound_never_decreases_with_attempts(attempt: int, base_s: float,
                                                            max_s: float) -> None:
    rng = _AlwaysHigh()
    this = backoff_delay_s(attempt, base_s=base_s, max_s=max_s, rng=rng)
    after = backoff_delay_s(attempt + 1, base_s=base_s, max_s=max_s, rng=rng)
    assert this <= after


class _AlwaysHigh(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


# decide -----------------------------------------------------------------------------


def _decide(attempt: int, max_attempts: int = 5, *, permanent: bool = False,
            now: float = 1000.0, seed: int = 0) -> RetryAt | GiveUp:
    return decide(attempt=attempt, max_attempts=max_attempts, permanent=permanent, now=now,
                  base_s=BASE_S, max_s=MAX_S, rng=random.Random(seed))


@pytest.mark.parametrize("attempt", [1, 2, 5])
def test_permanent_failure_gives_up_at_once(attempt: int) -> None:
    outcome = _decide(attempt, permanent=True)
    assert isinstance(outcome, GiveUp)
    assert "permanent" in outcome.reason


@pytest.mark.parametrize(("attempt", "max_attempts"), [(5, 5), (1, 1), (6, 5), (100, 100)])
def test_last_attempt_gives_up(attempt: int, max_attempts: int) -> None:
    outcome = _decide(attempt, max_attempts)
    assert isinstance(outcome, GiveUp)
    assert str(max_attempts) in outcome.reason


@pytest.mark.parametrize(("attempt", "max_attempts"), [(1, 5), (4, 5), (1, 2), (99, 100)])
def test_attempts_left_retry_later(attempt: int, max_attempts: int) -> None:
    now = 1000.0
    outcome = _decide(attempt, max_attempts, now=now)
    assert isinstance(outcome, RetryAt)
    expected = backoff_delay_s(attempt, base_s=BASE_S, max_s=MAX_S, rng=random.Random(0))
    assert outcome.next_run_at == now + expected


def test_walk_a_job_through_five_attempts() -> None:
    """Fail every attempt; each retry happens exactly when decide() said, until fatal."""
    clock = FakeClock(start=1_750_000_000.0)
    rng = random.Random(42)
    expected_rng = random.Random(42)
    schedule: list[tuple[int, float]] = []
    attempt = 1
    while True:
        now = clock.now()
        outcome = decide(attempt=attempt, max_attempts=5, permanent=False, now=now,
                         base_s=BASE_S, max_s=MAX_S, rng=rng)
        if isinstance(outcome, GiveUp):
            break
        delay = backoff_delay_s(attempt, base_s=BASE_S, max_s=MAX_S, rng=expected_rng)
        assert outcome.next_run_at == now + delay
        schedule.append((attempt, delay))
        clock.advance(delay)  # the job becomes due exactly then and runs again
        assert clock.now() == outcome.next_run_at
        attempt += 1

    assert attempt == 5
    assert isinstance(outcome, GiveUp)
    assert [n for n, _ in schedule] == [1, 2, 3, 4]
    for n, delay in schedule:
        assert ceiling(n) / 2 <= delay <= ceiling(n)
    total = sum(d for _, d in schedule)
    assert clock.now() == pytest.approx(1_750_000_000.0 + total)
    assert (5 + 10 + 20 + 40) <= total <= (10 + 20 + 40 + 80)


def test_walk_with_a_low_cap_flattens_the_schedule() -> None:
    clock = FakeClock(start=0.0)
    rng = random.Random(5)
    delays = []
    for attempt in range(1, 10):
        outcome = decide(attempt=attempt, max_attempts=10, permanent=False, now=clock.now(),
                         base_s=BASE_S, max_s=30.0, rng=rng)
        assert isinstance(outcome, RetryAt)
        delays.append(outcome.next_run_at - clock.now())
        clock.advance(delays[-1])
    assert all(15.0 - 1e-6 <= d <= 30.0 + 1e-6 for d in delays[2:])
    assert isinstance(decide(attempt=10, max_attempts=10, permanent=False, now=clock.now(),
                             base_s=BASE_S, max_s=30.0, rng=rng), GiveUp)
