"""Webhook deliveries: claim, record (delivered, retry later, dead, fenced out), release,
and the dead-letter queue."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from jobd.models import DeliveryAttempt, DeliveryStatus, JobStatus, NewTenant
from jobd.store.backend import Backend, ClaimedDelivery
from tests.conftest import T0
from tests.contract import stored
from tests.contract.helpers import HOOK, claim, submit, tenant
from tests.contract.stored import Peek

LEASE_S = 30.0


@pytest.fixture
async def acme(backend: Backend) -> NewTenant:
    return await tenant(backend, "acme")


async def pending(backend: Backend, n: int, *, tenant_id: str = "acme",
                  now: float = T0) -> list[str]:
    """``n`` finished jobs' deliveries, pending, due at ``now`` + 0, 1, 2 ..."""
    for _ in range(n):
        await submit(backend, tenant_id=tenant_id, webhook_url=HOOK, now=now)
    ids = []
    for i, job in enumerate((await claim(backend, now=now, limit=n)).jobs):
        assert await backend.finish_job(job, owner="w1", status=JobStatus.SUCCEEDED, now=now + i,
                                        result_json="{}")
        [delivery] = await backend.deliveries_of_job(job.id)
        ids.append(delivery.id)
    return ids


async def claimed(backend: Backend, n: int, *, now: float = T0 + 100) -> list[ClaimedDelivery]:
    got = await backend.claim_deliveries(now=now, limit=n, lease_s=LEASE_S)
    assert len(got) == n
    return got


async def record(backend: Backend, delivery: ClaimedDelivery, *, error: str | None = None,
                 code: int | None = 200, retry_at: float | None = None,
                 now: float = T0 + 101) -> DeliveryStatus | None:
    return await backend.record_delivery_attempt(delivery, now=now, attempted_at=now - 0.5,
                                                 status_code=code, error=error, duration_ms=12.5,
                                                 retry_at=retry_at)


async def state(backend: Backend, peek: Peek, delivery_id: str) -> tuple[object, ...]:
    d = await backend.find_delivery(delivery_id)
    assert d is not None
    return (d.status, d.attempts, d.last_status_code, d.last_error,
            await stored.count(peek, "delivery_attempts", "delivery_id = ?", delivery_id))


async def status_of(backend: Backend, delivery_id: str) -> DeliveryStatus:
    d = await backend.find_delivery(delivery_id)
    assert d is not None
    return d.status


# claim --------------------------------------------------------------------------------


async def test_a_claim_takes_due_deliveries_oldest_first_with_the_secret(
        backend: Backend, peek: Peek, acme: NewTenant) -> None:
    ids = await pending(backend, 3)
    assert await backend.next_delivery_due() == T0
    assert await backend.claim_deliveries(now=T0 - 1, limit=10, lease_s=LEASE_S) == []
    got = await backend.claim_deliveries(now=T0 + 1.5, limit=10, lease_s=LEASE_S)
    assert [d.id for d in got] == ids[:2]  # the third is due at T0 + 2
    first = got[0]
    stored_delivery = await backend.find_delivery(first.id)
    assert stored_delivery is not None
    assert (first.job_id, first.tenant_id, first.url, first.body) == (
        stored_delivery.job_id, "acme", HOOK, stored_delivery.body)
    assert (first.secret, first.attempts) == (acme.tenant.webhook_secret, 0)
    assert first.lease_expires_at == T0 + 1.5 + LEASE_S
    assert stored_delivery.status is DeliveryStatus.SENDING
    assert stored_delivery.next_attempt_at is None
    assert await backend.next_delivery_due() == T0 + 2
    assert await backend.claim_deliveries(now=T0 + 1.5, limit=10, lease_s=LEASE_S) == []
    assert [d.id for d in await backend.claim_deliveries(now=T0 + 5, limit=0,
                                                         lease_s=LEASE_S)] == []


async def test_claims_at_once_never_take_a_delivery_twice(backend: Backend,
                                                          acme: NewTenant) -> None:
    await pending(backend, 12)
    rounds = await asyncio.gather(*(backend.claim_deliveries(now=T0 + 100, limit=5,
                                                             lease_s=LEASE_S) for _ in range(4)))
    ids = [d.id for r in rounds for d in r]
    assert len(ids) == len(set(ids)) == 12


# record ------------------------------------------------------------------------------


async def test_a_delivered_webhook(backend: Backend, peek: Peek, acme: NewTenant) -> None:
    await pending(backend, 1)
    [delivery] = await claimed(backend, 1)
    assert await record(backend, delivery) is DeliveryStatus.SUCCEEDED
    assert await state(backend, peek, delivery.id) == (DeliveryStatus.SUCCEEDED, 1, 200, None, 1)
    d = await backend.find_delivery(delivery.id)
    assert d is not None and (d.delivered_at, d.dead_at, d.next_attempt_at) == (T0 + 101, None,
                                                                                None)
    assert await backend.delivery_attempts(delivery.id) == [
        DeliveryAttempt(delivery.id, T0 + 100.5, 200, None, 12.5)]


