"""Token bucket per tenant: ``rate`` tokens a second, up to ``burst``."""

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
        missing = self.burst - self._tokens
        return Decision(
            allowed=allowed, limit=self.burst, remaining=int(self._tokens),
            reset_s=math.ceil(missing / self.rate) if missing > 1e-9 else 0,
            retry_after_s=max(1, math.ceil((1.0 - self._tokens) / self.rate)),
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
