"""Jobs created already running (``WorkerPool.reserve`` / ``follow``), against a real SQLite file.

A job created while the queue is known to be empty and a slot is free is inserted
``running`` and started once that insert is committed, without a claim. These
tests pin when that may happen (never overtaking a waiting job, never past a
tenant's cap) and that a slot held for it is always given back.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from jobd.api.views import created_body
from jobd.clock import FakeClock
from jobd.errors import IdempotencyConflict
from jobd.handlers.base import Services
from jobd.models import IdempotentResult, JobStatus, NewJob
from jobd.runtime.workers import WorkerPool
from tests.conftest import T0, make_config
from tests.runtime.conftest import Behaviour, Claims, until
from tests.runtime.test_workers import job, settle, submit


def make_pool(store, config, behaviour, clock) -> WorkerPool:
    return WorkerPool(store=store, registry=behaviour.registry(), services=Services(config=config),
                      clock=clock, config=config, owner="test-owner", rng=random.Random(1))


@pytest.fixture
def pool(store, config, behaviour, clock) -> WorkerPool:
    return make_pool(store, config, behaviour, clock)


@pytest.fixture
async def one_slot(store, tmp_path, behaviour, clock, new_tenant) -> WorkerPool:
    """A pool of one worker that has seen the queue empty."""
    pool = make_pool(store, make_config(tmp_path, workers={"concurrency": 1}), behaviour, clock)
    await new_tenant()
    await pool.run_once()
    return pool


def new_job(clock, job_type: str = "hold", *, key: str, tenant: str = "acme",
            run_at: float | None = None) -> NewJob:
    return NewJob(tenant_id=tenant, type=job_type, payload="{}", priority=0, max_attempts=3,
                  timeout_seconds=None, run_at=clock.now() if run_at is None else run_at,
                  webhook_url=None, idempotency_key=key)


def create(store, pool, clock, job: NewJob, *, capped: bool = False,
           body_hash: bytes | None = None) -> tuple[bool, asyncio.Future[IdempotentResult]]:
    """What ``POST /jobs`` does (jobd.api.routes.insert): reserve, insert, follow."""
    now = clock.now()
    lease = pool.reserve(job, now=now, capped=capped)
    future = store.insert_job(job, body_hash=body_hash or job.idempotency_key.encode(),
                              now=now, idempotency_ttl_s=3600, lease=lease)
    if lease is not None:
        pool.follow(job, now, future)
    return lease is not None, future


async def started(behaviour: Behaviour, count: int) -> None:
    await until(lambda: len(behaviour.started) >= count, "the job never started")


async def test_a_job_created_while_the_queue_is_empty_starts_without_a_claim(
        store, pool, clock, behaviour, new_tenant, monkeypatch):
    await new_tenant()
    assert await pool.run_once() == 0  # the queue is seen empty
    claims = Claims(store, monkeypatch)
    reserved, future = create(store, pool, clock, new_job(clock, key="a"))
    assert reserved
    result = await future
    assert result.started and not result.replayed
    row = await job(store, result.job_id)
    assert row.status is JobStatus.RUNNING
    assert row.attempts == 1
    assert row.started_at == row.created_at == clock.now()
    assert row.next_run_at is None
    await started(behaviour, 1)
    assert behaviour.started[0][0] == result.job_id
    assert pool.running_ids() == [result.job_id]
    behaviour.release.set()
    await settle(pool)
    done = await job(store, result.job_id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.attempts == 1
    assert claims.rounds == 0


async def test_the_201_still_says_queued(store, pool, clock, new_tenant):
    # The answer describes the creation (SPEC: 201 {"status": "queued"}), replays included:
    # the API renders it from the result, which says only that the job started.
    await new_tenant()
    await pool.run_once()
    reserved, future = create(store, pool, clock, new_job(clock, "noop", key="a"))
    assert reserved
    result = await future
    assert result.started
    assert b'"status":"queued"' in created_body(result.job_id, result.created_at)
    await settle(pool)


async def test_nothing_starts_directly_before_a_claim_saw_the_queue_empty(
        store, pool, clock, new_tenant):
    await new_tenant()
    reserved, future = create(store, pool, clock, new_job(clock, key="a"))
    assert not reserved
    result = await future
    assert not result.started
    assert (await job(store, result.job_id)).status is JobStatus.QUEUED


async def test_a_waiting_job_is_never_overtaken(store, pool, clock, new_tenant):
    await new_tenant()
    await pool.run_once()
    waiting = await submit(store, clock, "hold", key="waiting")
    pool.wake()  # what the daemon does for a job created queued
    reserved, future = create(store, pool, clock, new_job(clock, key="later"))
    assert not reserved
    assert not (await future).started
    await pool.run_once()  # claims both, oldest first; it saw them waiting
    assert pool.running_ids()[0] == waiting
    assert not pool.reserve(new_job(clock, key="x"), now=clock.now(), capped=False)
    await pool.run_once()  # now the queue is seen empty
    assert pool.reserve(new_job(clock, key="y"), now=clock.now(), capped=False)


@pytest.mark.parametrize("why", ["capped", "runs later", "no free slot", "shutting down"])
async def test_when_a_new_job_goes_through_the_queue(one_slot, clock, why):
    pool = one_slot
    job_ = new_job(clock, key="a", run_at=clock.now() + 60 if why == "runs later" else None)
    if why == "no free slot":
        assert pool.reserve(new_job(clock, key="other"), now=clock.now(), capped=False)
    if why == "shutting down":
        await pool.shutdown(0)
    assert pool.reserve(job_, now=clock.now(), capped=why == "capped") is None


async def test_a_replayed_or_refused_creation_gives_the_slot_back(store, one_slot, clock):
    pool = one_slot
    _, first = create(store, pool, clock, new_job(clock, "noop", key="a"))
    first_id = (await first).job_id
    await settle(pool)
    assert pool.free_slots == 1
    # the same key again: a replay, nothing created, nothing started
    reserved, again = create(store, pool, clock, new_job(clock, "noop", key="a"))
    assert reserved
    replay = await again
    assert replay.replayed and not replay.started and replay.job_id == first_id
    await asyncio.sleep(0)
    assert pool.free_slots == 1 and pool.idle
    # the same key with another body: 409, and the slot comes back too
    reserved, conflict = create(store, pool, clock, new_job(clock, "noop", key="a"),
                                body_hash=b"another body")
    assert reserved
    with pytest.raises(IdempotencyConflict):
        await conflict
    await asyncio.sleep(0)
    assert pool.free_slots == 1
    assert (await job(store, first_id)).attempts == 1


async def test_in_a_batch_with_a_replay_the_new_job_still_starts_at_once(
        store, pool, clock, new_tenant):
    # The batch's one statement leaves the used key (replayed on its own, not started)
    # and inserts the new job beside it running, as if it had been alone.
    await new_tenant()
    await submit(store, clock, "noop", key="used")
    await pool.run_once()
    await settle(pool)
    await pool.run_once()  # sees the queue empty
    _, replay = create(store, pool, clock, new_job(clock, "noop", key="used"))
    reserved, fresh = create(store, pool, clock, new_job(clock, "noop", key="fresh"))
    assert reserved
    results = await asyncio.gather(replay, fresh)
    assert [r.replayed for r in results] == [True, False]
    assert [r.started for r in results] == [False, True]
    await settle(pool)
    assert (await job(store, results[1].job_id)).status is JobStatus.SUCCEEDED
    assert (await job(store, results[1].job_id)).attempts == 1
    assert pool.idle and pool.free_slots == 16


async def test_shutdown_waits_for_a_job_being_created_running(store, pool, clock, new_tenant):
    await new_tenant()
    await pool.run_once()
    reserved, future = create(store, pool, clock, new_job(clock, "noop", key="a"))
    assert reserved
    await pool.shutdown(grace_s=5)  # before the insert is committed
    result = await future
    assert result.started
    assert (await job(store, result.job_id)).status is JobStatus.SUCCEEDED


async def test_anything_queued_meanwhile_turns_direct_starts_off(store, pool, clock, new_tenant):
    await new_tenant()
    await pool.run_once()
    assert pool.reserve(new_job(clock, key="x"), now=clock.now(), capped=False)
    pool.wake(clock.now() + 30)  # e.g. a retry scheduled for later
    assert not pool.reserve(new_job(clock, key="y"), now=clock.now(), capped=False)


async def test_a_job_created_running_by_a_process_that_died_is_rescued(store, config, clock,
                                                                      behaviour, new_tenant):
    await new_tenant()
    dead = make_pool(store, config, behaviour, clock)
    await dead.run_once()
    lease = dead.reserve(new_job(clock, key="a"), now=clock.now(), capped=False)
    assert lease is not None
    result = await store.insert_job(new_job(clock, key="a"), body_hash=b"a", now=clock.now(),
                                    idempotency_ttl_s=3600,
                                    lease=lease)  # never followed: the process died
    assert (await job(store, result.job_id)).status is JobStatus.RUNNING
    # what the next start of the only daemon on the database does (jobd.store.cluster)
    assert await store.rescue_jobs(now=clock.now(), all_running=True) == {"retry": 1,
                                                                          "fatal": 0}
    back = await job(store, result.job_id)
    assert back.status is JobStatus.RETRY
    assert "interrupted" in back.last_error


async def test_a_job_queued_while_a_claim_is_in_flight_is_not_overtaken(store, pool, clock,
                                                                        new_tenant, monkeypatch):
    # The claim's snapshot may predate a job committed (and announced) meanwhile: a claim
    # round only vouches for an empty queue if nothing was announced while it ran.
    await new_tenant()
    claim = store.claim_jobs

    def announced_meanwhile(**kwargs):
        future = claim(**kwargs)
        pool.wake()
        return future
    monkeypatch.setattr(store, "claim_jobs", announced_meanwhile)
    await pool.run_once()
    assert pool.reserve(new_job(clock, key="x"), now=clock.now(), capped=False) is None
    monkeypatch.setattr(store, "claim_jobs", claim)
    await pool.run_once()
    assert pool.reserve(new_job(clock, key="y"), now=clock.now(), capped=False) is not None


async def test_with_the_queue_empty_only_the_poll_looks_for_unannounced_jobs(
        store, tmp_path, behaviour, new_tenant, monkeypatch):
    config = make_config(tmp_path, workers={"poll_interval": 0.2})
    clock = FakeClock(T0)
    pool = make_pool(store, config, behaviour, clock)
    await new_tenant()
    claims = Claims(store, monkeypatch)
    run = asyncio.create_task(pool.run())
    try:
        while claims.rounds == 0:
            await asyncio.sleep(0.001)
        # direct starts free their slots without a claim round each
        for i in range(20):
            reserved, future = create(store, pool, clock, new_job(clock, "noop", key=f"d{i}"))
            assert reserved
            await future
        await settle(pool)
        assert claims.rounds <= 3  # the first one and polls, not one per job
        # a job queued behind the pool's back (the CLI's `jobs retry`) is found by the poll
        hidden = await submit(store, clock, "noop", key="from-the-cli")
        deadline = time.monotonic() + 5
        while (await job(store, hidden)).status is not JobStatus.SUCCEEDED:
            assert time.monotonic() < deadline, "the poll never found the job"
            await asyncio.sleep(0.01)
    finally:
        await pool.shutdown(0)
        run.cancel()
