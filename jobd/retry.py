"""Retry policy: exponential backoff with jitter, the retry-or-fatal decision, and
writing an outcome again when the database refused it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from jobd.clock import Clock

T = TypeVar("T")

# An outcome the database refused (it is restarting, its disk is full...) is written again
# after these waits, doubling from the first up to the last.
WRITE_AGAIN_FIRST_S = 0.05
WRITE_AGAIN_MAX_S = 2.0


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


async def write_again(write: Callable[[], Awaitable[T]], *, clock: Clock,
                      give_up_at: float) -> T:
    """Call ``write`` after each wait until it succeeds; once ``clock`` reads
    ``give_up_at`` (the end of the lease that makes the write worth it), its last error
    is raised. Only for fenced writes: one that lands late, or repeats one whose answer
    was lost, changes nothing."""
    delay = WRITE_AGAIN_FIRST_S
    while True:
        await asyncio.sleep(delay)
        try:
            return await write()
        except Exception:
            if clock.now() >= give_up_at:
                raise
        delay = min(delay * 2, WRITE_AGAIN_MAX_S)
