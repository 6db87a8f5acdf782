"""Job transactions for the API and CLI: insert (idempotently), cancel, retry, list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from jobd.clock import to_rfc3339
from jobd.credentials import hash_api_key
from jobd.errors import IdempotencyConflict, InvalidState, NotFound, Unauthorized
from jobd.models import ClaimedJob, IdempotentResult, Job, JobStatus, NewJob, NewTenant
from jobd.store.sqlite import deliveries as store_deliveries
from jobd.store.sqlite import jobs as store_jobs
from jobd.store.sqlite import scheduling
from tests.conftest import T0
from tests.store.conftest import Transactions

NewJobFactory = Callable[..., NewJob]
Submit = Callable[..., IdempotentResult]
HOOK = "https://client.example/hook"
TTL_S = 24 * 3600.0  # what the `submit` fixture passes as idempotency_ttl_s


@pytest.fixture(autouse=True)
def acme(new_tenant: Callable[..., NewTenant]) -> NewTenant:
    return new_tenant("acme")


def get(db: Transactions, job_id: str) -> Job:
    return db.read(store_jobs.get_job, job_id)


def count(db: Transactions, table: str) -> int:
    return int(db.read(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]))


def claim_one(db: Transactions, *, now: float = T0, owner: str = "w1") -> ClaimedJob:
    claimed = db.write(scheduling.claim_due_jobs, now=now, limit=1, owner=owner, lease_s=30.0)
    assert len(claimed.jobs) == 1
    return claimed.jobs[0]


def deliveries(db: Transactions, job_id: str) -> list[Any]:
    return db.read(store_deliveries.deliveries_of_job, job_id)


# insert -----------------------------------------------------------------------------


def test_insert_creates_a_queued_job(db: Transactions, submit: Submit,
                                     new_job: NewJobFactory) -> None:
    job = new_job(type="email", payload='{"to": "a@b.c"}', priority=3, max_attempts=7,
                  timeout_seconds=12.5, run_at=T0 + 60, webhook_url=HOOK)
    created = submit(job, now=T0)
    assert not created.replayed
    assert created.job_id.startswith("job_")
    assert created.created_at == T0
    stored = get(db, created.job_id)
    assert stored.status is JobStatus.QUEUED
    assert stored.tenant_id == "acme"
    assert (stored.type, stored.payload) == ("email", '{"to": "a@b.c"}')
    assert (stored.priority, stored.max_attempts, stored.timeout_seconds) == (3, 7, 12.5)
    assert stored.run_at == T0 + 60
    assert stored.next_run_at == stored.run_at
    assert stored.attempts == 0
    assert stored.webhook_url == HOOK
    assert stored.created_at == stored.updated_at == T0
    assert stored.started_at is None and stored.completed_at is None
    assert not stored.cancel_requested
    assert stored.seq > 0


def test_job_ids_are_unique(submit: Submit) -> None:
    ids = {submit().job_id for _ in range(50)}
    assert len(ids) == 50


def test_replay_returns_the_same_job_without_a_second_row(db: Transactions, submit: Submit,
                                                         new_job: NewJobFactory) -> None:
    job = new_job(key="same")
    first = submit(job, now=T0)
    again = submit(job, now=T0 + 10)
    assert again.replayed
    assert again.job_id == first.job_id
    assert again.created_at == first.created_at == T0  # not the replay's time
    assert count(db, "jobs") == 1
    assert holder_of(db, "same") == first.job_id


def holder_of(db: Transactions, key: str) -> str | None:
    rows = db.read(lambda c: c.execute("SELECT id FROM jobs WHERE idempotency_key = ?",
                                       (key,)).fetchall())
    assert len(rows) <= 1
    return rows[0][0] if rows else None


def creation(job: NewJob, *, now: float = T0, body_hash: bytes = b"h",
             api_key_hash: str | None = None) -> store_jobs.Creation:
    return store_jobs.Creation(job, body_hash, now, api_key_hash)


def insert_many(db: Transactions, items: list[store_jobs.Creation]) -> list[tuple[bool, Any]]:
    return db.write(store_jobs.insert_jobs, items, idempotency_ttl_s=TTL_S)


def test_insert_jobs_creates_a_batch_in_order(db: Transactions, new_job: NewJobFactory,
                                              acme: NewTenant) -> None:
    jobs = [new_job(key=f"b{i}") for i in range(20)]
    outcomes = insert_many(db, [creation(j, api_key_hash=hash_api_key(acme.api_key)) for j in jobs])
    assert all(ok and not r.replayed for ok, r in outcomes)
    assert [holder_of(db, f"b{i}") for i in range(20)] == [r.job_id for _, r in outcomes]
    prefixes = [r.job_id[:11] for _, r in outcomes]  # job_ + 7 characters (42 bits of ms)
    assert prefixes == sorted(prefixes)


def test_insert_jobs_answers_each_item_on_its_own(db: Transactions, submit: Submit,
                                                  new_job: NewJobFactory,
                                                  acme: NewTenant) -> None:
    earlier = submit(new_job(key="used"), body_hash=b"h")
    outcomes = insert_many(db, [
        creation(new_job(key="fresh")),
        creation(new_job(key="used"), body_hash=b"h"),            # replay
        creation(new_job(key="used"), body_hash=b"other"),        # 409
        creation(new_job(key="twice")),
        creation(new_job(key="twice")),                           # same key in one batch
        creation(new_job(key="dead-key"), api_key_hash="not-the-key"),
    ])
    (ok0, fresh), (ok1, replay), (ok2, conflict), (ok3, twice), (ok4, again), (ok5, denied) = outcomes
    assert ok0 and not fresh.replayed and holder_of(db, "fresh") == fresh.job_id
    assert ok1 and replay.replayed and replay.job_id == earlier.job_id
    assert not ok2 and isinstance(conflict, IdempotencyConflict)
    assert ok3 and ok4 and again.replayed and again.job_id == twice.job_id
    assert not ok5 and isinstance(denied, Unauthorized)
    assert holder_of(db, "dead-key") is None
    assert count(db, "jobs") == 3


def test_same_key_different_body_conflicts(db: Transactions, submit: Submit,
                                           new_job: NewJobFactory) -> None:
    submit(new_job(key="same"), body_hash=b"first")
    with pytest.raises(IdempotencyConflict, match="same"):
        submit(new_job(key="same", payload='{"n": 2}'), body_hash=b"second", now=T0 + 1)
    assert count(db, "jobs") == 1


def test_expired_key_creates_a_new_job(db: Transactions, submit: Submit,
                                       new_job: NewJobFactory) -> None:
    job = new_job(key="old")
    first = submit(job, now=T0)
    still = submit(job, now=T0 + TTL_S - 1)
    assert still.replayed and still.job_id == first.job_id
    later = submit(job, now=T0 + TTL_S)
    assert not later.replayed
    assert later.job_id != first.job_id
    assert count(db, "jobs") == 2
    assert holder_of(db, "old") == later.job_id  # the old job let go of the expired key
    # ... and the new entry now answers for the key
    assert submit(job, now=T0 + TTL_S + 1).job_id == later.job_id


def test_expired_key_with_a_different_body_is_not_a_conflict(submit: Submit,
                                                             new_job: NewJobFactory) -> None:
    submit(new_job(key="k"), body_hash=b"a")
    fresh = submit(new_job(key="k"), body_hash=b"b", now=T0 + TTL_S + 1)
    assert not fresh.replayed


def test_keys_are_per_tenant(db: Transactions, submit: Submit, new_job: NewJobFactory,
                             new_tenant: Callable[..., NewTenant]) -> None:
    new_tenant("globex")
    a = submit(new_job("acme", key="k"))
    b = submit(new_job("globex", key="k"), body_hash=b"different")
    assert not b.replayed
    assert a.job_id != b.job_id
    assert count(db, "jobs") == 2


def test_find_job_is_scoped_to_the_tenant(db: Transactions, submit: Submit,
                                          new_tenant: Callable[..., NewTenant]) -> None:
    new_tenant("globex")
    job_id = submit().job_id
    assert db.read(store_jobs.find_job, job_id, "acme") is not None
    assert db.read(store_jobs.find_job, job_id, "globex") is None
    assert db.read(store_jobs.find_job, "job_nope") is None
    with pytest.raises(NotFound):
        db.read(store_jobs.get_job, job_id, "globex")


# cancel -----------------------------------------------------------------------------


def test_cancel_queued_with_webhook_writes_a_delivery(db: Transactions, submit: Submit) -> None:
    job_id = submit(webhook_url=HOOK, payload='{"x": 1}').job_id
    cancelled = db.write(store_jobs.cancel_job, job_id, tenant_id="acme", now=T0 + 5)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.completed_at == T0 + 5
    assert cancelled.next_run_at is None
    [delivery] = deliveries(db, job_id)
    assert delivery.url == HOOK
    assert delivery.tenant_id == "acme"
    assert delivery.status.value == "pending"
    assert delivery.next_attempt_at == T0 + 5
    body = orjson.loads(delivery.body)
    assert body["jobId"] == job_id
    assert body["status"] == "cancelled"
    assert body["attempts"] == 0
    assert body["payload"] == {"x": 1}
    assert body["completedAt"] == to_rfc3339(T0 + 5)


def test_cancel_queued_without_webhook_writes_no_delivery(db: Transactions, submit: Submit) -> None:
    job_id = submit().job_id
    assert db.write(store_jobs.cancel_job, job_id, tenant_id=None,
                    now=T0).status is JobStatus.CANCELLED
    assert deliveries(db, job_id) == []
    assert count(db, "deliveries") == 0


def test_cancel_retry_waiting_job(db: Transactions, submit: Submit) -> None:
    job_id = submit().job_id
    claimed = claim_one(db)
    assert db.write(scheduling.schedule_retry, claimed, owner="w1", now=T0 + 1,
                    next_run_at=T0 + 100, error="boom")
    cancelled = db.write(store_jobs.cancel_job, job_id, tenant_id="acme", now=T0 + 2)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.next_run_at is None


def test_cancel_running_only_requests_it(db: Transactions, submit: Submit) -> None:
    job_id = submit(webhook_url=HOOK).job_id
    claim_one(db)
    job = db.write(store_jobs.cancel_job, job_id, tenant_id="acme", now=T0 + 1)
    assert job.status is JobStatus.RUNNING
    assert job.cancel_requested
    assert deliveries(db, job_id) == []


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FATAL])
def test_cancel_finished_job_is_invalid(db: Transactions, submit: Submit, final: JobStatus) -> None:
    job_id = submit().job_id
    claimed = claim_one(db)
    assert db.write(scheduling.finish_job, claimed, owner="w1", status=final, now=T0 + 1)
    with pytest.raises(InvalidState, match=final.value):
        db.write(store_jobs.cancel_job, job_id, tenant_id="acme", now=T0 + 2)
    assert get(db, job_id).status is final


def test_cancel_twice_is_invalid(db: Transactions, submit: Submit) -> None:
    job_id = submit().job_id
    db.write(store_jobs.cancel_job, job_id, tenant_id=None, now=T0)
    with pytest.raises(InvalidState):
        db.write(store_jobs.cancel_job, job_id, tenant_id=None, now=T0)


def test_cancel_another_tenants_job_is_not_found(db: Transactions, submit: Submit,
                                                 new_tenant: Callable[..., NewTenant]) -> None:
    new_tenant("globex")
    job_id = submit().job_id
    with pytest.raises(NotFound):
        db.write(store_jobs.cancel_job, job_id, tenant_id="globex", now=T0)
    assert get(db, job_id).status is JobStatus.QUEUED


# retry ------------------------------------------------------------------------------


def test_retry_fatal_job_queues_it_with_another_attempt(db: Transactions, submit: Submit) -> None:
    job_id = submit(max_attempts=1).job_id
    claimed = claim_one(db)
    assert db.write(scheduling.finish_job, claimed, owner="w1", status=JobStatus.FATAL,
                    now=T0 + 1, error="boom")
    job = db.write(store_jobs.retry_job, job_id, tenant_id=None, now=T0 + 50)
    assert job.status is JobStatus.QUEUED
    assert job.attempts == 1
    assert job.max_attempts >= job.attempts + 1
    assert job.next_run_at == T0 + 50
    assert job.completed_at is None
    again = claim_one(db, now=T0 + 50)
    assert again.attempt == 2


def test_retry_keeps_a_larger_max_attempts(db: Transactions, submit: Submit) -> None:
    job_id = submit(max_attempts=5).job_id
    claimed = claim_one(db)
    db.write(scheduling.finish_job, claimed, owner="w1", status=JobStatus.FATAL, now=T0 + 1)
    assert db.write(store_jobs.retry_job, job_id, tenant_id=None, now=T0 + 2).max_attempts == 5


def test_retry_cancelled_job(db: Transactions, submit: Submit) -> None:
    job_id = submit().job_id
    db.write(store_jobs.cancel_job, job_id, tenant_id=None, now=T0)
    job = db.write(store_jobs.retry_job, job_id, tenant_id="acme", now=T0 + 1)
    assert job.status is JobStatus.QUEUED
    assert not job.cancel_requested


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_retry_of_a_live_or_succeeded_job_is_invalid(db: Transactions, submit: Submit,
                                                     state: str) -> None:
    job_id = submit().job_id
    if state != "queued":
        claimed = claim_one(db)
        if state == "succeeded":
            db.write(scheduling.finish_job, claimed, owner="w1", status=JobStatus.SUCCEEDED,
                     now=T0 + 1)
    with pytest.raises(InvalidState, match=state):
        db.write(store_jobs.retry_job, job_id, tenant_id=None, now=T0 + 2)
    assert get(db, job_id).status.value == state


# list -------------------------------------------------------------------------------


def test_list_newest_first_with_keyset_paging(db: Transactions, submit: Submit) -> None:
    ids = [submit(now=T0 + i).job_id for i in range(7)]
    first = db.read(store_jobs.list_jobs, limit=3)
    assert [j.id for j in first] == ids[::-1][:3]
    second = db.read(store_jobs.list_jobs, limit=3, before_seq=first[-1].seq)
    assert [j.id for j in second] == ids[::-1][3:6]
    third = db.read(store_jobs.list_jobs, limit=3, before_seq=second[-1].seq)
    assert [j.id for j in third] == ids[::-1][6:]
    assert db.read(store_jobs.list_jobs, limit=3, before_seq=third[-1].seq) == []


def test_paging_is_stable_while_new_jobs_arrive(db: Transactions, submit: Submit) -> None:
    ids = [submit().job_id for _ in range(4)]
    page = db.read(store_jobs.list_jobs, limit=2)
    submit()  # a new job must not shift the next page
    rest = db.read(store_jobs.list_jobs, limit=10, before_seq=page[-1].seq)
    assert [j.id for j in rest] == ids[:2][::-1]


def test_list_filters(db: Transactions, submit: Submit,
                      new_tenant: Callable[..., NewTenant]) -> None:
    new_tenant("globex")
    a_noop = submit(tenant_id="acme", type="noop").job_id
    a_mail = submit(tenant_id="acme", type="email").job_id
    g_noop = submit(tenant_id="globex", type="noop").job_id
    db.write(store_jobs.cancel_job, a_noop, tenant_id=None, now=T0)

    def listed(**filters: Any) -> list[str]:
        return [j.id for j in db.read(store_jobs.list_jobs, **filters)]

    assert listed() == [g_noop, a_mail, a_noop]
    assert listed(tenant_id="acme") == [a_mail, a_noop]
    assert listed(tenant_id="globex") == [g_noop]
    assert listed(status="cancelled") == [a_noop]
    assert listed(status="queued") == [g_noop, a_mail]
    assert listed(job_type="noop") == [g_noop, a_noop]
    assert listed(tenant_id="acme", status="queued", job_type="email") == [a_mail]
    assert listed(tenant_id="nobody") == []
    assert listed(limit=1) == [g_noop]
