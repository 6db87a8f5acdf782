"""Token bucket per tenant: ``rate`` tokens a second, up to ``burst``.

One process keeps its buckets here (:class:`RateLimiter`); nodes sharing a PostgreSQL
database keep one bucket per tenant in the database (``jobd.store.postgres.cluster``),
and both answer with :func:`decision`."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int        # seconds until the bucket is full again
    retry_after_s: int  # when refused: seconds until one token is back (>= 1)

    def headers(self) -> dict[str, str]:
        headers = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                   "RateLimit-Reset": str(self.reset_s)}
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class TokenBucket:
    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> Decision:
        elapsed = max(0.0, now - self._at)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._at = now
        allowed = self._tokens >= 1.0
        if allowed:
            self._tokens -= 1.0
        return decision(allowed, self._tokens, self.rate, self.burst)


def decision(allowed: bool, tokens: float, rate: float, burst: int) -> Decision:
    """The answer to one request that left ``tokens`` in a bucket of ``rate``/``burst``."""
    missing = burst - tokens
    return Decision(
        allowed=allowed, limit=burst, remaining=int(tokens),
        reset_s=math.ceil(missing / rate) if missing > 1e-9 else 0,
        retry_after_s=max(1, math.ceil((1.0 - tokens) / rate)),
    )


class RateLimiter:
    """Buckets by tenant; a tenant's new rate or burst replaces its bucket."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, tenant_id: str, rate: float, burst: int, now: float) -> Decision:
        bucket = self._buckets.get(tenant_id)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._buckets[tenant_id] = TokenBucket(rate, burst, now)
        return bucket.take(now)
