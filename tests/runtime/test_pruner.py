"""Retention in the background: the Pruner against a real store and a FakeClock."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from typing import Any

import pytest

from jobd.clock import FakeClock
from jobd.config import Config
from jobd.models import JobStatus, NewJob
from jobd.runtime.pruner import BATCH, Pruner
from jobd.store.backend import Backend, Rotation
from tests.conftest import T0, NewTenantFactory, make_config

DAY = 86_400.0
KEY_TTL_S = 3600.0
_keys = itertools.count(1)


async def _insert(store: Backend, n: int, *, at: float, run_at: float | None = None,
                  tenant: str = "acme") -> list[str]:
    def job(key: str) -> NewJob:
        return NewJob(tenant_id=tenant, type="noop", payload="{}", priority=0, max_attempts=1,
                      timeout_seconds=None, run_at=at if run_at is None else run_at,
                      webhook_url=None, idempotency_key=key)
    keys = [f"key-{next(_keys)}" for _ in range(n)]
    created = await asyncio.gather(*(store.insert_job(
        job(key), body_hash=hashlib.sha256(key.encode()).digest(), now=at,
        idempotency_ttl_s=KEY_TTL_S) for key in keys))
    return [c.job_id for c in created]


async def _finished(store: Backend, n: int, *, at: float,
                    status: JobStatus = JobStatus.SUCCEEDED) -> list[str]:
    """``n`` jobs created and finished at ``at`` (nothing else may be due then)."""
    ids = await _insert(store, n, at=at)
    claimed = (await store.claim_jobs(now=at, limit=n, owner="w", lease_s=60,
                                      rotation=Rotation())).jobs
    assert sorted(j.id for j in claimed) == sorted(ids)
    error = None if status is JobStatus.SUCCEEDED else "boom"
    assert all(await asyncio.gather(*(store.finish_job(job, owner="w", status=status, now=at,
                                                       error=error) for job in claimed)))
    return ids


async def _job_ids(store: Backend) -> set[str]:
    return {j.id for j in await store.list_jobs(limit=10_000)}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def job_batches(store: Backend, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """What each of the pruner's deletions of jobs deleted."""
    seen: list[int] = []
    prune = store.prune_jobs

    async def spy(**kwargs: Any) -> int:
        seen.append(await prune(**kwargs))
        return seen[-1]

    monkeypatch.setattr(store, "prune_jobs", spy)
    return seen


async def test_run_once_deletes_in_small_batches_only_what_is_past_retention(
        store: Backend, new_tenant: NewTenantFactory, clock: FakeClock, config: Config,
        job_batches: list[int]) -> None:
    assert config.jobs.retention_days == 7
    await new_tenant("acme")
    old = T0 - 10 * DAY
    many = await _finished(store, BATCH * 2 + 203, at=old)
    failed = await _finished(store, 3, at=old + 1, status=JobStatus.FATAL)
    recent = await _finished(store, 2, at=T0 - DAY)
    [running] = await _insert(store, 1, at=old + 2)
    await store.claim_jobs(now=old + 2, limit=1, owner="w", lease_s=60, rotation=Rotation())
    [waiting] = await _insert(store, 1, at=old + 3, run_at=T0 + 3600)
    [fresh] = await _insert(store, 1, at=T0)

    pruner = Pruner(store=store, clock=clock, config=config)
    counts = await pruner.run_once()

    assert counts == {"jobs": len(many) + len(failed), "deliveries": 0}
    assert await _job_ids(store) == {*recent, running, waiting, fresh}
    assert job_batches == [BATCH, BATCH, 203 + len(failed), 0]

    assert await pruner.run_once() == {"jobs": 0, "deliveries": 0}


async def test_a_job_is_kept_while_its_idempotency_key_is_live(
        store: Backend, new_tenant: NewTenantFactory, clock: FakeClock, tmp_path: Any) -> None:
    """A retention shorter than the key's life must not let a retried request run twice."""
    config = make_config(tmp_path, jobs={"retention_days": 0.01}, idempotency={"ttl_hours": 2})
    await new_tenant("acme")
    done = await _finished(store, 3, at=T0)
    pruner = Pruner(store=store, clock=clock, config=config)
    clock.advance(3600)                   # past retention (864 s), the keys live 2 h
    assert (await pruner.run_once())["jobs"] == 0
    assert await _job_ids(store) == set(done)
    clock.advance(3601)
    assert (await pruner.run_once())["jobs"] == 3


async def test_jobs_become_prunable_as_the_clock_moves(store: Backend,
                                                       new_tenant: NewTenantFactory,
                                                       clock: FakeClock, config: Config) -> None:
    await new_tenant("acme")
    done = await _finished(store, 4, at=T0)
    pruner = Pruner(store=store, clock=clock, config=config)
    assert (await pruner.run_once())["jobs"] == 0

    clock.advance(7 * DAY - 1)
    assert (await pruner.run_once())["jobs"] == 0
    assert await _job_ids(store) == set(done)

    clock.advance(2)
    assert await pruner.run_once() == {"jobs": 4, "deliveries": 0}
    assert await _job_ids(store) == set()


async def test_run_prunes_in_the_background_until_stopped(store: Backend,
                                                          new_tenant: NewTenantFactory,
                                                          clock: FakeClock,
                                                          config: Config) -> None:
    await new_tenant("acme")
    await _finished(store, 3, at=T0 - 8 * DAY)
    pruner = Pruner(store=store, clock=clock, config=config, interval_s=0.01)
    task = asyncio.create_task(pruner.run())
    try:
        async with asyncio.timeout(5):
            while await _job_ids(store):
                await asyncio.sleep(0.01)
        await _finished(store, 2, at=T0 - 9 * DAY)  # a later round takes these too
        async with asyncio.timeout(5):
            while await _job_ids(store):
                await asyncio.sleep(0.01)
    finally:
        pruner.stop()
        async with asyncio.timeout(5):
            await task
