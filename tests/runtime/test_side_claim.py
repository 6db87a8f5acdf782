"""A second claim beside the one in flight (``WorkerPool._side_claim``), on a real SQLite file.

Slots freed while the pool's claim is in flight are claimed at once by a claim
beside it, not after the first comes back. These tests hold the writer behind a
gate so that both claims are in flight together, and pin that the freed slot is
filled without another round of the loop, that no more jobs run than there are
slots, that the two claims continue one rotation across tenants, and that a
shutdown waits for a side claim's jobs.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from jobd.handlers.base import AnyPayload, JobContext, JobType, Services
from jobd.handlers.registry import Registry, builtin_types
from jobd.models import JobStatus
from jobd.runtime.workers import WorkerPool
from jobd.store.backend import Rotation
from tests.conftest import make_config
from tests.runtime.conftest import Claims, until
from tests.runtime.test_direct_start import make_pool
from tests.runtime.test_workers import job, settle, submit


def delayed_claims(store, monkeypatch, wait) -> None:
    """The store's claims, each made once ``await wait()`` returns: until then the pool
    sees it in flight."""
    claim = store.claim_jobs

    def later(**kwargs):
        async def made():
            await wait()
            return await claim(**kwargs)
        return asyncio.ensure_future(made())
    monkeypatch.setattr(store, "claim_jobs", later)


class Gate:
    """Holds the store's claims: one asked for meanwhile is made once the gate opens."""

    def __init__(self, store, monkeypatch) -> None:
        self._open = asyncio.Event()
        delayed_claims(store, monkeypatch, self._open.wait)

    def open(self) -> None:
        self._open.set()


def release_those_holding(behaviour) -> None:
    """Let the ``hold`` jobs running now finish; the ones started later hold again."""
    behaviour.release.set()
    behaviour.release.clear()


async def two_slots_one_held(store, tmp_path, behaviour, clock, new_tenant):
    """A pool of two workers running one ``hold`` job, with two more waiting."""
    pool = make_pool(store, make_config(tmp_path, workers={"concurrency": 2}), behaviour, clock)
    await new_tenant()
    first = await submit(store, clock, "hold", key="first")
    assert await pool.run_once() == 1
    await until(lambda: len(behaviour.started) == 1, "the first job never started")
    waiting = [await submit(store, clock, "hold", key=k) for k in ("a", "b")]
    return pool, first, waiting


async def test_a_slot_freed_while_a_claim_is_in_flight_is_claimed_beside_it(
        store, tmp_path, behaviour, clock, new_tenant, monkeypatch):
    pool, first, waiting = await two_slots_one_held(store, tmp_path, behaviour, clock, new_tenant)
    gate = Gate(store, monkeypatch)
    claims = Claims(store, monkeypatch)
    loop_claim = asyncio.ensure_future(pool.run_once())  # for the one free slot
    await claims.reach(1)
    release_those_holding(behaviour)  # the first job finishes while that claim waits
    await claims.reach(2)  # a second claim, for the slot just freed, before the first is back
    assert claims.asked == [1, 1]
    gate.open()
    assert await loop_claim == 1
    # No other round of the loop: the side claim started the other waiting job.
    await until(lambda: len(behaviour.started) == 3, "the freed slot was not filled")
    assert sorted(pool.running_ids()) == sorted(waiting)
    assert {(await job(store, i)).status for i in waiting} == {JobStatus.RUNNING}
    assert (await job(store, first)).status is JobStatus.SUCCEEDED
    assert behaviour.peak == 2
    behaviour.release.set()
    await settle(pool)


async def test_without_a_claim_in_flight_a_freed_slot_wakes_the_loop_instead(
        store, tmp_path, behaviour, clock, new_tenant, monkeypatch):
    pool, _, _ = await two_slots_one_held(store, tmp_path, behaviour, clock, new_tenant)
    claims = Claims(store, monkeypatch)
    release_those_holding(behaviour)
    await until(lambda: len(pool.running_ids()) == 0, "the first job did not finish")
    for _ in range(5):
        await asyncio.sleep(0)
    assert claims.asked == []  # the loop (not running here) claims when woken
    assert await pool.run_once() == 2
    behaviour.release.set()
    await settle(pool)


