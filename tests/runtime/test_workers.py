"""The worker pool and the lifeline, in-process, against a real store."""

from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest

from jobd.clock import FakeClock
from jobd.handlers.base import Services
from jobd.models import JobStatus, NewJob
from jobd.runtime.lifeline import Lifeline
from jobd.runtime.workers import WorkerPool
from jobd.store.backend import Rotation
from tests.conftest import T0, make_config
from tests.runtime.conftest import failing, until


@pytest.fixture
def pool(store, config, behaviour, clock) -> WorkerPool:
    return WorkerPool(store=store, registry=behaviour.registry(), services=Services(config=config),
                      clock=clock, config=config, owner="test-owner", rng=random.Random(1))


async def submit(store, clock, job_type: str, *, tenant: str = "acme", key: str,
                 max_attempts: int = 3, timeout_s: float | None = None) -> str:
    job = NewJob(tenant_id=tenant, type=job_type, payload="{}", priority=0,
                 max_attempts=max_attempts, timeout_seconds=timeout_s, run_at=clock.now(),
                 webhook_url=None, idempotency_key=key)
    result = await store.insert_job(job, body_hash=key.encode(), now=clock.now(),
                                    idempotency_ttl_s=3600)
    return result.job_id


async def settle(pool: WorkerPool) -> None:
    """Wait (with a deadline) until the pool has no running jobs."""
    deadline = time.monotonic() + 5
    while not pool.idle:
        assert time.monotonic() < deadline, "jobs still running"
        await asyncio.sleep(0.001)


async def start_holding(store, pool, clock, behaviour, new_tenant) -> str:
    """Submit one ``hold`` job, claim it and return once its handler runs."""
    await new_tenant()
    job_id = await submit(store, clock, "hold", key="a")
    await pool.run_once()
    deadline = time.monotonic() + 5
    while not behaviour.started:
        assert time.monotonic() < deadline, "the job never started"
        await asyncio.sleep(0.001)
    return job_id


async def job(store, job_id):
    found = await store.find_job(job_id)
    assert found is not None, job_id
    return found


