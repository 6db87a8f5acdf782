"""Recording webhook attempts in groups: the fast path and the one-by-one fallback agree."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from jobd.models import DeliveryStatus, IdempotentResult, JobStatus, NewTenant
from jobd.store.sqlite import deliveries as store_deliveries
from jobd.store.sqlite import scheduling
from jobd.store.sqlite.deliveries import AttemptRecord, ClaimedDelivery
from tests.conftest import T0
from tests.store.conftest import Transactions

Submit = Callable[..., IdempotentResult]
HOOK = "https://client.example/hook"


@pytest.fixture(autouse=True)
def acme(new_tenant: Callable[..., NewTenant]) -> NewTenant:
    return new_tenant("acme")


def pending_deliveries(db: Transactions, submit: Submit, n: int) -> list[ClaimedDelivery]:
    for _ in range(n):
        submit(webhook_url=HOOK)
    jobs = db.write(scheduling.claim_due_jobs, now=T0, limit=n, owner="w", lease_s=30).jobs
    db.write(scheduling.finish_jobs, [scheduling.Finish(j, JobStatus.SUCCEEDED, T0, "{}")
                                      for j in jobs], owner="w")
    claimed = db.write(store_deliveries.claim_due_deliveries, now=T0 + 1, limit=n, lease_s=30)
    assert len(claimed) == n
    return claimed


def record(delivery: ClaimedDelivery, *, error: str | None = None, code: int | None = 200,
           retry_at: float | None = None) -> AttemptRecord:
    return AttemptRecord(delivery, T0 + 2, T0 + 1.5, code, error, 12.5, retry_at)


def state(db: Transactions, delivery_id: str) -> tuple[Any, ...]:
    d = db.read(store_deliveries.get_delivery, delivery_id)
    attempts = db.read(lambda c: c.execute(
        "SELECT count(*) FROM delivery_attempts WHERE delivery_id = ?", (delivery_id,)
    ).fetchone()[0])
    return d.status, d.attempts, d.last_status_code, d.last_error, attempts


def test_all_delivered_is_one_group(db: Transactions, submit: Submit) -> None:
    claimed = pending_deliveries(db, submit, 5)
    outcomes = db.write(store_deliveries.record_delivery_attempts, [record(d) for d in claimed])
    assert outcomes == [(True, DeliveryStatus.SUCCEEDED)] * 5
    assert {state(db, d.id) for d in claimed} == {(DeliveryStatus.SUCCEEDED, 1, 200, None, 1)}


def test_a_mixed_group_answers_each_delivery(db: Transactions, submit: Submit) -> None:
    ok, retry, dead, stale = pending_deliveries(db, submit, 4)
    stale = dataclasses.replace(stale, lease_expires_at=stale.lease_expires_at + 1)  # lost claim
    outcomes = db.write(store_deliveries.record_delivery_attempts, [
        record(ok), record(retry, error="HTTP 500", code=500, retry_at=T0 + 30),
        record(dead, error="HTTP 410", code=410), record(stale)])
    assert [o for _, o in outcomes] == [DeliveryStatus.SUCCEEDED, DeliveryStatus.PENDING,
                                        DeliveryStatus.DEAD, None]
    assert state(db, ok.id) == (DeliveryStatus.SUCCEEDED, 1, 200, None, 1)
    assert state(db, retry.id) == (DeliveryStatus.PENDING, 1, 500, "HTTP 500", 1)
    assert state(db, dead.id) == (DeliveryStatus.DEAD, 1, 410, "HTTP 410", 1)
    assert state(db, stale.id) == (DeliveryStatus.SENDING, 0, None, None, 1)  # attempt kept


def test_one_lost_claim_among_successes_falls_back_without_double_counting(
        db: Transactions, submit: Submit) -> None:
    a, b, c = pending_deliveries(db, submit, 3)
    b = dataclasses.replace(b, lease_expires_at=b.lease_expires_at + 1)
    outcomes = db.write(store_deliveries.record_delivery_attempts, [record(a), record(b),
                                                                     record(c)])
    assert [o for _, o in outcomes] == [DeliveryStatus.SUCCEEDED, None, DeliveryStatus.SUCCEEDED]
    assert state(db, a.id) == (DeliveryStatus.SUCCEEDED, 1, 200, None, 1)
    assert state(db, b.id)[0] is DeliveryStatus.SENDING and state(db, b.id)[4] == 1
