"""What the HTTP handlers need, wired once by the daemon (or a test)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from jobd.api.auth import TenantDirectory
from jobd.clock import Clock
from jobd.config import Config
from jobd.handlers.registry import Registry
from jobd.models import IdempotentResult, NewJob, StartLease
from jobd.ratelimit import Decision, RateLimiter
from jobd.store.backend import Backend, Unhealthy
from jobd.supervisor import Supervisor


def _nothing(*_args: object) -> None:
    return None


class TakeToken(Protocol):
    """One ``POST /jobs`` against its tenant's rate limit: a decision at once (this
    process's buckets), or a future of it (a bucket the nodes of a cluster share)."""

    def __call__(self, tenant_id: str, rate: float, burst: int,
                 now: float) -> Decision | asyncio.Future[Decision]: ...


class JobStarter(Protocol):
    """Starts a job in the transaction that creates it (the worker pool)."""

    def reserve(self, job: NewJob, *, now: float, capped: bool) -> StartLease | None: ...

    def follow(self, job: NewJob, now: float,
               created: asyncio.Future[IdempotentResult]) -> None: ...


@dataclass
class ApiContext:
    config: Config
    store: Backend
    registry: Registry
    clock: Clock
    limiter: RateLimiter = field(default_factory=RateLimiter)
    take_token: TakeToken | None = None  # None: this process's buckets (``limiter``)
    rate_limit: TakeToken = field(init=False)  # take_token, or the limiter's
    tenants: TenantDirectory = field(init=False)
    starter: JobStarter | None = None                      # may start a new job at once
    on_job_created: Callable[[NewJob, bool], None] = _nothing  # (job, started): wake, count
    on_cancel_requested: Callable[[str], object] = _nothing  # cancels a running job now
    on_webhook_queued: Callable[[], None] = _nothing       # wakes the webhook dispatcher
    on_rate_limited: Callable[[str], None] = _nothing      # metrics
    supervisor: Supervisor | None = None                   # for /healthz: a task gave up
    node_health: Callable[[], Unhealthy | None] | None = None  # for /healthz: heartbeats
    ready: bool = False

    def __post_init__(self) -> None:
        self.rate_limit = self.take_token or self.limiter.take
        self.tenants = TenantDirectory(self.store, ttl_s=min(1.0, self.config.workers.poll_interval))


API: web.AppKey[ApiContext] = web.AppKey("jobd_api", ApiContext)
