"""What the API and operators do to jobs: read, cancel, retry, list."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from jobd.clock import to_rfc3339
from jobd.errors import InvalidState, NotFound
from jobd.models import DeliveryStatus, JobStatus
from jobd.store.backend import Backend
from tests.conftest import T0
from tests.contract import stored
from tests.contract.helpers import HOOK, claim_one, get, submit, tenant
from tests.contract.stored import Peek


@pytest.fixture(autouse=True)
async def tenants(backend: Backend) -> None:
    await tenant(backend, "acme")
    await tenant(backend, "globex")


# reads ------------------------------------------------------------------------------


async def test_reads_are_scoped_to_the_tenant(backend: Backend) -> None:
    job_id = (await submit(backend, webhook_url=HOOK)).job_id
    assert (await backend.find_job(job_id, "acme")) == await backend.find_job(job_id)
    assert await backend.find_job(job_id, "globex") is None
    assert await backend.find_job("job_nope") is None
    state = await backend.job_state(job_id, "acme")
    assert state is not None and state[0].id == job_id and state[1] == []
    assert await backend.job_state(job_id, "globex") is None
    assert await backend.job_state("job_nope", "acme") is None


async def test_job_state_carries_the_deliveries_oldest_first(backend: Backend) -> None:
    job_id = (await submit(backend, webhook_url=HOOK)).job_id
    claimed = await claim_one(backend)
    assert await backend.finish_job(claimed, owner="w1", status=JobStatus.FATAL, now=T0 + 1,
                                    error="boom")
    await backend.retry_job(job_id, tenant_id="acme", now=T0 + 2)
    again = await claim_one(backend, now=T0 + 2)
    assert await backend.finish_job(again, owner="w1", status=JobStatus.SUCCEEDED, now=T0 + 3)
    state = await backend.job_state(job_id, "acme")
    assert state is not None
    job, deliveries = state
    assert job.status is JobStatus.SUCCEEDED
    assert [orjson.loads(d.body)["status"] for d in deliveries] == ["fatal", "succeeded"]
    assert deliveries == await backend.deliveries_of_job(job_id)


# cancel -----------------------------------------------------------------------------


async def test_cancel_a_queued_job_with_its_webhook(backend: Backend, peek: Peek) -> None:
    job_id = (await submit(backend, webhook_url=HOOK, payload='{"x":  1}')).job_id
    cancelled = await backend.cancel_job(job_id, tenant_id="acme", now=T0 + 5)
    assert cancelled.status is JobStatus.CANCELLED
    assert (cancelled.completed_at, cancelled.next_run_at, cancelled.updated_at) == (
        T0 + 5, None, T0 + 5)
    assert cancelled == await get(backend, job_id)
    [delivery] = await backend.deliveries_of_job(job_id)
    assert (delivery.url, delivery.tenant_id, delivery.status) == (HOOK, "acme",
                                                                   DeliveryStatus.PENDING)
    assert delivery.next_attempt_at == T0 + 5
    assert b'"payload":{"x":  1}' in delivery.body
    body = orjson.loads(delivery.body)
    assert (body["jobId"], body["status"], body["attempts"]) == (job_id, "cancelled", 0)
    assert body["completedAt"] == to_rfc3339(T0 + 5)


async def test_cancel_a_queued_job_without_a_webhook(backend: Backend, peek: Peek) -> None:
    job_id = (await submit(backend)).job_id
    assert (await backend.cancel_job(job_id, tenant_id=None, now=T0)).status is JobStatus.CANCELLED
    assert await stored.count(peek, "deliveries") == 0


async def test_cancel_a_job_waiting_for_a_retry(backend: Backend) -> None:
    job_id = (await submit(backend)).job_id
    assert await backend.retry_job_later(await claim_one(backend), owner="w1", now=T0 + 1,
                                         next_run_at=T0 + 100, error="boom")
    cancelled = await backend.cancel_job(job_id, tenant_id="acme", now=T0 + 2)
    assert (cancelled.status, cancelled.next_run_at) == (JobStatus.CANCELLED, None)


async def test_cancel_a_running_job_only_asks_it_to_stop(backend: Backend) -> None:
    job_id = (await submit(backend, webhook_url=HOOK)).job_id
    await claim_one(backend)
    job = await backend.cancel_job(job_id, tenant_id="acme", now=T0 + 1)
    assert (job.status, job.cancel_requested, job.updated_at) == (JobStatus.RUNNING, True, T0 + 1)
    assert await backend.deliveries_of_job(job_id) == []


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FATAL, JobStatus.CANCELLED])
async def test_a_finished_job_cannot_be_cancelled(backend: Backend, peek: Peek,
                                                  final: JobStatus) -> None:
    job_id = (await submit(backend)).job_id
    if final is JobStatus.CANCELLED:
        await backend.cancel_job(job_id, tenant_id=None, now=T0)
    else:
        assert await backend.finish_job(await claim_one(backend), owner="w1", status=final,
                                        now=T0 + 1)
    before = await stored.snapshot(peek)
    with pytest.raises(InvalidState, match=final.value):
        await backend.cancel_job(job_id, tenant_id="acme", now=T0 + 2)
    assert await stored.snapshot(peek) == before


async def test_another_tenants_job_is_not_found(backend: Backend) -> None:
    job_id = (await submit(backend)).job_id
    for change in (backend.cancel_job(job_id, tenant_id="globex", now=T0),
                   backend.retry_job(job_id, tenant_id="globex", now=T0),
                   backend.cancel_job("job_nope", tenant_id=None, now=T0),
                   backend.retry_job("job_nope", tenant_id=None, now=T0)):
        with pytest.raises(NotFound):
            await change
    assert (await get(backend, job_id)).status is JobStatus.QUEUED


# retry ------------------------------------------------------------------------------


async def test_retry_a_fatal_job_with_another_attempt(backend: Backend) -> None:
    job_id = (await submit(backend, max_attempts=1)).job_id
    assert await backend.finish_job(await claim_one(backend), owner="w1", status=JobStatus.FATAL,
                                    now=T0 + 1, error="boom")
    job = await backend.retry_job(job_id, tenant_id=None, now=T0 + 50)
    assert (job.status, job.attempts, job.max_attempts) == (JobStatus.QUEUED, 1, 2)
    assert (job.next_run_at, job.completed_at, job.result, job.updated_at) == (
        T0 + 50, None, None, T0 + 50)
    assert job.last_error == "boom"  # the history stays
    again = await claim_one(backend, now=T0 + 50)
    assert again.attempt == 2


async def test_retry_keeps_a_larger_max_attempts(backend: Backend) -> None:
    job_id = (await submit(backend, max_attempts=5)).job_id
    assert await backend.finish_job(await claim_one(backend), owner="w1", status=JobStatus.FATAL,
                                    now=T0 + 1)
    assert (await backend.retry_job(job_id, tenant_id=None, now=T0 + 2)).max_attempts == 5


async def test_retry_a_cancelled_job(backend: Backend) -> None:
    job_id = (await submit(backend)).job_id
    await backend.cancel_job(job_id, tenant_id=None, now=T0)
    job = await backend.retry_job(job_id, tenant_id="acme", now=T0 + 1)
    assert (job.status, job.cancel_requested, job.next_run_at) == (JobStatus.QUEUED, False, T0 + 1)


async def test_a_running_job_asked_to_stop_and_cancelled_is_retried_without_the_request(
        backend: Backend) -> None:
    job_id = (await submit(backend)).job_id
    claimed = await claim_one(backend)
    assert (await backend.cancel_job(job_id, tenant_id=None, now=T0)).cancel_requested
    assert await backend.finish_job(claimed, owner="w1", status=JobStatus.CANCELLED, now=T0 + 1,
                                    error="cancelled while running")
    job = await backend.retry_job(job_id, tenant_id=None, now=T0 + 2)
    assert (job.status, job.cancel_requested) == (JobStatus.QUEUED, False)


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
async def test_retry_of_a_live_or_succeeded_job_is_invalid(backend: Backend, state: str) -> None:
    job_id = (await submit(backend)).job_id
    if state != "queued":
        claimed = await claim_one(backend)
        if state == "succeeded":
            assert await backend.finish_job(claimed, owner="w1", status=JobStatus.SUCCEEDED,
                                            now=T0 + 1)
    with pytest.raises(InvalidState, match=state):
        await backend.retry_job(job_id, tenant_id=None, now=T0 + 2)
    assert (await get(backend, job_id)).status.value == state


# list -------------------------------------------------------------------------------


async def test_list_newest_first_with_keyset_paging(backend: Backend) -> None:
    ids = [(await submit(backend, now=T0 + i)).job_id for i in range(7)]
    pages: list[list[str]] = []
    before = None
    while page := await backend.list_jobs(limit=3, before_seq=before):
        pages.append([j.id for j in page])
        before = page[-1].seq
    assert pages == [ids[::-1][:3], ids[::-1][3:6], ids[::-1][6:]]


async def test_paging_is_stable_while_new_jobs_arrive(backend: Backend) -> None:
    ids = [(await submit(backend)).job_id for _ in range(4)]
    page = await backend.list_jobs(limit=2)
    await submit(backend)  # a new job must not shift the next page
    rest = await backend.list_jobs(limit=10, before_seq=page[-1].seq)
    assert [j.id for j in rest] == ids[:2][::-1]


async def mixed(backend: Backend) -> list[tuple[str, str, str, str]]:
    """(id, tenant, type, status) of jobs in every status, oldest first."""
    made: list[tuple[str, str, str, str]] = []
    plan = [("acme", "noop", "succeeded"), ("globex", "email", "fatal"),
            ("acme", "email", "queued"), ("acme", "noop", "retry"),
            ("globex", "noop", "succeeded"), ("acme", "noop", "running"),
            ("globex", "noop", "cancelled"), ("acme", "email", "fatal"),
            ("globex", "email", "queued"), ("acme", "noop", "cancelled"),
            ("globex", "noop", "retry")]
    for n, (tenant_id, job_type, status) in enumerate(plan):
        now = T0 + n
        later = now + 3600 if status == "queued" else now  # out of the next claims' way
        job_id = (await submit(backend, tenant_id=tenant_id, type=job_type, now=now,
                               run_at=later)).job_id
        if status == "cancelled":
            await backend.cancel_job(job_id, tenant_id=None, now=now)
        elif status != "queued":
            claimed = await claim_one(backend, now=now)
            assert claimed.id == job_id
            if status in ("succeeded", "fatal"):
                assert await backend.finish_job(claimed, owner="w1", status=JobStatus(status),
                                                now=now)
            elif status == "retry":
                assert await backend.retry_job_later(claimed, owner="w1", now=now,
                                                     next_run_at=now + 3600, error="flaky")
        made.append((job_id, tenant_id, job_type, status))
    return made


FILTERS: list[dict[str, Any]] = [
    {}, {"tenant_id": "acme"}, {"tenant_id": "globex"}, {"tenant_id": "nobody"},
    *({"status": s.value} for s in JobStatus),
    {"job_type": "email"}, {"tenant_id": "acme", "status": "queued", "job_type": "email"},
    {"tenant_id": "globex", "status": "succeeded"}, {"status": "no-such-status"},
]


async def test_list_filters_and_pages_newest_first(backend: Backend) -> None:
    made = await mixed(backend)
    for filters in FILTERS:
        expected = [job_id for job_id, t, ty, s in reversed(made)
                    if filters.get("tenant_id", t) == t and filters.get("status", s) == s
                    and filters.get("job_type", ty) == ty]
        pages: list[str] = []
        before = None
        while page := await backend.list_jobs(limit=2, before_seq=before, **filters):
            pages += [j.id for j in page]
            before = page[-1].seq
        assert pages == expected, filters
