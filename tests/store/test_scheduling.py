"""Engine verbs: claim, finish, retry, requeue, heartbeat, rescue. Time is always an argument."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from jobd.clock import to_rfc3339
from jobd.models import ClaimedJob, IdempotentResult, Job, JobStatus, NewJob, NewTenant
from jobd.store.sqlite import deliveries as store_deliveries
from jobd.store.sqlite import jobs as store_jobs
from jobd.store.sqlite import scheduling
from jobd.store.sqlite.scheduling import ClaimRound
from tests.conftest import T0
from tests.store.conftest import Transactions

NewJobFactory = Callable[..., NewJob]
Submit = Callable[..., IdempotentResult]
HOOK = "https://client.example/hook"
LEASE_S = 30.0


@pytest.fixture(autouse=True)
def acme(new_tenant: Callable[..., NewTenant]) -> NewTenant:
    return new_tenant("acme")


def claim(db: Transactions, *, now: float = T0, limit: int = 10, owner: str = "w1",
          lease_s: float = LEASE_S, after_tenant: str | None = None) -> ClaimRound:
    return db.write(scheduling.claim_due_jobs, now=now, limit=limit, owner=owner,
                    lease_s=lease_s, after_tenant=after_tenant)


def claim_one(db: Transactions, **kwargs: Any) -> ClaimedJob:
    jobs = claim(db, limit=1, **kwargs).jobs
    assert len(jobs) == 1, jobs
    return jobs[0]


def get(db: Transactions, job_id: str) -> Job:
    return db.read(store_jobs.get_job, job_id)


def lease(db: Transactions, job_id: str) -> tuple[str | None, float | None]:
    row = db.read(lambda c: c.execute(
        "SELECT lease_owner, lease_expires_at FROM jobs WHERE id = ?", (job_id,)).fetchone())
    return row[0], row[1]


def running_of(db: Transactions, tenant_id: str) -> int:
    return int(db.read(lambda c: c.execute(
        "SELECT count(*) FROM jobs WHERE tenant_id = ? AND status = 'running'",
        (tenant_id,)).fetchone()[0]))


def deliveries(db: Transactions, job_id: str) -> list[Any]:
    return db.read(store_deliveries.deliveries_of_job, job_id)


def snapshot(db: Transactions) -> list[tuple[Any, ...]]:
    return db.read(lambda c: [tuple(r) for r in c.execute(
        "SELECT * FROM jobs ORDER BY seq").fetchall()] + [tuple(r) for r in c.execute(
            "SELECT * FROM deliveries ORDER BY seq").fetchall()])


# claim ------------------------------------------------------------------------------


def test_claim_marks_the_job_running(db: Transactions, submit: Submit) -> None:
    job_id = submit(type="email", payload='{"to": "x"}', max_attempts=4,
                    timeout_seconds=9.0).job_id
    now = T0 + 3
    round_ = claim(db, now=now, owner="daemon-1")
    assert round_.jobs == [ClaimedJob(id=job_id, tenant_id="acme", type="email",
                                      payload='{"to": "x"}', attempt=1, max_attempts=4,
                                      timeout_seconds=9.0, due_at=T0, claimed_at=now)]
    assert round_.last_tenant == "acme"
    job = get(db, job_id)
    assert job.status is JobStatus.RUNNING
    assert job.attempts == 1
    assert job.started_at == now
    assert job.updated_at == now
    assert job.next_run_at is None
    assert lease(db, job_id) == ("daemon-1", now + LEASE_S)


def test_a_running_job_is_not_claimed_again(db: Transactions, submit: Submit) -> None:
    submit()
    claim_one(db)
    assert claim(db, now=T0 + 1).jobs == []


def test_future_job_waits_until_due(db: Transactions, submit: Submit) -> None:
    job_id = submit(run_at=T0 + 10).job_id
    assert claim(db, now=T0).jobs == []
    assert claim(db, now=T0 + 9.999).jobs == []
    assert [j.id for j in claim(db, now=T0 + 10).jobs] == [job_id]


def test_claim_with_no_room_claims_nothing(db: Transactions, submit: Submit) -> None:
    submit()
    assert claim(db, limit=0).jobs == []
    assert claim(db, limit=1).jobs != []


def test_higher_priority_first_then_earlier_due(db: Transactions, submit: Submit) -> None:
    low_early = submit(priority=0, run_at=T0 - 100).job_id
    high_late = submit(priority=5, run_at=T0 - 1).job_id
    high_early = submit(priority=5, run_at=T0 - 50).job_id
    mid = submit(priority=1, run_at=T0 - 10).job_id
    low_late = submit(priority=0, run_at=T0 - 5).job_id
    negative = submit(priority=-3, run_at=T0 - 1000).job_id
    order = [claim_one(db, now=T0).id for _ in range(6)]
    assert order == [high_early, high_late, mid, low_early, low_late, negative]


def test_one_round_takes_a_tenants_jobs_in_priority_order(db: Transactions, submit: Submit) -> None:
    ids = [submit(priority=p).job_id for p in (1, 3, 2)]
    assert [j.id for j in claim(db, limit=3).jobs] == [ids[1], ids[2], ids[0]]


# fairness ---------------------------------------------------------------------------


def _flood(db: Transactions, new_job: NewJobFactory, tenant_id: str, n: int) -> None:
    jobs = [new_job(tenant_id, key=f"{tenant_id}-{i}") for i in range(n)]

    def insert_all(conn: sqlite3.Connection) -> None:
        for job in jobs:
            store_jobs.insert_job(conn, job, body_hash=b"h", now=T0,
                                  idempotency_ttl_s=3600.0)
    db.write(insert_all)


@pytest.fixture
def big_and_small(db: Transactions, new_tenant: Callable[..., NewTenant],
                  new_job: NewJobFactory, submit: Submit) -> str:
    new_tenant("big")
    new_tenant("small")
    _flood(db, new_job, "big", 5_000)
    return submit(tenant_id="small", now=T0 + 1, run_at=T0 + 1).job_id


def test_a_single_job_is_not_stuck_behind_a_flood(db: Transactions, big_and_small: str) -> None:
    round_ = claim(db, now=T0 + 2, limit=4)
    assert len(round_.jobs) == 4
    assert big_and_small in [j.id for j in round_.jobs]
    assert Counter(j.tenant_id for j in round_.jobs) == {"big": 3, "small": 1}


def test_rotation_reaches_the_small_tenant_within_two_rounds(db: Transactions,
                                                             big_and_small: str) -> None:
    first = claim(db, now=T0 + 2, limit=1)
    seen = [j.id for j in first.jobs]
    second = claim(db, now=T0 + 2, limit=1, after_tenant=first.last_tenant)
    seen += [j.id for j in second.jobs]
    assert big_and_small in seen


def test_rotation_cycles_through_tenants(db: Transactions, submit: Submit,
                                         new_tenant: Callable[..., NewTenant]) -> None:
    for tenant in ("b", "c"):
        new_tenant(tenant)
    for tenant in ("acme", "b", "c"):
        for _ in range(3):
            submit(tenant_id=tenant)
    after: str | None = None
    order = []
    for _ in range(9):
        round_ = claim(db, limit=1, after_tenant=after)
        order += [j.tenant_id for j in round_.jobs]
        after = round_.last_tenant
    assert order == ["acme", "b", "c"] * 3


def test_tenants_with_nothing_due_do_not_use_up_the_round(
        db: Transactions, submit: Submit, new_tenant: Callable[..., NewTenant]) -> None:
    for tenant in ("a1", "a2", "a3"):
        new_tenant(tenant)
        submit(tenant_id=tenant, run_at=T0 + 3600)  # scheduled for later
    new_tenant("zz")
    due = submit(tenant_id="zz").job_id
    assert [j.id for j in claim(db, now=T0, limit=2).jobs] == [due]


def test_tenants_at_their_cap_do_not_use_up_the_round(
        db: Transactions, submit: Submit, new_tenant: Callable[..., NewTenant]) -> None:
    new_tenant("capped", max_concurrency=1)
    submit(tenant_id="capped")
    submit(tenant_id="capped")
    claim(db, limit=1, after_tenant="acme")           # capped now runs its one allowed job
    new_tenant("other")
    due = submit(tenant_id="other").job_id
    assert [j.id for j in claim(db, now=T0, limit=1).jobs] == [due]


# max_concurrency --------------------------------------------------------------------


def test_max_concurrency_caps_running_jobs(db: Transactions, submit: Submit,
                                           new_tenant: Callable[..., NewTenant]) -> None:
    new_tenant("capped", max_concurrency=2)
    for _ in range(5):
        submit(tenant_id="capped")
    free = submit(tenant_id="acme").job_id

    first = claim(db, limit=10)
    assert Counter(j.tenant_id for j in first.jobs) == {"capped": 2, "acme": 1}
    assert free in [j.id for j in first.jobs]
    for step in range(3):
        assert claim(db, now=T0 + step, limit=10).jobs == []
        assert running_of(db, "capped") == 2

    done = next(j for j in first.jobs if j.tenant_id == "capped")
    assert db.write(scheduling.finish_job, done, owner="w1", status=JobStatus.SUCCEEDED,
                    now=T0 + 5)
    refill = claim(db, now=T0 + 5, limit=10)
    assert [j.tenant_id for j in refill.jobs] == ["capped"]
    assert running_of(db, "capped") == 2
    assert claim(db, now=T0 + 6, limit=10).jobs == []


def test_max_concurrency_counts_jobs_claimed_in_other_rounds(
        db: Transactions, submit: Submit, new_tenant: Callable[..., NewTenant]) -> None:
    new_tenant("capped", max_concurrency=2)
    for _ in range(6):
        submit(tenant_id="capped")
    seen = 0
    for step in range(6):
        seen += len(claim(db, now=T0 + step, limit=1, owner=f"w{step}").jobs)
        assert running_of(db, "capped") <= 2
    assert seen == 2


# fencing ----------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "owner"), [({"attempt": 2}, "w1"), ({"attempt": 0}, "w1"),
                                               ({}, "intruder")])
def test_finish_with_wrong_attempt_or_owner_changes_nothing(
        db: Transactions, submit: Submit, change: dict[str, Any], owner: str) -> None:
    submit(webhook_url=HOOK)
    claimed = claim_one(db)
    before = snapshot(db)
    stale = dataclasses.replace(claimed, **change)
    for status in (JobStatus.SUCCEEDED, JobStatus.FATAL, JobStatus.CANCELLED):
        assert db.write(scheduling.finish_job, stale, owner=owner, status=status,
                        now=T0 + 1) is False
    assert db.write(scheduling.schedule_retry, stale, owner=owner, now=T0 + 1,
                    next_run_at=T0 + 9, error="x") is False
    assert db.write(scheduling.requeue_job, stale, owner=owner, now=T0 + 1,
                    reason="x") is False
    assert snapshot(db) == before


def test_a_worker_whose_lease_expired_is_fenced_out(db: Transactions, submit: Submit) -> None:
    job_id = submit(webhook_url=HOOK).job_id
    old = claim_one(db, now=T0, owner="w1")
    assert db.write(scheduling.rescue_orphans, now=T0 + LEASE_S, all_running=False) == {
        "retry": 0, "fatal": 0}                          # not yet: expires *after* the lease
    assert db.write(scheduling.rescue_orphans, now=T0 + LEASE_S + 1, all_running=False) == {
        "retry": 1, "fatal": 0}
    rescued = get(db, job_id)
    assert rescued.status is JobStatus.RETRY
    assert rescued.next_run_at == T0 + LEASE_S + 1
    assert "lease expired" in (rescued.last_error or "")
    assert lease(db, job_id) == (None, None)

    assert db.write(scheduling.finish_job, old, owner="w1", status=JobStatus.SUCCEEDED,
                    now=T0 + 32) is False
    assert get(db, job_id).status is JobStatus.RETRY
    assert deliveries(db, job_id) == []

    new = claim_one(db, now=T0 + 33, owner="w2")
    assert new.id == job_id
    assert new.attempt == 2
    # the old worker is fenced out even though the job is running again
    assert db.write(scheduling.finish_job, old, owner="w1", status=JobStatus.FATAL,
                    now=T0 + 34) is False
    assert db.write(scheduling.finish_job, new, owner="w2", status=JobStatus.SUCCEEDED,
                    now=T0 + 35) is True
    assert get(db, job_id).attempts == 2


def test_same_owner_reclaiming_fences_the_previous_attempt(db: Transactions, submit: Submit) -> None:
    submit()
    old = claim_one(db, now=T0, owner="w1")
    db.write(scheduling.rescue_orphans, now=T0 + 100, all_running=False)
    new = claim_one(db, now=T0 + 100, owner="w1")
    assert db.write(scheduling.finish_job, old, owner="w1", status=JobStatus.SUCCEEDED,
                    now=T0 + 101) is False
    assert db.write(scheduling.finish_job, new, owner="w1", status=JobStatus.SUCCEEDED,
                    now=T0 + 101) is True


def test_lease_rescue_leaves_live_leases_alone(db: Transactions, submit: Submit) -> None:
    a = submit().job_id
    b = submit().job_id
    claim(db, now=T0, limit=1, lease_s=10)
    claim(db, now=T0 + 5, limit=1, lease_s=10)
    assert db.write(scheduling.rescue_orphans, now=T0 + 11, all_running=False)["retry"] == 1
    assert get(db, a).status is JobStatus.RETRY
    assert get(db, b).status is JobStatus.RUNNING


def test_startup_rescue_takes_every_running_job(db: Transactions, submit: Submit) -> None:
    retry_id = submit(max_attempts=3).job_id
    last_id = submit(max_attempts=1, webhook_url=HOOK, payload='{"p": 1}').job_id
    queued_id = submit(run_at=T0 + 999).job_id
    claim(db, now=T0, limit=10, lease_s=3600)  # leases far from expiry

    now = T0 + 20
    counts = db.write(scheduling.rescue_orphans, now=now, all_running=True)
    assert counts == {"retry": 1, "fatal": 1}

    retried = get(db, retry_id)
    assert retried.status is JobStatus.RETRY
    assert retried.next_run_at == now
    assert "interrupted" in (retried.last_error or "")
    assert lease(db, retry_id) == (None, None)

    fatal = get(db, last_id)
    assert fatal.status is JobStatus.FATAL
    assert fatal.completed_at == now
    assert fatal.next_run_at is None
    assert "interrupted" in (fatal.last_error or "")
    [delivery] = deliveries(db, last_id)
    body = orjson.loads(delivery.body)
    assert (body["jobId"], body["status"], body["attempts"]) == (last_id, "fatal", 1)
    assert body["payload"] == {"p": 1}
    assert "interrupted" in body.get("error", "")

    assert get(db, queued_id).status is JobStatus.QUEUED
    assert deliveries(db, retry_id) == []
    assert claim_one(db, now=now).id == retry_id


def test_rescue_with_nothing_running(db: Transactions, submit: Submit) -> None:
    submit()
    for all_running in (True, False):
        assert db.write(scheduling.rescue_orphans, now=T0, all_running=all_running) == {
            "retry": 0, "fatal": 0}


# retry, requeue, heartbeat ----------------------------------------------------------


def test_schedule_retry(db: Transactions, submit: Submit) -> None:
    job_id = submit(webhook_url=HOOK).job_id
    claimed = claim_one(db, now=T0)
    assert db.write(scheduling.schedule_retry, claimed, owner="w1", now=T0 + 1,
                    next_run_at=T0 + 60, error="ValueError: boom") is True
    job = get(db, job_id)
    assert job.status is JobStatus.RETRY
    assert job.next_run_at == T0 + 60
    assert job.last_error == "ValueError: boom"
    assert job.attempts == 1
    assert job.updated_at == T0 + 1
    assert lease(db, job_id) == (None, None)
    assert deliveries(db, job_id) == []   # not final: no webhook yet

    assert claim(db, now=T0 + 59).jobs == []
    again = claim_one(db, now=T0 + 60)
    assert again.attempt == 2


def test_requeue_puts_the_job_back(db: Transactions, submit: Submit) -> None:
    job_id = submit().job_id
    claimed = claim_one(db, now=T0)
    assert db.write(scheduling.requeue_job, claimed, owner="w1", now=T0 + 2,
                    reason="shutting down") is True
    job = get(db, job_id)
    assert job.status is JobStatus.QUEUED
    assert job.next_run_at == T0 + 2
    assert job.last_error == "shutting down"
    assert lease(db, job_id) == (None, None)
    assert claim_one(db, now=T0 + 2).id == job_id


def test_extend_leases_only_for_the_owner(db: Transactions, submit: Submit) -> None:
    mine = submit().job_id
    cancelled = submit().job_id
    theirs = submit().job_id
    waiting = submit(run_at=T0 + 999).job_id
    claim(db, now=T0, limit=2, owner="w1")
    claim(db, now=T0, limit=1, owner="w2")
    db.write(store_jobs.cancel_job, cancelled, tenant_id=None, now=T0 + 1)

    asked = db.write(scheduling.extend_leases, [mine, cancelled, theirs, waiting, "job_nope"],
                     owner="w1", expires=T0 + 500)
    assert asked == [cancelled]
    assert lease(db, mine) == ("w1", T0 + 500)
    assert lease(db, cancelled) == ("w1", T0 + 500)
    assert lease(db, theirs) == ("w2", T0 + LEASE_S)
    assert lease(db, waiting) == (None, None)
    # the extended leases survive a rescue that would have taken them
    assert db.write(scheduling.rescue_orphans, now=T0 + 100, all_running=False)["retry"] == 1
    assert get(db, theirs).status is JobStatus.RETRY
    assert get(db, mine).status is JobStatus.RUNNING


def test_extend_no_leases(db: Transactions) -> None:
    assert db.write(scheduling.extend_leases, [], owner="w1", expires=T0) == []


# finishing writes the webhook -------------------------------------------------------


def test_success_writes_exactly_one_delivery(db: Transactions, submit: Submit) -> None:
    job_id = submit(webhook_url=HOOK, payload='{"to": "u@example.com"}', type="email").job_id
    claimed = claim_one(db, now=T0)
    assert db.write(scheduling.finish_job, claimed, owner="w1", status=JobStatus.SUCCEEDED,
                    now=T0 + 7, result_json='{"ok": true}') is True
    job = get(db, job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert job.completed_at == T0 + 7
    assert job.result == '{"ok": true}'
    assert lease(db, job_id) == (None, None)

    [delivery] = deliveries(db, job_id)
    assert delivery.url == HOOK
    assert delivery.status.value == "pending"
    assert delivery.attempts == 0
    assert delivery.next_attempt_at == T0 + 7
    assert delivery.id.startswith("msg_")
    body = orjson.loads(delivery.body)
    assert body["jobId"] == job_id
    assert body["status"] == "succeeded"
    assert body["attempts"] == 1
    assert body["payload"] == {"to": "u@example.com"}
    assert body["completedAt"] == to_rfc3339(T0 + 7)
    assert body["result"] == {"ok": True}
    assert "error" not in body
    # a second finish is fenced out and writes nothing more
    assert db.write(scheduling.finish_job, claimed, owner="w1", status=JobStatus.SUCCEEDED,
                    now=T0 + 8) is False
    assert len(deliveries(db, job_id)) == 1


def _finish_each(db: Transactions, jobs: list[ClaimedJob], *, now: float) -> None:
    for job in jobs:
        db.write(scheduling.finish_job, job, owner="w1", status=JobStatus.SUCCEEDED, now=now,
                 result_json='{"ok": true}')


def _finish_many(db: Transactions, jobs: list[ClaimedJob], *, now: float,
                 statuses: list[JobStatus] | None = None) -> int:
    statuses = statuses or [JobStatus.SUCCEEDED] * len(jobs)
    return db.write(scheduling.finish_jobs, [
        scheduling.Finish(job, status, now, '{"ok": true}' if status is JobStatus.SUCCEEDED
                          else None, None if status is JobStatus.SUCCEEDED else "boom")
        for job, status in zip(jobs, statuses, strict=True)], owner="w1")


def test_finishing_many_writes_what_finishing_each_writes(db: Transactions, submit: Submit) -> None:
    """The batched path (one executemany for jobs, one for webhooks) and the one-by-one
    path leave the same rows behind, webhook bodies included."""
    def run(finish: Callable[..., Any]) -> list[tuple[Any, ...]]:
        ids = [submit(webhook_url=HOOK if i % 2 else None, payload=f'{{"n": {i}}}').job_id
               for i in range(6)]
        finish(db, claim(db, now=T0).jobs, now=T0 + 5)
        return [(get(db, i).status, get(db, i).result, get(db, i).completed_at,
                 [orjson.loads(d.body) | {"jobId": "-"} for d in deliveries(db, i)]) for i in ids]

    one_by_one = run(_finish_each)
    batched = run(_finish_many)
    assert batched == one_by_one
    assert sum(len(r[3]) for r in batched) == 3


def test_finishing_many_with_one_fenced_out_finishes_the_others(db: Transactions,
                                                               submit: Submit) -> None:
    ids = [submit(webhook_url=HOOK).job_id for _ in range(4)]
    jobs = claim(db, now=T0).jobs
    _finish_each(db, jobs[1:2], now=T0 + 1)              # finished already: fenced out below
    assert _finish_many(db, jobs, now=T0 + 2,
                        statuses=[JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FATAL,
                                  JobStatus.SUCCEEDED]) == 3
    assert [len(deliveries(db, i)) for i in ids] == [1, 1, 1, 1]   # no second webhook
    assert get(db, ids[1]).completed_at == T0 + 1
    assert get(db, ids[2]).status is JobStatus.FATAL
    assert orjson.loads(deliveries(db, ids[2])[0].body)["error"] == "boom"


def test_fatal_delivery_carries_the_error(db: Transactions, submit: Submit) -> None:
    job_id = submit(webhook_url=HOOK).job_id
    claimed = claim_one(db, now=T0)
    db.write(scheduling.finish_job, claimed, owner="w1", status=JobStatus.FATAL, now=T0 + 1,
             error="KeyError: 'to'")
    job = get(db, job_id)
    assert job.last_error == "KeyError: 'to'"
    body = orjson.loads(deliveries(db, job_id)[0].body)
    assert body["status"] == "fatal"
    assert body["error"] == "KeyError: 'to'"


def test_finish_without_webhook_writes_no_delivery(db: Transactions, submit: Submit) -> None:
    job_id = submit().job_id
    claimed = claim_one(db)
    assert db.write(scheduling.finish_job, claimed, owner="w1", status=JobStatus.SUCCEEDED,
                    now=T0 + 1)
    assert deliveries(db, job_id) == []


def test_status_and_delivery_commit_or_roll_back_together(db: Transactions, submit: Submit) -> None:
    job_id = submit(webhook_url=HOOK).job_id
    claimed = claim_one(db)

    class Crash(Exception):
        pass

    def finish_then_crash(conn: sqlite3.Connection) -> None:
        assert scheduling.finish_job(conn, claimed, owner="w1", status=JobStatus.SUCCEEDED,
                                     now=T0 + 1)
        # inside the transaction both are there ...
        assert conn.execute("SELECT status FROM jobs WHERE id = ?",
                            (job_id,)).fetchone()[0] == "succeeded"
        assert conn.execute("SELECT count(*) FROM deliveries WHERE job_id = ?",
                            (job_id,)).fetchone()[0] == 1
        raise Crash

    with pytest.raises(Crash):
        db.write(finish_then_crash)
    # ... and after the rollback neither is
    assert get(db, job_id).status is JobStatus.RUNNING
    assert deliveries(db, job_id) == []
    # the worker can still finish it for real
    assert db.write(scheduling.finish_job, claimed, owner="w1", status=JobStatus.SUCCEEDED,
                    now=T0 + 2)
    assert len(deliveries(db, job_id)) == 1


def test_completed_at_is_set_exactly_while_a_job_is_finished(db: Transactions,
                                                             submit: Submit) -> None:
    """Retention's index (jobs_finished) holds the rows with a completed_at: that must
    be the finished jobs, through every transition in and out of a final status."""
    def check() -> None:
        rows = db.read(lambda c: c.execute(
            "SELECT status, completed_at IS NOT NULL FROM jobs").fetchall())
        for status, completed in rows:
            assert completed == (status in ("succeeded", "fatal", "cancelled")), rows

    job_id = submit(max_attempts=2).job_id
    check()
    first = claim_one(db)                                             # running
    check()
    assert db.write(scheduling.schedule_retry, first, owner="w1", now=T0 + 1,
                    next_run_at=T0 + 2, error="boom")                 # retry
    check()
    second = claim_one(db, now=T0 + 2)
    assert db.write(scheduling.requeue_job, second, owner="w1", now=T0 + 3,
                    reason="shutdown")                                # queued again
    check()
    third = claim_one(db, now=T0 + 3)
    assert db.write(scheduling.finish_job, third, owner="w1", status=JobStatus.FATAL,
                    now=T0 + 4, error="boom")                         # fatal
    check()
    db.write(store_jobs.retry_job, job_id, tenant_id=None, now=T0 + 5)  # queued
    check()
    claim_one(db, now=T0 + 5)
    db.write(scheduling.rescue_orphans, now=T0 + 6, all_running=True)  # orphan: fatal or retry
    check()
    other = submit().job_id
    db.write(store_jobs.cancel_job, other, tenant_id=None, now=T0 + 7)  # cancelled
    check()
    last = submit().job_id
    db.write(scheduling.finish_jobs, [scheduling.Finish(claim_one(db, now=T0 + 100),
                                                        JobStatus.SUCCEEDED, T0 + 101)],
             owner="w1")                                              # succeeded, batched
    check()
    assert [get(db, i).status for i in (job_id, other, last)] == [
        JobStatus.FATAL, JobStatus.CANCELLED, JobStatus.SUCCEEDED]
