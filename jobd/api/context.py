"""What the HTTP handlers need, wired once by the daemon (or a test)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from jobd.api.auth import TenantDirectory
from jobd.clock import Clock
from jobd.config import Config
from jobd.handlers.registry import Registry
from jobd.models import NewJob
from jobd.ratelimit import RateLimiter
from jobd.store.store import Store


def _nothing(*_args: object) -> None:
    return None


@dataclass
class ApiContext:
    config: Config
    store: Store
    registry: Registry
    clock: Clock
    limiter: RateLimiter = field(default_factory=RateLimiter)
    tenants: TenantDirectory = field(init=False)
    on_job_created: Callable[[NewJob], None] = _nothing    # wakes the scheduler, counts it
    on_cancel_requested: Callable[[str], object] = _nothing  # cancels a running job now
    on_webhook_queued: Callable[[], None] = _nothing       # wakes the webhook dispatcher
    on_rate_limited: Callable[[str], None] = _nothing      # metrics
    ready: bool = False

    def __post_init__(self) -> None:
        self.tenants = TenantDirectory(self.store, ttl_s=min(1.0, self.config.workers.poll_interval))


API: web.AppKey[ApiContext] = web.AppKey("jobd_api", ApiContext)
