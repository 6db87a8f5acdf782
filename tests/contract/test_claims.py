"""claim_jobs: what a claim takes and marks, priorities, runAt, fairness across tenants,
the rotation, max_concurrency (also with claims in flight at once), queue_was_empty."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from jobd.models import ClaimedJob, JobStatus
from jobd.store.backend import Backend, Rotation
from tests.conftest import T0
from tests.contract import stored
from tests.contract.helpers import LEASE_S, claim, claim_one, get, submit, tenant
from tests.contract.stored import Peek


@pytest.fixture(autouse=True)
async def acme(backend: Backend) -> None:
    await tenant(backend, "acme")


async def test_a_claim_marks_the_job_running(backend: Backend, peek: Peek) -> None:
    job_id = (await submit(backend, type="email", payload='{"to": "x"}', max_attempts=4,
                           timeout_seconds=9.0, webhook_url="https://h/x")).job_id
    now = T0 + 3
    round_ = await claim(backend, now=now, owner="daemon-1")
    assert round_.jobs == [ClaimedJob(id=job_id, tenant_id="acme", type="email",
                                      payload='{"to": "x"}', attempt=1, max_attempts=4,
                                      timeout_seconds=9.0, due_at=T0, claimed_at=now,
                                      webhook_url="https://h/x")]
    assert round_.last_tenant == "acme" and not round_.queue_was_empty
    job = await get(backend, job_id)
    assert job.status is JobStatus.RUNNING
    assert (job.attempts, job.started_at, job.updated_at, job.next_run_at) == (1, now, now, None)
    assert await stored.lease(peek, job_id) == ("daemon-1", now + LEASE_S)


async def test_a_running_job_is_not_claimed_again(backend: Backend) -> None:
    await submit(backend)
    await claim_one(backend)
    assert (await claim(backend, now=T0 + 1)).jobs == []


async def test_a_job_waits_until_it_is_due(backend: Backend) -> None:
    job_id = (await submit(backend, run_at=T0 + 10)).job_id
    assert (await claim(backend, now=T0)).jobs == []
    assert (await claim(backend, now=T0 + 9.999)).jobs == []
    assert [j.id for j in (await claim(backend, now=T0 + 10)).jobs] == [job_id]


async def test_a_claim_without_room_claims_nothing(backend: Backend) -> None:
    await submit(backend)
    nothing = await claim(backend, limit=0, rotation=Rotation("zz"))
    assert (nothing.jobs, nothing.last_tenant) == ([], "zz")
    assert (await claim(backend, limit=1)).jobs != []


async def test_higher_priority_first_then_earlier_due_then_first_come(backend: Backend) -> None:
    low_early = (await submit(backend, priority=0, run_at=T0 - 100)).job_id
    high_late = (await submit(backend, priority=5, run_at=T0 - 1)).job_id
    high_early = (await submit(backend, priority=5, run_at=T0 - 50)).job_id
    mid = (await submit(backend, priority=1, run_at=T0 - 10)).job_id
    low_late = (await submit(backend, priority=0, run_at=T0 - 5)).job_id
    negative = (await submit(backend, priority=-3, run_at=T0 - 1000)).job_id
    tie_first = (await submit(backend, priority=-5, run_at=T0)).job_id
    tie_second = (await submit(backend, priority=-5, run_at=T0)).job_id
    expected = [high_early, high_late, mid, low_early, low_late, negative, tie_first, tie_second]
    assert [(await claim_one(backend, now=T0)).id for _ in expected] == expected


async def test_one_round_takes_a_tenants_jobs_in_priority_order(backend: Backend) -> None:
    ids = [(await submit(backend, priority=p)).job_id for p in (1, 3, 2)]
    assert [j.id for j in (await claim(backend, limit=3)).jobs] == [ids[1], ids[2], ids[0]]


# fairness ---------------------------------------------------------------------------


async def three_tenants(backend: Backend, per_tenant: int = 4) -> dict[str, list[str]]:
    """Tenants a, b, c (and acme, empty) with jobs of falling priority each."""
    ids: dict[str, list[str]] = {}
    for t in ("c", "a", "b"):
        await tenant(backend, t)
        ids[t] = [(await submit(backend, tenant_id=t, priority=10 - n)).job_id
                  for n in range(per_tenant)]
    return ids


async def test_every_tenants_best_job_before_any_tenants_second(backend: Backend) -> None:
    ids = await three_tenants(backend)
    round_ = await claim(backend, limit=7)
    assert [j.id for j in round_.jobs] == [ids["a"][0], ids["b"][0], ids["c"][0],
                                           ids["a"][1], ids["b"][1], ids["c"][1],
                                           ids["a"][2]]
    assert round_.last_tenant == "c"


async def test_a_tenant_with_few_jobs_leaves_the_rest_to_the_others(backend: Backend) -> None:
    await tenant(backend, "small")
    await tenant(backend, "big")
    small = (await submit(backend, tenant_id="small")).job_id
    big = [(await submit(backend, tenant_id="big", run_at=T0 - 100 + n)).job_id for n in range(6)]
    round_ = await claim(backend, limit=5)
    assert [j.id for j in round_.jobs] == [big[0], small, *big[1:4]]


async def test_the_rotation_continues_across_rounds(backend: Backend) -> None:
    ids = await three_tenants(backend, per_tenant=3)
    rotation = Rotation()
    order = []
    for _ in range(9):
        order += [j.tenant_id for j in (await claim(backend, limit=1, rotation=rotation)).jobs]
    assert order == ["a", "b", "c"] * 3
    assert rotation.after == "c"
    assert sorted(i for t in ids.values() for i in t) == sorted(
        [j.id for j in await backend.list_jobs(status="running", limit=20)])


async def test_the_rotation_starts_after_the_given_tenant(backend: Backend) -> None:
    await three_tenants(backend)
    round_ = await claim(backend, limit=4, rotation=Rotation("a"))
    assert [j.tenant_id for j in round_.jobs] == ["b", "c", "a", "b"]
    assert round_.last_tenant == "a"  # the last tenant looked at
    wrapped = await claim(backend, limit=1, rotation=Rotation("zzz"))  # after every tenant
    assert [j.tenant_id for j in wrapped.jobs] == ["a"]


async def test_claims_in_flight_at_once_continue_each_others_rotation(backend: Backend) -> None:
    await three_tenants(backend)
    rotation = Rotation()
    rounds = await asyncio.gather(*(backend.claim_jobs(now=T0, limit=1, owner="w1",
                                                       lease_s=LEASE_S, rotation=rotation)
                                    for _ in range(3)))
    assert [r.jobs[0].tenant_id for r in rounds] == ["a", "b", "c"]
    assert rotation.after == "c"


async def one_job_each(backend: Backend, *tenant_ids: str, **fields: Any) -> None:
    for t in tenant_ids:
        await tenant(backend, t)
        await submit(backend, tenant_id=t, **fields)


async def test_ids_rotate_in_byte_order(backend: Backend) -> None:
    await one_job_each(backend, "b", "B", "a", "_")
    round_ = await claim(backend, limit=4)
    assert [j.tenant_id for j in round_.jobs] == sorted(["b", "B", "a", "_"])


async def test_a_single_job_is_not_stuck_behind_a_flood(backend: Backend, peek: Peek) -> None:
    await tenant(backend, "big")
    await tenant(backend, "small")
    await asyncio.gather(*(submit(backend, tenant_id="big") for _ in range(500)))
    small = (await submit(backend, tenant_id="small", now=T0 + 1, run_at=T0 + 1)).job_id
    round_ = await claim(backend, now=T0 + 2, limit=4)
    assert small in [j.id for j in round_.jobs]
    assert Counter(j.tenant_id for j in round_.jobs) == {"big": 3, "small": 1}


async def test_tenants_with_nothing_due_do_not_use_up_the_round(backend: Backend) -> None:
    await one_job_each(backend, "a1", "a2", "a3", run_at=T0 + 3600)  # scheduled for later
    await tenant(backend, "zz")
    due = (await submit(backend, tenant_id="zz")).job_id
    round_ = await claim(backend, now=T0, limit=2)
    assert [j.id for j in round_.jobs] == [due]
    assert round_.last_tenant == "zz"


async def test_the_round_stops_after_limit_tenants_with_jobs(backend: Backend) -> None:
    await one_job_each(backend, "a", "b", "c", "d")
    round_ = await claim(backend, limit=2)
    assert [j.tenant_id for j in round_.jobs] == ["a", "b"]
    assert round_.last_tenant == "b"
    assert [j.tenant_id for j in (await claim(backend, limit=2, rotation=Rotation("b"))).jobs] == [
        "c", "d"]


async def test_tenants_at_their_cap_do_not_use_up_the_round(backend: Backend) -> None:
    await tenant(backend, "capped", max_concurrency=1)
    await submit(backend, tenant_id="capped")
    await submit(backend, tenant_id="capped")
    await claim(backend, limit=1, rotation=Rotation("acme"))  # capped runs its one job
    await tenant(backend, "other")
    due = (await submit(backend, tenant_id="other")).job_id
    assert [j.id for j in (await claim(backend, now=T0, limit=1)).jobs] == [due]


# max_concurrency --------------------------------------------------------------------


async def test_max_concurrency_caps_running_jobs(backend: Backend, peek: Peek) -> None:
    await tenant(backend, "capped", max_concurrency=2)
    for _ in range(5):
        await submit(backend, tenant_id="capped")
    free = (await submit(backend, tenant_id="acme")).job_id
    first = await claim(backend, limit=10)
    assert Counter(j.tenant_id for j in first.jobs) == {"capped": 2, "acme": 1}
    assert free in [j.id for j in first.jobs]
    for step in range(3):
        assert (await claim(backend, now=T0 + step, limit=10)).jobs == []
        assert await stored.running_of(peek, "capped") == 2
    done = next(j for j in first.jobs if j.tenant_id == "capped")
    assert await backend.finish_job(done, owner="w1", status=JobStatus.SUCCEEDED, now=T0 + 5)
    refill = await claim(backend, now=T0 + 5, limit=10)
    assert [j.tenant_id for j in refill.jobs] == ["capped"]
    assert await stored.running_of(peek, "capped") == 2


async def test_max_concurrency_counts_jobs_of_every_owner(backend: Backend, peek: Peek) -> None:
    await tenant(backend, "capped", max_concurrency=2)
    for _ in range(6):
        await submit(backend, tenant_id="capped")
    seen = 0
    for step in range(6):
        seen += len((await claim(backend, now=T0 + step, limit=1, owner=f"w{step}")).jobs)
        assert await stored.running_of(peek, "capped") <= 2
    assert seen == 2


@pytest.mark.parametrize("rounds", [12])
async def test_max_concurrency_is_exact_with_claims_in_flight_at_once(
        backend: Backend, peek: Peek, rounds: int) -> None:
    """Two pools (two rotations, two owners: as two nodes) claim at the same moment, again
    and again: together they never run more than the cap."""
    await tenant(backend, "capped", max_concurrency=3)
    for _ in range(3 * rounds):
        await submit(backend, tenant_id="capped")
    for step in range(rounds):
        now = T0 + step
        one, two = await asyncio.gather(
            backend.claim_jobs(now=now, limit=8, owner="node-1", lease_s=LEASE_S,
                               rotation=Rotation()),
            backend.claim_jobs(now=now, limit=8, owner="node-2", lease_s=LEASE_S,
                               rotation=Rotation()))
        claimed = one.jobs + two.jobs
        assert len(claimed) == 3, (step, len(one.jobs), len(two.jobs))
        assert len({j.id for j in claimed}) == 3
        assert await stored.running_of(peek, "capped") == 3
        for job, owner in [(j, "node-1") for j in one.jobs] + [(j, "node-2") for j in two.jobs]:
            assert await backend.finish_job(job, owner=owner, status=JobStatus.SUCCEEDED,
                                            now=now + 0.5)


async def test_claims_in_flight_at_once_never_take_a_job_twice(backend: Backend) -> None:
    await asyncio.gather(*(submit(backend) for _ in range(60)))
    rounds = await asyncio.gather(*(backend.claim_jobs(now=T0, limit=7, owner=f"n{i}",
                                                       lease_s=LEASE_S, rotation=Rotation())
                                    for i in range(10)))
    claimed = [j.id for r in rounds for j in r.jobs]
    assert len(claimed) == len(set(claimed)) == 60


# queue_was_empty --------------------------------------------------------------------


async def test_queue_was_empty_means_nothing_waits_at_all(backend: Backend) -> None:
    assert (await claim(backend)).queue_was_empty
    later = await submit(backend, run_at=T0 + 60)
    not_due = await claim(backend, now=T0)
    assert not_due.jobs == [] and not not_due.queue_was_empty  # waiting, though not due
    taken = await claim(backend, now=T0 + 60)
    assert [j.id for j in taken.jobs] == [later.job_id] and not taken.queue_was_empty
    running_only = await claim(backend, now=T0 + 61)
    assert running_only.queue_was_empty  # a running job is not waiting


async def test_a_job_waiting_for_a_retry_is_waiting(backend: Backend) -> None:
    await submit(backend)
    job = await claim_one(backend)
    assert await backend.retry_job_later(job, owner="w1", now=T0 + 1, next_run_at=T0 + 100,
                                         error="boom")
    round_ = await claim(backend, now=T0 + 2)
    assert round_.jobs == [] and not round_.queue_was_empty
