"""Retry policy: exponential backoff with jitter, and the retry-or-fatal decision."""

from __future__ import annotations

import random
from dataclasses import dataclass


def backoff_delay_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Delay after failed attempt ``attempt`` (1-based): base·2^(n-1), capped, then
    "equal jitter" (half fixed, half random) so retries spread but never collapse to 0."""
    exponent = min(attempt - 1, 62)
    ceiling = min(max_s, base_s * (2.0 ** exponent))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(frozen=True, slots=True)
class RetryAt:
    next_run_at: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


def decide(*, attempt: int, max_attempts: int, permanent: bool, now: float, base_s: float,
           max_s: float, rng: random.Random) -> RetryAt | GiveUp:
    if permanent:
        return GiveUp("permanent error")
    if attempt >= max_attempts:
        return GiveUp(f"attempt {attempt} of {max_attempts} failed")
    return RetryAt(now + backoff_delay_s(attempt, base_s=base_s, max_s=max_s, rng=rng))