async def test_a_failed_attempt_with_retries_left(backend: Backend, peek: Peek,
                                                  acme: NewTenant) -> None:
    await pending(backend, 1)
    [delivery] = await claimed(backend, 1)
    assert await record(backend, delivery, error="HTTP 500", code=500,
                        retry_at=T0 + 130) is DeliveryStatus.PENDING
    assert await state(backend, peek, delivery.id) == (DeliveryStatus.PENDING, 1, 500,
                                                       "HTTP 500", 1)
    assert await backend.next_delivery_due() == T0 + 130
    assert await backend.claim_deliveries(now=T0 + 129, limit=5, lease_s=LEASE_S) == []
    [again] = await backend.claim_deliveries(now=T0 + 130, limit=5, lease_s=LEASE_S)
    assert (again.id, again.attempts) == (delivery.id, 1)
    assert await record(backend, again, now=T0 + 131) is DeliveryStatus.SUCCEEDED
    assert await state(backend, peek, delivery.id) == (DeliveryStatus.SUCCEEDED, 2, 200, None, 2)


async def test_a_failed_attempt_without_retries_goes_to_the_dlq(
        backend: Backend, peek: Peek, acme: NewTenant) -> None:
    await pending(backend, 1)
    [delivery] = await claimed(backend, 1)
    assert await record(backend, delivery, error="connection refused",
                        code=None) is DeliveryStatus.DEAD
    assert await state(backend, peek, delivery.id) == (DeliveryStatus.DEAD, 1, None,
                                                       "connection refused", 1)
    d = await backend.find_delivery(delivery.id)
    assert d is not None and (d.dead_at, d.delivered_at, d.next_attempt_at) == (T0 + 101, None,
                                                                                None)
    assert await backend.next_delivery_due() is None


async def test_an_outcome_from_a_claim_that_is_not_current_moves_nothing(
        backend: Backend, peek: Peek, acme: NewTenant) -> None:
    await pending(backend, 1)
    [delivery] = await claimed(backend, 1)
    stale = dataclasses.replace(delivery, lease_expires_at=delivery.lease_expires_at + 1)
    for error, retry_at in ((None, None), ("HTTP 500", T0 + 200), ("HTTP 410", None)):
        assert await record(backend, stale, error=error, retry_at=retry_at) is None
    # the attempts are recorded all the same
    assert await state(backend, peek, delivery.id) == (DeliveryStatus.SENDING, 0, None, None, 3)
    assert await record(backend, delivery) is DeliveryStatus.SUCCEEDED
    assert await record(backend, delivery) is None  # once only


async def test_outcomes_recorded_together_each_get_their_own_answer(
        backend: Backend, peek: Peek, acme: NewTenant) -> None:
    await pending(backend, 5)
    ok, retry, dead, stale, ok2 = await claimed(backend, 5)
    stale = dataclasses.replace(stale, lease_expires_at=stale.lease_expires_at + 1)
    answers = await asyncio.gather(
        record(backend, ok), record(backend, retry, error="HTTP 500", code=500, retry_at=T0 + 200),
        record(backend, dead, error="HTTP 410", code=410), record(backend, stale),
        record(backend, ok2, code=204))
    assert answers == [DeliveryStatus.SUCCEEDED, DeliveryStatus.PENDING, DeliveryStatus.DEAD,
                       None, DeliveryStatus.SUCCEEDED]
    assert await state(backend, peek, ok.id) == (DeliveryStatus.SUCCEEDED, 1, 200, None, 1)
    assert await state(backend, peek, retry.id) == (DeliveryStatus.PENDING, 1, 500, "HTTP 500", 1)
    assert await state(backend, peek, dead.id) == (DeliveryStatus.DEAD, 1, 410, "HTTP 410", 1)
    assert await state(backend, peek, stale.id) == (DeliveryStatus.SENDING, 0, None, None, 1)
    assert await state(backend, peek, ok2.id) == (DeliveryStatus.SUCCEEDED, 1, 204, None, 1)


# release ------------------------------------------------------------------------------


