"""Short ways to drive a backend through the protocol."""

from __future__ import annotations

import itertools
from typing import Any

from jobd.models import ClaimedJob, IdempotentResult, Job, NewJob, NewTenant
from jobd.store.backend import Backend, ClaimRound, Rotation
from tests.conftest import T0

TTL_S = 3600.0
LEASE_S = 30.0
HOOK = "https://client.example/hook"
_keys = itertools.count(1)


async def tenant(backend: Backend, tenant_id: str = "acme", *, rate: float = 1000,
                 burst: int = 1000, max_concurrency: int | None = None,
                 now: float = T0) -> NewTenant:
    return await backend.create_tenant(tenant_id, rate=rate, burst=burst,
                                       max_concurrency=max_concurrency, now=now)


def new_job(tenant_id: str = "acme", *, key: str | None = None, type: str = "noop",
            payload: str = "{}", priority: int = 0, max_attempts: int = 3,
            timeout_seconds: float | None = None, run_at: float = T0,
            webhook_url: str | None = None) -> NewJob:
    return NewJob(tenant_id=tenant_id, type=type, payload=payload, priority=priority,
                  max_attempts=max_attempts, timeout_seconds=timeout_seconds, run_at=run_at,
                  webhook_url=webhook_url, idempotency_key=key or f"key-{next(_keys)}")


async def submit(backend: Backend, job: NewJob | None = None, *, now: float = T0,
                 body_hash: bytes = b"h", ttl_s: float = TTL_S, **fields: Any) -> IdempotentResult:
    return await backend.insert_job(job or new_job(**fields), body_hash=body_hash, now=now,
                                    idempotency_ttl_s=ttl_s)


async def claim(backend: Backend, *, now: float = T0, limit: int = 10, owner: str = "w1",
                lease_s: float = LEASE_S, rotation: Rotation | None = None) -> ClaimRound:
    return await backend.claim_jobs(now=now, limit=limit, owner=owner, lease_s=lease_s,
                                    rotation=rotation or Rotation())


async def claim_one(backend: Backend, **kwargs: Any) -> ClaimedJob:
    jobs = (await claim(backend, limit=1, **kwargs)).jobs
    assert len(jobs) == 1, jobs
    return jobs[0]


async def get(backend: Backend, job_id: str) -> Job:
    job = await backend.find_job(job_id)
    assert job is not None, job_id
    return job