class OneByOne:
    """A ``hold`` job type whose jobs the test lets finish one at a time."""

    def __init__(self) -> None:
        self.holding: dict[str, asyncio.Event] = {}
        self.started = 0
        self.peak = 0

    def registry(self) -> Registry:
        async def hold(payload: AnyPayload, ctx: JobContext) -> Any:
            self.started += 1
            self.holding[ctx.job_id] = asyncio.Event()
            self.peak = max(self.peak, len(self.holding))
            try:
                await self.holding[ctx.job_id].wait()
            finally:
                del self.holding[ctx.job_id]
        return Registry([*builtin_types(), JobType("hold", hold)])

    def release_one(self, rng: random.Random) -> None:
        waiting = [e for e in self.holding.values() if not e.is_set()]
        if waiting:
            rng.choice(waiting).set()


async def test_never_more_jobs_run_than_slots_with_claims_overlapping(
        store, tmp_path, clock, new_tenant, monkeypatch):
    # Jobs finish one by one at random moments while claims are in flight (each claim
    # takes a few ms here), so side claims are made all the time: the slots held by
    # claims and by running jobs never add up to more than the pool's 3.
    rounds = {"side": 0}
    delayed_claims(store, monkeypatch, lambda: asyncio.sleep(0.003))
    config = make_config(tmp_path, workers={"concurrency": 3})
    jobs = OneByOne()
    pool = WorkerPool(store=store, registry=jobs.registry(), services=Services(config=config),
                      clock=clock, config=config, owner="test-owner", rng=random.Random(1))
    side_claim = pool._side_claim

    def counted_side_claim() -> None:
        rounds["side"] += 1
        side_claim()
    monkeypatch.setattr(pool, "_side_claim", counted_side_claim)
    await new_tenant("acme")
    await new_tenant("globex")
    ids = [await submit(store, clock, "hold", tenant=("acme", "globex")[i % 2], key=f"k{i}")
           for i in range(60)]
    rng = random.Random(7)
    run = asyncio.create_task(pool.run())
    try:
        deadline = time.monotonic() + 10
        while jobs.started < len(ids) or jobs.holding:
            assert time.monotonic() < deadline, "the jobs did not all run"
            assert len(pool.running_ids()) <= 3
            jobs.release_one(rng)
            await asyncio.sleep(0.001 * rng.randrange(4))
        await settle(pool)
    finally:
        await pool.shutdown(0)
        run.cancel()
    assert jobs.peak <= 3
    assert jobs.started == len(ids)
    assert {(await job(store, i)).status for i in ids} == {JobStatus.SUCCEEDED}
    assert rounds["side"] > 5  # the case this test is about did happen


async def test_two_claims_in_flight_continue_one_rotation(store, clock, new_tenant):
    await new_tenant("acme")
    await new_tenant("globex")
    for key in ("a1", "a2"):
        await submit(store, clock, "noop", tenant="acme", key=key)
    await submit(store, clock, "noop", tenant="globex", key="g1")
    rotation = Rotation()
    kwargs = dict(now=clock.now(), limit=1, owner="o", lease_s=60, rotation=rotation)
    first = store.claim_jobs(**kwargs)
    second = store.claim_jobs(**kwargs)  # asked before the first is done
    rounds = [await first, await second]
    assert [[j.tenant_id for j in r.jobs] for r in rounds] == [["acme"], ["globex"]]
    assert rotation.after == "globex"
    third = await store.claim_jobs(**kwargs)
    assert [j.tenant_id for j in third.jobs] == ["acme"]


async def test_shutdown_waits_for_a_side_claim_and_puts_its_job_back(
        store, tmp_path, behaviour, clock, new_tenant, monkeypatch):
    pool, first, waiting = await two_slots_one_held(store, tmp_path, behaviour, clock, new_tenant)
    gate = Gate(store, monkeypatch)
    claims = Claims(store, monkeypatch)
    loop_claim = asyncio.ensure_future(pool.run_once())
    await claims.reach(1)
    release_those_holding(behaviour)
    await claims.reach(2)
    stopping = asyncio.ensure_future(pool.shutdown(0))
    await asyncio.sleep(0.01)
    assert not stopping.done()  # both claims are still in flight
    gate.open()
    await loop_claim
    await stopping
    # Both claimed jobs were started, stopped by the shutdown and put back: none is left
    # running under this pool's lease.
    assert {(await job(store, i)).status for i in waiting} == {JobStatus.QUEUED}
    assert (await job(store, first)).status is JobStatus.SUCCEEDED
    assert pool.idle
