"""insert_job: creation, replay, 409, an expired key taken over, revoked keys, leases, and
concurrent identical requests."""

from __future__ import annotations

import asyncio

import pytest

from jobd import credentials
from jobd.errors import IdempotencyConflict, Unauthorized
from jobd.models import JobStatus, NewTenant, StartLease
from jobd.store.backend import Backend
from tests.conftest import T0
from tests.contract import stored
from tests.contract.helpers import HOOK, TTL_S, get, new_job, submit, tenant
from tests.contract.stored import Peek


@pytest.fixture
async def acme(backend: Backend) -> NewTenant:
    return await tenant(backend, "acme")


def key_hash(created: NewTenant) -> str:
    return credentials.hash_api_key(created.api_key)


async def test_insert_creates_a_queued_job(backend: Backend, peek: Peek, acme: NewTenant) -> None:
    job = new_job(type="email", payload='{"to": "a@b.c"}', priority=3, max_attempts=7,
                  timeout_seconds=12.5, run_at=T0 + 60, webhook_url=HOOK, key="k1")
    created = await backend.insert_job(job, body_hash=b"h1", now=T0, idempotency_ttl_s=TTL_S,
                                       api_key_hash=key_hash(acme))
    assert (created.created_at, created.replayed, created.started) == (T0, False, False)
    assert created.job_id.startswith("job_")
    stored_job = await get(backend, created.job_id)
    assert stored_job.status is JobStatus.QUEUED
    assert (stored_job.tenant_id, stored_job.type, stored_job.payload) == (
        "acme", "email", '{"to": "a@b.c"}')
    assert (stored_job.priority, stored_job.max_attempts, stored_job.timeout_seconds) == (3, 7, 12.5)
    assert stored_job.run_at == stored_job.next_run_at == T0 + 60
    assert stored_job.attempts == 0
    assert stored_job.webhook_url == HOOK
    assert stored_job.created_at == stored_job.updated_at == T0
    assert stored_job.started_at is None and stored_job.completed_at is None
    assert not stored_job.cancel_requested
    assert stored_job.result is None and stored_job.last_error is None
    assert stored_job.seq > 0
    assert await stored.key_holder(peek, "acme", "k1") == created.job_id
    assert await stored.lease(peek, created.job_id) == (None, None)


async def test_job_ids_are_unique_and_time_ordered(backend: Backend, acme: NewTenant) -> None:
    ids = [(await submit(backend)).job_id for _ in range(20)]
    assert len(set(ids)) == 20
    assert [i[:11] for i in ids] == sorted(i[:11] for i in ids)  # job_ + 42 bits of ms


async def test_a_replay_returns_the_same_job_and_its_creation_time(
        backend: Backend, peek: Peek, acme: NewTenant) -> None:
    job = new_job(key="same")
    first = await submit(backend, job, now=T0)
    again = await submit(backend, job, now=T0 + 10)
    assert (again.job_id, again.created_at, again.replayed) == (first.job_id, T0, True)
    assert not again.started
    assert await stored.count(peek, "jobs") == 1


async def test_the_same_key_with_another_body_is_a_conflict(
        backend: Backend, peek: Peek, acme: NewTenant) -> None:
    await submit(backend, new_job(key="same"), body_hash=b"first")
    with pytest.raises(IdempotencyConflict, match="same"):
        await submit(backend, new_job(key="same", payload='{"n": 2}'), body_hash=b"second",
                     now=T0 + 1)
    assert await stored.count(peek, "jobs") == 1


async def test_an_expired_key_is_taken_over_by_a_new_job(
        backend: Backend, peek: Peek, acme: NewTenant) -> None:
    job = new_job(key="old")
    first = await submit(backend, job, now=T0)
    still = await submit(backend, job, now=T0 + TTL_S - 1)
    assert still.replayed and still.job_id == first.job_id
    later = await submit(backend, job, body_hash=b"another body", now=T0 + TTL_S)
    assert not later.replayed  # expired: a different body is no conflict either
    assert later.job_id != first.job_id and later.created_at == T0 + TTL_S
    assert await stored.count(peek, "jobs") == 2
    assert await stored.key_holder(peek, "acme", "old") == later.job_id  # the old job let go
    assert (await get(backend, first.job_id)).status is JobStatus.QUEUED  # and is still there
    again = await submit(backend, job, body_hash=b"another body", now=T0 + TTL_S + 1)
    assert again.replayed and again.job_id == later.job_id


async def test_keys_are_per_tenant(backend: Backend, peek: Peek, acme: NewTenant) -> None:
    await tenant(backend, "globex")
    a = await submit(backend, new_job("acme", key="k"))
    b = await submit(backend, new_job("globex", key="k"), body_hash=b"different")
    assert not b.replayed and a.job_id != b.job_id
    assert await stored.count(peek, "jobs") == 2


@pytest.mark.parametrize("revoke", ["rotated", "disabled", "unknown"])
async def test_a_key_that_is_no_longer_live_creates_nothing(
        backend: Backend, peek: Peek, acme: NewTenant, revoke: str) -> None:
    hash_ = key_hash(acme)
    if revoke == "rotated":
        await backend.rotate_api_key("acme", now=T0)
    elif revoke == "disabled":
        await backend.set_tenant_disabled("acme", disabled=True, now=T0)
    else:
        hash_ = "not-a-key"
    with pytest.raises(Unauthorized):
        await backend.insert_job(new_job(key="k"), body_hash=b"h", now=T0,
                                 idempotency_ttl_s=TTL_S, api_key_hash=hash_)
    assert await stored.count(peek, "jobs") == 0