async def test_noop_succeeds(store, pool, clock, new_tenant):
    await new_tenant()
    job_id = await submit(store, clock, "noop", key="a")
    assert await pool.run_once() == 1
    await settle(pool)
    done = await job(store, job_id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.attempts == 1
    assert done.result == '{"ok":true}'


async def test_listeners_hear_of_a_success_after_it_is_committed(store, pool, clock,
                                                                 new_tenant):
    heard: list[tuple[str, JobStatus | None, JobStatus]] = []
    # each listener call starts a read at once: it runs before a later commit would
    pool.listeners.append(lambda j, outcome, status, duration_s: heard.append(
        (j.id, status, asyncio.ensure_future(job(store, j.id)))))
    await new_tenant()
    job_id = await submit(store, clock, "noop", key="a")
    await pool.run_once()
    await settle(pool)
    assert [(i, status, (await read).status) for i, status, read in heard] == [
        (job_id, JobStatus.SUCCEEDED, JobStatus.SUCCEEDED)]


async def test_a_success_the_database_did_not_take_is_written_again(
        store, pool, clock, config, new_tenant, monkeypatch, quick_rewrites, caplog):
    heard: list[tuple[str, JobStatus | None]] = []
    pool.listeners.append(lambda j, _outcome, status, _s: heard.append((j.id, status)))
    broken = failing(store.finish_job, times=3)
    monkeypatch.setattr(store, "finish_job", broken)
    await new_tenant()
    job_id = await submit(store, clock, "noop", key="a")
    await pool.run_once()
    await until(lambda: broken.calls["n"] >= 2, "the write was not tried again")
    assert pool.running_ids() == [job_id]  # its lease is still extended meanwhile
    assert pool.free_slots == config.workers.concurrency  # but its slot is free
    await settle(pool)
    done = await job(store, job_id)
    assert (done.status, done.attempts, done.result) == (
        JobStatus.SUCCEEDED, 1, '{"ok":true}')
    assert broken.calls["n"] == 4
    assert heard == [(job_id, JobStatus.SUCCEEDED)]
    assert pool.running_ids() == []
    assert any("could not record the outcome of job " + job_id in r.getMessage()
               for r in caplog.records)


async def test_a_failure_the_database_did_not_take_is_written_again(
        store, pool, clock, new_tenant, monkeypatch, quick_rewrites):
    broken = failing(store.retry_job_later, times=1)
    monkeypatch.setattr(store, "retry_job_later", broken)
    await new_tenant()
    job_id = await submit(store, clock, "fail", key="a", max_attempts=2)
    await pool.run_once()
    await settle(pool)
    failed = await job(store, job_id)
    assert (failed.status, failed.attempts, failed.last_error) == (
        JobStatus.RETRY, 1, "RuntimeError: boom")
    assert broken.calls["n"] == 2


async def test_an_outcome_never_taken_is_left_to_its_lease(store, pool, clock, config,
                                                         new_tenant, monkeypatch,
                                                         quick_rewrites, caplog):
    heard: list[str] = []
    pool.listeners.append(lambda j, *_: heard.append(j.id))
    broken = failing(store.finish_job, times=None)
    monkeypatch.setattr(store, "finish_job", broken)
    await new_tenant()
    job_id = await submit(store, clock, "noop", key="a")
    await pool.run_once()
    await until(lambda: broken.calls["n"] >= 3, "the write was not tried again")
    assert not pool.idle  # still trying while the lease could be held
    clock.advance(config.workers.lease_seconds)
    await settle(pool)  # then it gives up
    assert (await job(store, job_id)).status is JobStatus.RUNNING  # the lease rescue takes it
    assert heard == []
    assert pool.running_ids() == []  # its lease is no longer extended
    assert any("its lease will expire" in r.getMessage() and job_id in r.getMessage()
               for r in caplog.records)


async def test_failure_schedules_retry_with_backoff_then_fatal(store, pool, clock, config,
                                                               new_tenant):
    await new_tenant()
    job_id = await submit(store, clock, "fail", key="a", max_attempts=2)
    await pool.run_once()
    await settle(pool)
    first = await job(store, job_id)
    assert first.status is JobStatus.RETRY
    base = config.jobs.backoff_base
    assert T0 + base / 2 <= first.next_run_at <= T0 + base
    assert first.last_error == "RuntimeError: boom"
    assert await pool.run_once() == 0  # not due yet
    clock.advance(base)
    assert await pool.run_once() == 1
    await settle(pool)
    final = await job(store, job_id)
    assert final.status is JobStatus.FATAL
    assert final.attempts == 2


async def test_permanent_error_is_fatal_at_once(store, pool, clock, new_tenant):
    await new_tenant()
    job_id = await submit(store, clock, "permanent", key="a", max_attempts=5)
    await pool.run_once()
    await settle(pool)
    done = await job(store, job_id)
    assert (done.status, done.attempts) == (JobStatus.FATAL, 1)
    assert "do not retry" in done.last_error


async def test_errors_that_are_not_plain_text_are_recorded(store, pool, clock, config,
                                                           new_tenant):
    """A handler's error text is the handler's: a NUL character (which PostgreSQL's text
    cannot hold) or a lone surrogate (which no database takes) must not keep the retry or
    the final failure from being written. The surrogate becomes U+FFFD on both backends."""
    await new_tenant()
    job_id = await submit(store, clock, "garbled", key="a", max_attempts=3)
    await pool.run_once()
    await settle(pool)
    first = await job(store, job_id)
    assert first.status is JobStatus.RETRY
    assert first.last_error.startswith("RuntimeError: bad")
    assert first.last_error.endswith("news\ufffd")
    clock.advance(config.jobs.backoff_base)
    assert await pool.run_once() == 1
    await settle(pool)
    final = await job(store, job_id)
    assert (final.status, final.attempts) == (JobStatus.FATAL, 2)
    assert final.last_error.startswith("PermanentError: worse")
    assert final.last_error.endswith("news")
    errors = [e["error"] for e in orjson.loads(final.errors)]
    assert errors[0].startswith("RuntimeError: bad") and errors[0].endswith("news\ufffd")
    assert errors[1].startswith("PermanentError: worse") and errors[1].endswith("news")


async def test_timeout_counts_as_a_failure(store, pool, clock, new_tenant):
    await new_tenant()
    job_id = await submit(store, clock, "hold", key="a", timeout_s=0.05)
    await pool.run_once()
    await settle(pool)
    done = await job(store, job_id)
    assert done.status is JobStatus.RETRY
    assert "timed out" in done.last_error


async def test_cancel_running_job_cooperatively(store, pool, clock, behaviour, new_tenant):
    job_id = await start_holding(store, pool, clock, behaviour, new_tenant)
    assert pool.cancel(job_id)
    await settle(pool)
    assert (await job(store, job_id)).status is JobStatus.CANCELLED


async def test_cancel_requested_from_cli_is_noticed_by_the_lifeline(store, pool, clock, config,
                                                                    behaviour, new_tenant):
    job_id = await start_holding(store, pool, clock, behaviour, new_tenant)
    await store.cancel_job(job_id, tenant_id=None, now=clock.now())  # what the CLI does
    assert (await job(store, job_id)).status is JobStatus.RUNNING
    lifeline = Lifeline(store=store, pool=pool, clock=clock, config=config.workers)
    await lifeline.run_once()
    await settle(pool)
    assert (await job(store, job_id)).status is JobStatus.CANCELLED


async def test_shutdown_puts_unfinished_jobs_back(store, pool, clock, behaviour, new_tenant):
    job_id = await start_holding(store, pool, clock, behaviour, new_tenant)
    await pool.shutdown(grace_s=0.01)
    back = await job(store, job_id)
    assert back.status is JobStatus.QUEUED
    assert back.next_run_at == clock.now()
    assert "shutdown" in back.last_error
    assert await pool.run_once() == 0  # no claims after shutdown


async def test_shutdown_ends_within_grace_and_cleanup_even_if_a_job_ignores_cancellation(
        store, pool, clock, behaviour, new_tenant):
    await new_tenant()
    job_id = await submit(store, clock, "stubborn", key="s")
    await pool.run_once()
    await until(lambda: bool(behaviour.started), "the job never started")
    started = time.monotonic()
    async with asyncio.timeout(5):
        await pool.shutdown(grace_s=0.05, cleanup_s=0.2)
    assert time.monotonic() - started < 1.0
    assert (await job(store, job_id)).status is JobStatus.RUNNING  # left to the next start's recovery
    behaviour.release.set()
    await settle(pool)


async def test_shutdown_lets_jobs_finish_within_grace(store, pool, clock, behaviour, new_tenant):
    job_id = await start_holding(store, pool, clock, behaviour, new_tenant)
    asyncio.get_running_loop().call_later(0.02, behaviour.release.set)
    await pool.shutdown(grace_s=5)
    assert (await job(store, job_id)).status is JobStatus.SUCCEEDED


async def test_max_concurrency_caps_a_tenant(store, pool, clock, behaviour, new_tenant):
    await new_tenant("capped", max_concurrency=2)
    ids = [await submit(store, clock, "hold", tenant="capped", key=f"k{i}") for i in range(6)]
    for _ in range(3):
        await pool.run_once()
    assert len(pool.running_ids()) == 2
    behaviour.release.set()
    run = asyncio.create_task(pool.run())
    try:
        deadline = time.monotonic() + 5
        while any([(await job(store, i)).status is not JobStatus.SUCCEEDED for i in ids]):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
    finally:
        await pool.shutdown(0)
        run.cancel()
    assert behaviour.peak <= 2


async def test_a_submitted_job_starts_within_milliseconds_when_woken(store, tmp_path, behaviour,
                                                                     new_tenant):
    # A long poll interval: only the wake-up can start the job quickly.
    config = make_config(tmp_path, workers={"poll_interval": 30})
    clock = FakeClock(T0)
    pool = WorkerPool(store=store, registry=behaviour.registry(), services=Services(config=config),
                      clock=clock, config=config, owner="o")
    await new_tenant()
    run = asyncio.create_task(pool.run())
    await asyncio.sleep(0.01)  # let the loop go idle
    latencies = []
    try:
        for i in range(5):
            submitted = time.perf_counter()
            await submit(store, clock, "hold", key=f"k{i}")
            pool.wake()
            while len(behaviour.started) <= i:
                await asyncio.sleep(0)
            latencies.append(behaviour.started[i][1] - submitted)
    finally:
        behaviour.release.set()
        await pool.shutdown(1)
        run.cancel()
    assert max(latencies) < 0.25, latencies


async def test_startup_recovery_and_lease_rescue(store, pool, clock, config, behaviour,
                                                 new_tenant):
    await new_tenant()
    orphan = await submit(store, clock, "noop", key="a", max_attempts=1)
    survivor = await submit(store, clock, "noop", key="b", max_attempts=3)
    await store.claim_jobs(rotation=Rotation(), now=clock.now(), limit=10, owner="dead-process",
                               lease_s=config.workers.lease_seconds)
    # what the next start of the only daemon on the database does (jobd.store.cluster)
    counts = await store.rescue_jobs(now=clock.now(), all_running=True)
    assert counts == {"retry": 1, "fatal": 1}
    assert (await job(store, orphan)).status is JobStatus.FATAL
    assert "last one" in (await job(store, orphan)).last_error
    assert (await job(store, survivor)).status is JobStatus.RETRY
    # a lease that runs out while the daemon runs is rescued too
    lifeline = Lifeline(store=store, pool=pool, clock=clock, config=config.workers)
    await store.claim_jobs(rotation=Rotation(), now=clock.now(), limit=10, owner="stuck",
                               lease_s=config.workers.lease_seconds)
    await lifeline.run_once()
    assert (await job(store, survivor)).status is JobStatus.RUNNING
    clock.advance(config.workers.lease_seconds + 1)
    await lifeline.run_once()
    assert (await job(store, survivor)).status is JobStatus.RETRY