async def test_release_expired_leases_then_all(backend: Backend, peek: Peek,
                                               acme: NewTenant) -> None:
    await pending(backend, 2)
    [early] = await backend.claim_deliveries(now=T0 + 10, limit=1, lease_s=LEASE_S)
    [late] = await backend.claim_deliveries(now=T0 + 20, limit=1, lease_s=LEASE_S)
    assert await backend.release_deliveries(now=T0 + 10 + LEASE_S, all_sending=False) == 0
    assert await backend.release_deliveries(now=T0 + 41, all_sending=False) == 1
    d = await backend.find_delivery(early.id)
    assert d is not None and (d.status, d.next_attempt_at, d.attempts) == (
        DeliveryStatus.PENDING, T0 + 41, 0)  # no attempt counted
    assert await status_of(backend, late.id) is DeliveryStatus.SENDING
    assert await record(backend, early) is None  # its claim is gone
    assert await backend.release_deliveries(now=T0 + 42, all_sending=True) == 1
    assert await status_of(backend, late.id) is DeliveryStatus.PENDING
    assert await backend.release_deliveries(now=T0 + 43, all_sending=True) == 0


# the dead-letter queue -------------------------------------------------------------------


async def dead(backend: Backend, n: int, *, now: float) -> list[str]:
    """``n`` deliveries dead-lettered at ``now``, ``now`` + 1 ..."""
    ids = []
    for i, delivery in enumerate(await backend.claim_deliveries(now=now, limit=n,
                                                                lease_s=LEASE_S)):
        assert await record(backend, delivery, error="HTTP 410", code=410,
                            now=now + i) is DeliveryStatus.DEAD
        ids.append(delivery.id)
    assert len(ids) == n
    return ids


async def test_the_dlq_lists_the_most_recently_dead_first(backend: Backend,
                                                          acme: NewTenant) -> None:
    await tenant(backend, "globex")
    await pending(backend, 2, tenant_id="acme")
    acme_dead = await dead(backend, 2, now=T0 + 100)
    await pending(backend, 1, tenant_id="globex", now=T0 + 200)
    globex_dead = await dead(backend, 1, now=T0 + 300)
    assert [d.id for d in await backend.list_dead_deliveries()] == [*globex_dead, *acme_dead[::-1]]
    assert [d.id for d in await backend.list_dead_deliveries(tenant_id="acme", limit=1)] == [
        acme_dead[1]]
    assert await backend.dead_delivery_ids() == [*acme_dead, *globex_dead]
    assert await backend.dead_delivery_ids(tenant_id="globex") == globex_dead
    assert await backend.find_delivery("msg_nope") is None


async def test_redeliver_gives_a_fresh_budget_and_keeps_the_id(
        backend: Backend, peek: Peek, acme: NewTenant) -> None:
    await pending(backend, 3)
    ids = await dead(backend, 2, now=T0 + 100)
    [still_pending] = [d for d in await backend.claim_deliveries(now=T0 + 100, limit=5,
                                                                 lease_s=LEASE_S)]
    moved = await backend.redeliver_dead([ids[1], "msg_nope", still_pending.id, ids[0], ids[1]],
                                         now=T0 + 500)
    assert moved == [ids[1], ids[0]]
    for delivery_id in ids:
        d = await backend.find_delivery(delivery_id)
        assert d is not None
        # `attempts` keeps counting every attempt (its history); the budget starts again
        assert (d.status, d.attempts, d.next_attempt_at, d.dead_at) == (
            DeliveryStatus.PENDING, 1, T0 + 500, None)
        assert d.last_error == "HTTP 410"  # the last failure is still shown
    assert await backend.redeliver_dead(ids, now=T0 + 501) == []  # no longer dead
    assert await backend.redeliver_dead([], now=T0 + 501) == []
    again = await backend.claim_deliveries(now=T0 + 500, limit=5, lease_s=LEASE_S)
    assert sorted(d.id for d in again) == sorted(ids)
    assert [d.attempts for d in again] == [0, 0]  # what the dispatcher counts its budget from
    assert await stored.count(peek, "delivery_attempts") == 2  # the history is kept


async def test_purge_deletes_dead_deliveries_and_their_attempts(
        backend: Backend, peek: Peek, acme: NewTenant) -> None:
    await pending(backend, 3)
    ids = await dead(backend, 2, now=T0 + 100)
    [alive] = await backend.claim_deliveries(now=T0 + 100, limit=5, lease_s=LEASE_S)
    assert await record(backend, alive) is DeliveryStatus.SUCCEEDED
    assert await backend.purge_dead([alive.id, ids[1], "msg_nope"]) == [ids[1]]
    assert await backend.find_delivery(ids[1]) is None
    assert await backend.delivery_attempts(ids[1]) == []
    assert await stored.count(peek, "delivery_attempts", "delivery_id = ?", ids[1]) == 0
    assert (await backend.find_delivery(alive.id)) is not None
    assert await backend.purge_dead([]) == []
    assert await backend.purge_dead(await backend.dead_delivery_ids()) == [ids[0]]
    assert await stored.count(peek, "delivery_attempts") == 1  # the delivered one's
