"""Time source and RFC 3339 formatting.

Every "due" decision in jobd takes ``now`` as an argument; the daemon holds one
:class:`Clock` and tests pass a :class:`FakeClock` they can step forward.
Times are stored as float unix seconds (UTC).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Current unix time in seconds."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def to_rfc3339(ts: float | None) -> str | None:
    """Format unix seconds as RFC 3339 UTC with milliseconds and a ``Z``."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def from_datetime(dt: datetime) -> float:
    """Unix seconds of an aware datetime."""
    return dt.timestamp()