async def test_a_live_key_is_checked_and_accepted(backend: Backend, acme: NewTenant) -> None:
    rotated = await backend.rotate_api_key("acme", now=T0)
    created = await backend.insert_job(new_job(), body_hash=b"h", now=T0,
                                       idempotency_ttl_s=TTL_S, api_key_hash=key_hash(rotated))
    assert not created.replayed


async def test_a_lease_creates_the_job_running(backend: Backend, peek: Peek,
                                               acme: NewTenant) -> None:
    lease = StartLease(owner="node-1", expires_at=T0 + 30)
    created = await backend.insert_job(new_job(key="now"), body_hash=b"h", now=T0,
                                       idempotency_ttl_s=TTL_S, api_key_hash=key_hash(acme),
                                       lease=lease)
    job = await get(backend, created.job_id)
    if created.started:  # a backend may always create it queued instead
        assert job.status is JobStatus.RUNNING
        assert (job.attempts, job.started_at, job.next_run_at) == (1, T0, None)
        assert await stored.lease(peek, job.id) == ("node-1", T0 + 30)
    else:
        assert job.status is JobStatus.QUEUED
    # a replay under a lease starts nothing
    again = await backend.insert_job(new_job(key="now"), body_hash=b"h", now=T0 + 1,
                                     idempotency_ttl_s=TTL_S, lease=lease)
    assert again.replayed and not again.started and again.job_id == created.job_id


async def test_the_backend_creates_a_leased_job_running(backend: Backend, acme: NewTenant) -> None:
    """Both backends honour a lease when nothing stands in the way (one new job, a live key)."""
    created = await backend.insert_job(new_job(), body_hash=b"h", now=T0,
                                       idempotency_ttl_s=TTL_S,
                                       lease=StartLease(owner="node-1", expires_at=T0 + 30))
    assert created.started


async def test_calls_made_together_each_get_their_own_answer(
        backend: Backend, peek: Peek, acme: NewTenant) -> None:
    earlier = await submit(backend, new_job(key="used"), body_hash=b"h")
    calls = [
        (new_job(key="fresh"), b"h", None),
        (new_job(key="used"), b"h", None),           # replay
        (new_job(key="used"), b"other", None),       # 409
        (new_job(key="twice"), b"h", None),
        (new_job(key="twice"), b"h", None),          # the same key twice at once
        (new_job(key="dead-key"), b"h", "not-the-key"),  # a revoked API key
    ]
    futures = [backend.insert_job(job, body_hash=h, now=T0 + 1, idempotency_ttl_s=TTL_S,
                                  api_key_hash=api_key) for job, h, api_key in calls]
    fresh, replay, conflict, twice, again, denied = await asyncio.gather(
        *futures, return_exceptions=True)
    assert not isinstance(fresh, BaseException) and not fresh.replayed
    assert await stored.key_holder(peek, "acme", "fresh") == fresh.job_id
    assert not isinstance(replay, BaseException) and replay.replayed
    assert replay.job_id == earlier.job_id
    assert isinstance(conflict, IdempotencyConflict)
    assert not isinstance(twice, BaseException) and not isinstance(again, BaseException)
    assert {twice.replayed, again.replayed} == {False, True} and again.job_id == twice.job_id
    assert isinstance(denied, Unauthorized)
    assert await stored.key_holder(peek, "acme", "dead-key") is None
    assert await stored.count(peek, "jobs") == 3


@pytest.mark.parametrize("spread", ["one turn", "many turns"])
async def test_fifty_identical_requests_at_once_make_one_job(
        backend: Backend, peek: Peek, acme: NewTenant, spread: str) -> None:
    job = new_job(key="hot")

    async def post(n: int) -> str:
        if spread == "many turns":
            for _ in range(n % 7):
                await asyncio.sleep(0)
        result = await backend.insert_job(job, body_hash=b"same", now=T0 + n / 1000,
                                          idempotency_ttl_s=TTL_S)
        return result.job_id

    ids = await asyncio.gather(*(post(n) for n in range(50)))
    assert len(set(ids)) == 1
    assert await stored.count(peek, "jobs") == 1
    assert await stored.key_holder(peek, "acme", "hot") == ids[0]


PAYLOADS = [
    '{}',
    '{"b": 1,  "a": [1.50, 2e3, -0.0]}',            # key order, spacing, number spelling
    '{"a": 1, "a": 2}',                               # a duplicate key
    '{"text": "caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ \\n"}',  # escapes kept as escapes
    '{"text": "café 😀 ünïcödé"}',                      # raw UTF-8
    '{"big": 123456789012345678901234567890, "tiny": 1e-320}',
    '[1, "two", null, true, {"nested": {"deep": []}}]',
]


@pytest.mark.parametrize("payload", PAYLOADS)
async def test_the_payload_comes_back_byte_for_byte(backend: Backend, peek: Peek,
                                                    acme: NewTenant, payload: str) -> None:
    created = await submit(backend, new_job(payload=payload))
    assert (await get(backend, created.job_id)).payload == payload
    assert (await stored.stored_job_texts(peek, created.job_id))[0] == payload
