"""What workers write: finish (with the outbox row, or a direct delivery), retry later,
requeue, lease heartbeats and rescue; every one fenced."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
import pytest

from jobd.clock import to_rfc3339
from jobd.models import ClaimedJob, DeliveryStatus, JobStatus
from jobd.store.backend import Backend, DirectDelivery
from jobd.webhook_body import build_body
from tests.conftest import T0
from tests.contract import stored
from tests.contract.helpers import HOOK, LEASE_S, claim, claim_one, get, submit, tenant
from tests.contract.stored import Peek


@pytest.fixture(autouse=True)
async def acme(backend: Backend) -> None:
    await tenant(backend, "acme")


async def test_success_writes_the_job_and_exactly_one_pending_delivery(
        backend: Backend, peek: Peek) -> None:
    job_id = (await submit(backend, webhook_url=HOOK, payload='{"to":  "u@example.com"}',
                           type="email")).job_id
    claimed = await claim_one(backend, now=T0)
    assert await backend.finish_job(claimed, owner="w1", status=JobStatus.SUCCEEDED,
                                    now=T0 + 7, result_json='{"ok":  true, "n": 1.50}')
    job = await get(backend, job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert (job.completed_at, job.updated_at, job.next_run_at) == (T0 + 7, T0 + 7, None)
    assert job.result == '{"ok":  true, "n": 1.50}'
    assert (job.last_error, job.errors) == (None, None)
    assert await stored.lease(peek, job_id) == (None, None)
    assert await stored.stored_job_texts(peek, job_id) == ('{"to":  "u@example.com"}',
                                                          '{"ok":  true, "n": 1.50}')

    [delivery] = await backend.deliveries_of_job(job_id)
    assert (delivery.url, delivery.tenant_id, delivery.job_id) == (HOOK, "acme", job_id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 0)
    assert delivery.next_attempt_at == delivery.created_at == T0 + 7
    assert delivery.id.startswith("msg_")
    expected = build_body(job_id=job_id, job_type="email", status="succeeded", attempts=1,
                          payload_json='{"to":  "u@example.com"}', completed_at=T0 + 7,
                          result_json='{"ok":  true, "n": 1.50}', error=None)
    assert delivery.body == expected == await stored.stored_body(peek, delivery.id)
    assert b'"payload":{"to":  "u@example.com"}' in delivery.body  # the payload's own bytes
    body = orjson.loads(delivery.body)
    assert (body["status"], body["completedAt"], body["result"]) == (
        "succeeded", to_rfc3339(T0 + 7), {"ok": True, "n": 1.5})
    assert "error" not in body
    # a second finish is fenced out and writes nothing more
    assert not await backend.finish_job(claimed, owner="w1", status=JobStatus.SUCCEEDED,
                                        now=T0 + 8)
    assert len(await backend.deliveries_of_job(job_id)) == 1


@pytest.mark.parametrize("status", [JobStatus.FATAL, JobStatus.CANCELLED])
async def test_a_failure_carries_its_error_into_the_job_and_the_webhook(
        backend: Backend, status: JobStatus) -> None:
    job_id = (await submit(backend, webhook_url=HOOK, max_attempts=1)).job_id
    claimed = await claim_one(backend, now=T0)
    assert await backend.finish_job(claimed, owner="w1", status=status, now=T0 + 1,
                                    error="KeyError: 'to'")
    job = await get(backend, job_id)
    assert (job.status, job.last_error) == (status, "KeyError: 'to'")
    assert orjson.loads(job.errors or "null") == [{"attempt": 1, "at": T0 + 1,
                                                   "error": "KeyError: 'to'"}]
    body = orjson.loads((await backend.deliveries_of_job(job_id))[0].body)
    assert (body["status"], body["error"], body["attempts"]) == (status.value, "KeyError: 'to'", 1)
    assert "result" not in body


async def test_a_finish_without_a_webhook_writes_no_delivery(backend: Backend, peek: Peek) -> None:
    job_id = (await submit(backend)).job_id
    assert await backend.finish_job(await claim_one(backend), owner="w1",
                                    status=JobStatus.SUCCEEDED, now=T0 + 1)
    assert await backend.deliveries_of_job(job_id) == []
    assert await stored.count(peek, "deliveries") == 0


FENCES: list[tuple[dict[str, Any], str]] = [
    ({"attempt": 2}, "w1"),       # a later attempt's number
    ({"attempt": 0}, "w1"),       # an earlier one
    ({}, "intruder"),             # another owner
]


@pytest.mark.parametrize(("change", "owner"), FENCES)
async def test_a_write_by_a_claim_that_is_not_current_changes_nothing(
        backend: Backend, peek: Peek, change: dict[str, Any], owner: str) -> None:
    await submit(backend, webhook_url=HOOK)
    claimed = await claim_one(backend)
    before = await stored.snapshot(peek)
    stale = dataclasses.replace(claimed, **change)
    for status in (JobStatus.SUCCEEDED, JobStatus.FATAL, JobStatus.CANCELLED):
        assert await backend.finish_job(stale, owner=owner, status=status, now=T0 + 1,
                                        error="x") is False
    assert await backend.retry_job_later(stale, owner=owner, now=T0 + 1, next_run_at=T0 + 9,
                                         error="x") is False
    assert await backend.requeue_job(stale, owner=owner, now=T0 + 1, reason="x") is False
    direct = DirectDelivery("msg_direct", b"{}", T0 + 60)
    assert await backend.finish_job(stale, owner=owner, status=JobStatus.SUCCEEDED, now=T0 + 1,
                                    direct=direct) is False
    assert await stored.snapshot(peek) == before


async def test_a_worker_whose_lease_expired_is_fenced_out(backend: Backend, peek: Peek) -> None:
    job_id = (await submit(backend, webhook_url=HOOK)).job_id
    old = await claim_one(backend, now=T0, owner="w1")
    assert await backend.rescue_jobs(now=T0 + LEASE_S, all_running=False) == {"retry": 0,
                                                                              "fatal": 0}
    assert await backend.rescue_jobs(now=T0 + LEASE_S + 1, all_running=False) == {"retry": 1,
                                                                                  "fatal": 0}
    rescued = await get(backend, job_id)
    assert rescued.status is JobStatus.RETRY
    assert rescued.next_run_at == T0 + LEASE_S + 1
    assert rescued.last_error == "attempt 1 was interrupted (lease expired); retrying"
    assert await stored.lease(peek, job_id) == (None, None)
    assert not await backend.finish_job(old, owner="w1", status=JobStatus.SUCCEEDED, now=T0 + 32)
    assert (await get(backend, job_id)).status is JobStatus.RETRY
    assert await backend.deliveries_of_job(job_id) == []

    new = await claim_one(backend, now=T0 + 33, owner="w2")
    assert (new.id, new.attempt) == (job_id, 2)
    # the old worker stays fenced out though the job runs again
    assert not await backend.finish_job(old, owner="w1", status=JobStatus.FATAL, now=T0 + 34)
    assert await backend.finish_job(new, owner="w2", status=JobStatus.SUCCEEDED, now=T0 + 35)
    assert (await get(backend, job_id)).attempts == 2
    assert len(await backend.deliveries_of_job(job_id)) == 1


async def test_the_same_owner_reclaiming_fences_its_previous_attempt(backend: Backend) -> None:
    await submit(backend)
    old = await claim_one(backend, now=T0, owner="w1")
    await backend.rescue_jobs(now=T0 + 100, all_running=False)
    new = await claim_one(backend, now=T0 + 100, owner="w1")
    assert not await backend.finish_job(old, owner="w1", status=JobStatus.SUCCEEDED, now=T0 + 101)
    assert await backend.finish_job(new, owner="w1", status=JobStatus.SUCCEEDED, now=T0 + 101)


async def test_a_direct_delivery_is_created_sending_under_its_lease(
        backend: Backend, peek: Peek) -> None:
    job_id = (await submit(backend, webhook_url=HOOK)).job_id
    claimed = await claim_one(backend)
    body = b'{"any":"bytes the dispatcher built"}'
    direct = DirectDelivery("msg_0000direct", body, T0 + 61.25)
    assert await backend.finish_job(claimed, owner="w1", status=JobStatus.SUCCEEDED, now=T0 + 1,
                                    result_json="{}", direct=direct) is True
    [delivery] = await backend.deliveries_of_job(job_id)
    assert (delivery.id, delivery.status, delivery.body) == (direct.id, DeliveryStatus.SENDING,
                                                             body)
    assert delivery.next_attempt_at is None
    [(lease_expires_at,)] = await peek.rows(
        "SELECT lease_expires_at FROM deliveries WHERE id = ?", direct.id)
    assert lease_expires_at == T0 + 61.25
    # no claim takes it while its lease holds; the lease fences its outcome
    assert await backend.claim_deliveries(now=T0 + 2, limit=10, lease_s=30) == []


async def test_finishes_made_together_each_get_their_own_answer(
        backend: Backend, peek: Peek) -> None:
    ids = [(await submit(backend, webhook_url=HOOK if n % 2 else None,
                         payload=f'{{"n": {n}}}')).job_id for n in range(6)]
    jobs = sorted((await claim(backend, limit=10)).jobs, key=lambda j: ids.index(j.id))
    assert await backend.finish_job(jobs[1], owner="w1", status=JobStatus.SUCCEEDED, now=T0 + 1)
    statuses = [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FATAL, JobStatus.SUCCEEDED,
                JobStatus.CANCELLED, JobStatus.SUCCEEDED]
    answers = await asyncio.gather(*(
        backend.finish_job(job, owner="w1", status=status, now=T0 + 2,
                           result_json="{}" if status is JobStatus.SUCCEEDED else None,
                           error=None if status is JobStatus.SUCCEEDED else "boom")
        for job, status in zip(jobs, statuses, strict=True)))
    assert answers == [True, False, True, True, True, True]  # jobs[1] was finished already
    assert [(await get(backend, i)).status for i in ids] == statuses
    assert (await get(backend, ids[1])).completed_at == T0 + 1
    assert [len(await backend.deliveries_of_job(i)) for i in ids] == [0, 1, 0, 1, 0, 1]
    assert orjson.loads((await backend.deliveries_of_job(ids[3]))[0].body)["status"] == "succeeded"
    assert await stored.count(peek, "deliveries") == 3


# retry later, requeue, heartbeat, rescue -------------------------------------------------


async def test_retry_later(backend: Backend, peek: Peek) -> None:
    job_id = (await submit(backend, webhook_url=HOOK)).job_id
    claimed = await claim_one(backend, now=T0)
    assert await backend.retry_job_later(claimed, owner="w1", now=T0 + 1, next_run_at=T0 + 60,
                                         error="ValueError: boom")
    job = await get(backend, job_id)
    assert (job.status, job.next_run_at, job.last_error) == (JobStatus.RETRY, T0 + 60,
                                                             "ValueError: boom")
    assert (job.attempts, job.updated_at, job.completed_at) == (1, T0 + 1, None)
    assert orjson.loads(job.errors or "null") == [{"attempt": 1, "at": T0 + 1,
                                                   "error": "ValueError: boom"}]
    assert await stored.lease(peek, job_id) == (None, None)
    assert await backend.deliveries_of_job(job_id) == []  # not final: no webhook yet
    assert (await claim(backend, now=T0 + 59)).jobs == []
    again = await claim_one(backend, now=T0 + 60)
    assert again.attempt == 2 and again.due_at == T0 + 60
    assert await backend.finish_job(again, owner="w1", status=JobStatus.FATAL, now=T0 + 61,
                                    error="still boom")
    assert [e["attempt"] for e in orjson.loads((await get(backend, job_id)).errors or "[]")] == [
        1, 2]


async def test_requeue_puts_the_job_back_without_judging_it(backend: Backend, peek: Peek) -> None:
    job_id = (await submit(backend)).job_id
    claimed = await claim_one(backend, now=T0)
    assert await backend.requeue_job(claimed, owner="w1", now=T0 + 2, reason="shutting down")
    job = await get(backend, job_id)
    assert (job.status, job.next_run_at, job.last_error) == (JobStatus.QUEUED, T0 + 2,
                                                             "shutting down")
    assert job.errors is None
    assert await stored.lease(peek, job_id) == (None, None)
    assert (await claim_one(backend, now=T0 + 2)).id == job_id


async def test_extend_leases_only_for_the_owner_and_tells_of_cancels(
        backend: Backend, peek: Peek) -> None:
    mine = (await submit(backend)).job_id
    cancelled = (await submit(backend)).job_id
    theirs = (await submit(backend)).job_id
    waiting = (await submit(backend, run_at=T0 + 999)).job_id
    await claim(backend, now=T0, limit=2, owner="w1")
    await claim(backend, now=T0, limit=1, owner="w2")
    await backend.cancel_job(cancelled, tenant_id=None, now=T0 + 1)
    asked = await backend.extend_leases([mine, cancelled, theirs, waiting, "job_nope"],
                                        owner="w1", expires=T0 + 500)
    assert asked == [cancelled]
    assert await stored.lease(peek, mine) == ("w1", T0 + 500)
    assert await stored.lease(peek, cancelled) == ("w1", T0 + 500)
    assert await stored.lease(peek, theirs) == ("w2", T0 + LEASE_S)
    assert await stored.lease(peek, waiting) == (None, None)
    assert await backend.extend_leases([], owner="w1", expires=T0) == []
    # the extended leases outlive a rescue that takes the others
    assert (await backend.rescue_jobs(now=T0 + 100, all_running=False))["retry"] == 1
    assert (await get(backend, theirs)).status is JobStatus.RETRY
    assert (await get(backend, mine)).status is JobStatus.RUNNING


async def test_rescue_leaves_live_leases_alone(backend: Backend) -> None:
    a = (await submit(backend)).job_id
    b = (await submit(backend)).job_id
    await claim(backend, now=T0, limit=1, lease_s=10)
    await claim(backend, now=T0 + 5, limit=1, lease_s=10)
    assert await backend.rescue_jobs(now=T0 + 11, all_running=False) == {"retry": 1, "fatal": 0}
    assert (await get(backend, a)).status is JobStatus.RETRY
    assert (await get(backend, b)).status is JobStatus.RUNNING


async def test_rescue_at_startup_takes_every_running_job(backend: Backend, peek: Peek) -> None:
    retry_id = (await submit(backend, max_attempts=3)).job_id
    last_id = (await submit(backend, max_attempts=1, webhook_url=HOOK, payload='{"p": 1}')).job_id
    queued_id = (await submit(backend, run_at=T0 + 999)).job_id
    await claim(backend, now=T0, limit=10, lease_s=3600)  # leases far from expiry
    now = T0 + 20
    assert await backend.rescue_jobs(now=now, all_running=True) == {"retry": 1, "fatal": 1}

    retried = await get(backend, retry_id)
    assert (retried.status, retried.next_run_at, retried.completed_at) == (JobStatus.RETRY, now,
                                                                          None)
    assert retried.last_error == "attempt 1 was interrupted (process died); retrying"
    assert await stored.lease(peek, retry_id) == (None, None)

    fatal = await get(backend, last_id)
    assert (fatal.status, fatal.completed_at, fatal.next_run_at) == (JobStatus.FATAL, now, None)
    assert fatal.last_error == ("attempt 1 was interrupted (process died) and it was the last one")
    [delivery] = await backend.deliveries_of_job(last_id)
    assert delivery.body == build_body(job_id=last_id, job_type="noop", status="fatal",
                                       attempts=1, payload_json='{"p": 1}', completed_at=now,
                                       result_json=None, error=fatal.last_error)
    assert (delivery.status, delivery.next_attempt_at) == (DeliveryStatus.PENDING, now)

    assert (await get(backend, queued_id)).status is JobStatus.QUEUED
    assert await backend.deliveries_of_job(retry_id) == []
    assert (await claim_one(backend, now=now)).id == retry_id
    assert await backend.rescue_jobs(now=now, all_running=False) == {"retry": 0, "fatal": 0}


async def test_completed_at_is_set_exactly_while_a_job_is_finished(
        backend: Backend, peek: Peek) -> None:
    """Retention and "finished since" read completed_at: it must mark exactly the
    finished jobs, through every transition in and out of a final status."""
    async def check() -> None:
        for status, completed in await peek.rows("SELECT status, completed_at FROM jobs"):
            assert (completed is not None) == (status in ("succeeded", "fatal", "cancelled"))

    job_id = (await submit(backend, max_attempts=2)).job_id
    await check()
    first = await claim_one(backend)
    await check()
    assert await backend.retry_job_later(first, owner="w1", now=T0 + 1, next_run_at=T0 + 2,
                                         error="boom")
    await check()
    second = await claim_one(backend, now=T0 + 2)
    assert await backend.requeue_job(second, owner="w1", now=T0 + 3, reason="shutdown")
    await check()
    third = await claim_one(backend, now=T0 + 3)
    assert await backend.finish_job(third, owner="w1", status=JobStatus.FATAL, now=T0 + 4,
                                    error="boom")
    await check()
    await backend.retry_job(job_id, tenant_id=None, now=T0 + 5)
    await check()
    await claim_one(backend, now=T0 + 5)
    await backend.rescue_jobs(now=T0 + 6, all_running=True)
    await check()
    other = (await submit(backend)).job_id
    await backend.cancel_job(other, tenant_id=None, now=T0 + 7)
    await check()
    last = (await submit(backend)).job_id
    claimed: ClaimedJob = await claim_one(backend, now=T0 + 100)
    assert claimed.id == last
    assert await backend.finish_job(claimed, owner="w1", status=JobStatus.SUCCEEDED, now=T0 + 101)
    await check()
    assert [(await get(backend, i)).status for i in (job_id, other, last)] == [
        JobStatus.FATAL, JobStatus.CANCELLED, JobStatus.SUCCEEDED]
