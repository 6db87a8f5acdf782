"""The webhook dispatcher, in-process: a real store, a real receiver on 127.0.0.1, and a
FakeClock so the retry ladder is walked without sleeping."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from jobd.clock import FakeClock
from jobd.config import Config
from jobd.handlers.base import Services
from jobd.handlers.registry import Registry, builtin_types
from jobd.models import ClaimedJob, DeliveryStatus, JobStatus, NewJob, NewTenant
from jobd.runtime.dispatcher import Dispatcher, retry_at
from jobd.runtime.workers import WorkerPool
from jobd.store.backend import Backend, ClaimedDelivery, DirectDelivery, Rotation
from tests.conftest import T0, make_config
from tests.e2e.receiver import Seen
from tests.peers import REFUSED_HEADS, hostile_server
from tests.runtime.conftest import failing, until


class Receiver:
    """Answers from a script of statuses (the last one repeats); may hang first."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.statuses = [200]
        self.hang_s = 0.0
        self.error_body = b"x" * 5000  # the body of an answer >= 400
        self.release = asyncio.Event()
        self.base = ""

    def url(self, path: str = "/hook") -> str:
        return self.base + path

    def at(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Seen(request.path, dict(request.headers), body, time.monotonic()))
        if self.hang_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), self.hang_s)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": self.url("/elsewhere")})
        return web.Response(status=status, body=self.error_body if status >= 400 else b"ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", r.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    r.base = str(server.make_url("")).rstrip("/")
    yield r
    r.release.set()
    await server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def tenant(new_tenant) -> NewTenant:
    return await new_tenant()


@pytest.fixture
async def make_dispatcher(store: Backend, clock: FakeClock, tmp_path: Path) -> AsyncIterator:
    made: list[Dispatcher] = []

    def make(**webhooks: object) -> Dispatcher:
        config = make_config(tmp_path, webhooks=webhooks)
        d = Dispatcher(store=store, clock=clock, config=config)
        made.append(d)
        return d

    yield make
    for d in made:
        await d.close()


LADDER = {"retry_delays": [30, 60, 120]}


@pytest.fixture(params=[True, False], ids=["fast", "aiohttp"])
def fast_client(request: pytest.FixtureRequest) -> bool:
    """webhooks.fast_client: the sending tests run with both clients."""
    return bool(request.param)


async def finish_job_with_webhook(store: Backend, clock: FakeClock, url: str, *,
                                  key: str = "k") -> tuple[str, str]:
    """Submit, claim and succeed a job the way the pool does; return (job id, delivery id)."""
    job = NewJob(tenant_id="acme", type="noop", payload='{"to":"user@example.com"}', priority=0,
                 max_attempts=3, timeout_seconds=None, run_at=clock.now(), webhook_url=url,
                 idempotency_key=key)
    created = await store.insert_job(job, body_hash=key.encode(), now=clock.now(),
                                     idempotency_ttl_s=3600)
    claim = await store.claim_jobs(rotation=Rotation(), now=clock.now(), limit=10, owner="o", lease_s=60)
    for claimed in claim.jobs:
        await store.finish_job(claimed, owner="o", status=JobStatus.SUCCEEDED, now=clock.now(),
                               result_json='{"ok":true}')
    [delivery] = await store.deliveries_of_job(created.job_id)
    return created.job_id, delivery.id


async def delivery(store, delivery_id: str):
    found = await store.find_delivery(delivery_id)
    assert found is not None, delivery_id
    return found


async def round_(dispatcher: Dispatcher) -> int:
    started = await dispatcher.run_once()
    await dispatcher.wait_idle()
    return started


# policy ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("attempts", "expected"), [(1, 130.0), (2, 160.0), (3, 220.0), (4, None),
                                                    (5, None), (0, None)])
def test_retry_at_walks_the_delays_then_gives_up(attempts, expected):
    assert retry_at(attempts, (30, 60, 120), 100.0) == expected


def test_retry_at_with_no_delays_dead_letters_at_once():
    assert retry_at(1, (), 100.0) is None


# sending --------------------------------------------------------------------------------

async def test_success_records_one_attempt_and_a_verifiable_signature(
        store, clock, receiver, tenant, make_dispatcher, fast_client):
    dispatcher = make_dispatcher(fast_client=fast_client)
    job_id, delivery_id = await finish_job_with_webhook(store, clock, receiver.url())
    assert await round_(dispatcher) == 1

    done = await delivery(store, delivery_id)
    assert done.status is DeliveryStatus.SUCCEEDED
    assert (done.attempts, done.delivered_at, done.last_status_code) == (1, T0, 200)
    [attempt] = await store.delivery_attempts(delivery_id)
    assert (attempt.status_code, attempt.error, attempt.attempted_at) == (200, None, T0)

    [seen] = receiver.requests
    assert seen.body == done.body  # exactly the stored bytes
    body = json.loads(seen.body)
    assert body["jobId"] == job_id
    assert body["status"] == "succeeded"
    assert body["attempts"] == 1
    assert body["payload"] == {"to": "user@example.com"}
    assert body["completedAt"].endswith("Z")
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"].startswith("jobd/")
    secret = tenant.tenant.webhook_secret
    expected = "sha256=" + hmac.new(secret.encode(), seen.body, hashlib.sha256).hexdigest()
    assert seen.headers["X-Signature"] == expected
    assert seen.headers["webhook-id"] == delivery_id
    assert seen.headers["webhook-timestamp"] == str(int(T0))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{delivery_id}.{int(T0)}.".encode() + seen.body
    standard = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert seen.headers["webhook-signature"] == standard
    assert await round_(dispatcher) == 0  # nothing sent twice


async def test_500_walks_the_ladder_then_dead_letters(store, clock, receiver, tenant,
                                                      make_dispatcher, caplog, fast_client):
    receiver.statuses = [500]
    dispatcher = make_dispatcher(fast_client=fast_client, **LADDER)
    _, delivery_id = await finish_job_with_webhook(store, clock, receiver.url())
    states, gaps = [], []
    for number in range(1, 5):
        attempted = clock.now()
        assert await round_(dispatcher) == 1
        d = await delivery(store, delivery_id)
        states.append(d.status.value)
        assert d.attempts == number
        if d.status is DeliveryStatus.PENDING:
            gaps.append(d.next_attempt_at - attempted)
            clock.advance(d.next_attempt_at - clock.now() - 1)
            assert await round_(dispatcher) == 0, "not due yet"
            clock.advance(1)
    assert states == ["pending", "pending", "pending", "dead"]
    assert gaps == [30, 60, 120]
    assert len(receiver.requests) == 4
    assert {r.headers["webhook-id"] for r in receiver.requests} == {delivery_id}
    assert [int(r.headers["webhook-timestamp"]) for r in receiver.requests] == [
        int(T0), int(T0 + 30), int(T0 + 90), int(T0 + 210)]
    dead = await delivery(store, delivery_id)
    assert dead.dead_at == T0 + 210
    assert dead.next_attempt_at is None
    assert dead.last_status_code == 500
    assert dead.last_error.startswith("HTTP 500: xxx")
    assert len(dead.last_error) < 300  # only an excerpt of the 5000-byte answer
    history = await store.delivery_attempts(delivery_id)
    assert [a.status_code for a in history] == [500] * 4
    assert [a.attempted_at for a in history] == [T0, T0 + 30, T0 + 90, T0 + 210]
    assert "moved to the DLQ" in caplog.text
    clock.advance(3600)
    assert await round_(dispatcher) == 0
    assert len(receiver.requests) == 4


async def test_an_answer_with_a_nul_byte_is_recorded_like_any_other(store, clock, receiver,
                                                                    tenant, make_dispatcher):
    """The excerpt of a receiver's answer in the error may hold a NUL (which PostgreSQL's
    text cannot): the attempt is still written, and the delivery walks its ladder."""
    receiver.statuses = [500]
    receiver.error_body = b"bad\x00news"
    dispatcher = make_dispatcher(retry_delays=[30])
    _, delivery_id = await finish_job_with_webhook(store, clock, receiver.url())
    assert await round_(dispatcher) == 1
    d = await delivery(store, delivery_id)
    assert (d.status, d.attempts, d.last_status_code) == (DeliveryStatus.PENDING, 1, 500)
    assert d.last_error.startswith("HTTP 500: bad") and d.last_error.endswith("news")
    clock.advance(30)
    assert await round_(dispatcher) == 1
    assert (await delivery(store, delivery_id)).status is DeliveryStatus.DEAD
    history = await store.delivery_attempts(delivery_id)
    assert [a.error for a in history] == [d.last_error] * 2


async def test_redirect_is_a_failure_and_never_followed(store, clock, receiver, tenant,
                                                        make_dispatcher, fast_client):
    receiver.statuses = [302]
    dispatcher = make_dispatcher(fast_client=fast_client, **LADDER)
    _, delivery_id = await finish_job_with_webhook(store, clock, receiver.url())
    await round_(dispatcher)
    d = await delivery(store, delivery_id)
    assert d.status is DeliveryStatus.PENDING
    assert d.last_status_code == 302
    assert "redirects are not followed" in d.last_error
    assert receiver.at("/elsewhere") == []
    assert len(receiver.at("/hook")) == 1


async def test_a_receiver_slower_than_the_timeout_is_a_failure(store, clock, receiver, tenant,
                                                               make_dispatcher, fast_client):
    receiver.hang_s = 5
    dispatcher = make_dispatcher(fast_client=fast_client, timeout=0.2, **LADDER)
    _, delivery_id = await finish_job_with_webhook(store, clock, receiver.url())
    started = time.perf_counter()
    await round_(dispatcher)
    assert time.perf_counter() - started < 2
    d = await delivery(store, delivery_id)
    assert d.status is DeliveryStatus.PENDING
    assert d.last_error == "timed out after 0.2s"
    [attempt] = await store.delivery_attempts(delivery_id)
    assert attempt.status_code is None
    assert attempt.duration_ms >= 150


async def test_private_addresses_are_refused_when_not_allowed(store, clock, receiver, tenant,
                                                              make_dispatcher, fast_client):
    dispatcher = make_dispatcher(fast_client=fast_client, allow_private_networks=False, **LADDER)
    _, loopback = await finish_job_with_webhook(store, clock, receiver.url(), key="a")
    port = receiver.base.rsplit(":", 1)[1]
    _, by_name = await finish_job_with_webhook(store, clock, f"http://localhost:{port}/hook",
                                               key="b")
    assert await round_(dispatcher) == 2
    assert receiver.requests == []
    first, second = (await delivery(store, loopback)), (await delivery(store, by_name))
    assert first.status is second.status is DeliveryStatus.PENDING
    assert "refused URL" in first.last_error and "loopback" in first.last_error
    assert "localhost" in second.last_error
    [attempt] = await store.delivery_attempts(loopback)
    assert attempt.status_code is None


async def test_a_hostile_receiver_fails_the_attempt_at_once_with_a_clear_error(
        store, clock, tenant, make_dispatcher, fast_client):
    async with hostile_server() as hostile:
        dispatcher = make_dispatcher(fast_client=fast_client, timeout=10, **LADDER)
        sent = {path: (await finish_job_with_webhook(store, clock, hostile.url(path),
                                                     key=path))[1]
                for path in REFUSED_HEADS}
        started = time.perf_counter()
        assert await round_(dispatcher) == len(sent)
        assert time.perf_counter() - started < 3  # not webhooks.timeout
    for path, delivery_id in sent.items():
        d = await delivery(store, delivery_id)
        assert d.status is DeliveryStatus.PENDING
        assert d.last_error == f"AnswerRefused: {REFUSED_HEADS[path]}"
        assert d.last_status_code is None


async def test_dlq_retry_gives_a_fresh_budget_and_keeps_the_webhook_id(
        store, clock, receiver, tenant, make_dispatcher):
    receiver.statuses = [500]
    dispatcher = make_dispatcher(retry_delays=[30])
    _, delivery_id = await finish_job_with_webhook(store, clock, receiver.url())
    await round_(dispatcher)
    clock.advance(30)
    await round_(dispatcher)
    assert (await delivery(store, delivery_id)).status is DeliveryStatus.DEAD

    clock.advance(100)
    assert await store.redeliver_dead([delivery_id], now=clock.now()) == [delivery_id]
    again = await delivery(store, delivery_id)
    # `attempts` keeps counting every attempt (as the history does); the budget is new
    assert (again.status, again.attempts, again.next_attempt_at) == (
        DeliveryStatus.PENDING, 2, clock.now())
    assert again.dead_at is None

    await round_(dispatcher)  # fails again: the first attempt of the new budget, so a retry
    retrying = await delivery(store, delivery_id)
    assert (retrying.status, retrying.attempts) == (DeliveryStatus.PENDING, 3)
    receiver.statuses = [200]
    clock.advance(30)
    assert await round_(dispatcher) == 1
    done = await delivery(store, delivery_id)
    assert (done.status, done.attempts) == (DeliveryStatus.SUCCEEDED, 4)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery_id] * 4
    assert len(await store.delivery_attempts(delivery_id)) == done.attempts
    # only dead deliveries can be retried
    assert await store.redeliver_dead([delivery_id], now=clock.now()) == []


async def test_concurrency_is_bounded(store, clock, receiver, tenant, make_dispatcher):
    receiver.hang_s = 5
    dispatcher = make_dispatcher(concurrency=2)
    ids = [(await finish_job_with_webhook(store, clock, receiver.url(), key=f"k{i}"))[1]
           for i in range(5)]
    assert await dispatcher.run_once() == 2
    assert await dispatcher.run_once() == 0
    assert dispatcher.free_slots == 0
    receiver.release.set()
    await dispatcher.wait_idle()
    assert await round_(dispatcher) == 2
    assert await round_(dispatcher) == 1
    assert {(await delivery(store, i)).status for i in ids} == {DeliveryStatus.SUCCEEDED}


# crashes and leases -----------------------------------------------------------------------

async def test_sending_left_by_a_dead_process_is_sent_again(store, clock, receiver, tenant,
                                                            make_dispatcher):
    dispatcher = make_dispatcher()
    _, delivery_id = await finish_job_with_webhook(store, clock, receiver.url())
    await store.claim_deliveries(now=clock.now(), limit=10, lease_s=40)  # then "kill -9"
    assert (await delivery(store, delivery_id)).status is DeliveryStatus.SENDING
    assert await round_(dispatcher) == 0  # held by a live-looking claim

    # what the next start of the only daemon on the database does (jobd.store.cluster)
    assert await store.release_deliveries(now=clock.now(), all_sending=True) == 1
    back = await delivery(store, delivery_id)
    assert (back.status, back.attempts, back.next_attempt_at) == (DeliveryStatus.PENDING, 0, T0)
    assert await round_(dispatcher) == 1
    assert (await delivery(store, delivery_id)).status is DeliveryStatus.SUCCEEDED


async def test_an_answer_the_database_did_not_take_is_written_again(
        store, clock, receiver, tenant, make_dispatcher, monkeypatch, quick_rewrites):
    dispatcher = make_dispatcher()
    broken = failing(store.record_delivery_attempt, times=2)
    monkeypatch.setattr(store, "record_delivery_attempt", broken)
    _, delivery_id = await finish_job_with_webhook(store, clock, receiver.url())
    assert await round_(dispatcher) == 1
    assert broken.calls["n"] == 3
    sent = await delivery(store, delivery_id)
    assert (sent.status, sent.attempts) == (DeliveryStatus.SUCCEEDED, 1)
    assert len(await store.delivery_attempts(delivery_id)) == 1
    assert len(receiver.requests) == 1  # sent once: not again after its lease


async def test_an_answer_never_taken_is_left_to_the_lease(
        store, clock, receiver, tenant, make_dispatcher, monkeypatch, quick_rewrites, caplog):
    dispatcher = make_dispatcher()
    broken = failing(store.record_delivery_attempt, times=None)
    monkeypatch.setattr(store, "record_delivery_attempt", broken)
    _, delivery_id = await finish_job_with_webhook(store, clock, receiver.url())
    assert await dispatcher.run_once() == 1
    await until(lambda: broken.calls["n"] >= 3, "the write was not tried again")
    clock.advance(dispatcher.lease_s + 1)
    await dispatcher.wait_idle()  # it gives up once the lease is over
    assert (await delivery(store, delivery_id)).status is DeliveryStatus.SENDING
    assert any("its lease will expire" in r.getMessage() and delivery_id in r.getMessage()
               for r in caplog.records)
    monkeypatch.undo()  # the database is back: the rescue sends it again, same id
    assert await round_(dispatcher) == 1
    assert (await delivery(store, delivery_id)).status is DeliveryStatus.SUCCEEDED
    assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery_id] * 2


async def test_an_expired_claim_is_rescued_by_run_once(store, clock, receiver, tenant,
                                                       make_dispatcher):
    dispatcher = make_dispatcher()
    _, delivery_id = await finish_job_with_webhook(store, clock, receiver.url())
    stale = await store.claim_deliveries(now=clock.now(), limit=10, lease_s=40)
    clock.advance(41)
    assert await round_(dispatcher) == 1
    assert (await delivery(store, delivery_id)).status is DeliveryStatus.SUCCEEDED
    # the stale claim can no longer change the delivery, but its attempt is recorded
    status = await store.record_delivery_attempt(stale[0], now=clock.now(), attempted_at=T0,
                                                 status_code=500, error="HTTP 500",
                                                 duration_ms=1.0, retry_at=clock.now() + 30)
    assert status is None
    assert (await delivery(store, delivery_id)).status is DeliveryStatus.SUCCEEDED
    assert len(await store.delivery_attempts(delivery_id)) == 2


# finished jobs: sent at once, or queued behind a backlog -----------------------------------

@pytest.fixture
async def wired(store, clock, tmp_path) -> AsyncIterator:
    """A pool and a dispatcher as the daemon wires them; the dispatcher's loop runs with a
    long poll interval, so only a direct send or a wake-up can send a webhook quickly."""
    made: list[tuple[WorkerPool, Dispatcher, asyncio.Task[None]]] = []

    def make(**webhooks: object) -> tuple[WorkerPool, Dispatcher]:
        config: Config = make_config(tmp_path, workers={"poll_interval": 30}, webhooks=webhooks)
        pool = WorkerPool(store=store, registry=Registry(builtin_types()),
                          services=Services(config=config), clock=clock, config=config,
                          owner="o", rng=random.Random(1))
        dispatcher = Dispatcher(store=store, clock=clock, config=config)
        pool.webhooks = dispatcher
        made.append((pool, dispatcher, asyncio.create_task(dispatcher.run())))
        return pool, dispatcher

    yield make
    for pool, dispatcher, run in made:
        await pool.shutdown(1)
        await dispatcher.shutdown(1)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await dispatcher.close()


class ClaimCounter:
    def __init__(self, store: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rounds = 0
        claim = store.claim_deliveries

        async def counted(**kwargs: object) -> list[ClaimedDelivery]:
            self.rounds += 1
            return await claim(**kwargs)
        monkeypatch.setattr(store, "claim_deliveries", counted)


async def submit(store: Backend, clock: FakeClock, url: str, key: str) -> str:
    job = NewJob(tenant_id="acme", type="noop", payload="{}", priority=0, max_attempts=1,
                 timeout_seconds=None, run_at=clock.now(), webhook_url=url, idempotency_key=key)
    created = await store.insert_job(job, body_hash=key.encode(), now=clock.now(),
                                     idempotency_ttl_s=60)
    return created.job_id


async def test_an_idle_dispatcher_sends_a_finished_job_s_webhook_without_a_claim(
        store, clock, receiver, tenant, wired, monkeypatch):
    pool, dispatcher = wired()
    await until(lambda: not dispatcher._backlog, "the first round to find nothing due")
    claims = ClaimCounter(store, monkeypatch)
    job_id = await submit(store, clock, receiver.url(), "k")
    assert await pool.run_once() == 1
    await until(lambda: receiver.requests, "the webhook")
    await dispatcher.wait_idle()
    [sent] = await store.deliveries_of_job(job_id)
    assert (sent.status, sent.attempts) == (DeliveryStatus.SUCCEEDED, 1)
    assert receiver.requests[0].headers["webhook-id"] == sent.id
    body = json.loads(receiver.requests[0].body)
    assert (body["jobId"], body["status"]) == (job_id, "succeeded")
    assert claims.rounds == 0  # created sending in the finish's commit, then sent
    assert dispatcher.free_slots == dispatcher._webhooks.concurrency


async def test_webhooks_already_due_go_first(store, clock, receiver, tenant, wired):
    receiver.hang_s = 5
    pool, dispatcher = wired(concurrency=1)
    await until(lambda: not dispatcher._backlog, "the first round to find nothing due")
    # queued while the dispatcher was not looking (as `jobd dlq retry` would), then woken
    _, older = await finish_job_with_webhook(store, clock, receiver.url(), key="older")
    dispatcher.wake()
    await until(lambda: receiver.requests, "the older webhook")
    job_id = await submit(store, clock, receiver.url(), "newer")
    assert await pool.run_once() == 1
    await until(lambda: store.deliveries_of_job(job_id), "its delivery")
    [newer] = await store.deliveries_of_job(job_id)
    assert newer.status is DeliveryStatus.PENDING  # no free slot: it waits for the claim
    receiver.release.set()
    await until(lambda: len(receiver.requests) == 2, "the newer webhook")
    await dispatcher.wait_idle()
    assert [r.headers["webhook-id"] for r in receiver.requests] == [older, newer.id]
    assert (await delivery(store, newer.id)).status is DeliveryStatus.SUCCEEDED


async def test_a_webhook_queued_while_every_slot_is_busy_goes_out_when_one_frees(
        store, clock, receiver, tenant, wired):
    receiver.hang_s = 5
    pool, dispatcher = wired(concurrency=1)
    await until(lambda: not dispatcher._backlog, "the first round to find nothing due")
    await submit(store, clock, receiver.url(), "first")
    assert await pool.run_once() == 1
    await until(lambda: receiver.requests, "the first webhook")  # sent at once; it hangs
    # a job that failed for good: its webhook is queued pending, and the pool says so
    _, queued = await finish_job_with_webhook(store, clock, receiver.url(), key="second")
    job = ClaimedJob(id="job_y", tenant_id="acme", type="noop", payload="{}", attempt=1,
                     max_attempts=1, timeout_seconds=None, webhook_url=receiver.url())
    dispatcher.finished(job, JobStatus.FATAL, None, False)
    await until(lambda: dispatcher._backlog, "the round that found no free slot")
    assert len(receiver.requests) == 1
    assert (await delivery(store, queued)).status is DeliveryStatus.PENDING
    receiver.release.set()  # the slot frees: the queued one is claimed now, not at the poll
    await until(lambda: len(receiver.requests) == 2, "the queued webhook", timeout_s=2)
    await dispatcher.wait_idle()
    assert (await delivery(store, queued)).status is DeliveryStatus.SUCCEEDED


async def test_a_backlog_keeps_new_webhooks_in_the_queue(store, clock, receiver, tenant,
                                                         make_dispatcher):
    dispatcher = make_dispatcher()
    await finish_job_with_webhook(store, clock, receiver.url(), key="due")
    job = ClaimedJob(id="job_x", tenant_id="acme", type="noop", payload="{}", attempt=1,
                     max_attempts=1, timeout_seconds=None, webhook_url=receiver.url())
    assert dispatcher.reserve(job, JobStatus.SUCCEEDED, T0, "{}", None) is None  # not known yet
    assert await round_(dispatcher) == 1  # the due one is sent; nothing else is due
    direct = dispatcher.reserve(job, JobStatus.SUCCEEDED, T0, "{}", None)
    assert direct is not None and dispatcher.free_slots == dispatcher._webhooks.concurrency - 1
    dispatcher.finished(job, None, direct, False)  # the finish failed: the slot comes back
    assert dispatcher.free_slots == dispatcher._webhooks.concurrency
    dispatcher.wake()  # something was queued: new ones wait behind it again
    assert dispatcher.reserve(job, JobStatus.SUCCEEDED, T0, "{}", None) is None


async def claimed_with_a_slot(store: Backend, clock: FakeClock, dispatcher: Dispatcher,
                              url: str) -> tuple[ClaimedJob, DirectDelivery]:
    """A job claimed by owner "o", about to succeed, and the slot its webhook got."""
    assert await round_(dispatcher) == 0  # nothing due: no backlog
    await submit(store, clock, url, "k")
    [job] = (await store.claim_jobs(rotation=Rotation(), now=clock.now(), limit=1, owner="o",
                                    lease_s=60)).jobs
    direct = dispatcher.reserve(job, JobStatus.SUCCEEDED, clock.now(), '{"ok":true}', None)
    assert direct is not None
    return job, direct


async def test_a_fenced_out_finish_creates_no_delivery_and_sends_nothing(
        store, clock, receiver, tenant, make_dispatcher):
    dispatcher = make_dispatcher()
    job, direct = await claimed_with_a_slot(store, clock, dispatcher, receiver.url())
    created = await store.finish_job(job, owner="someone else", status=JobStatus.SUCCEEDED,
                                          now=clock.now(), result_json="{}", direct=direct)
    assert created is False
    dispatcher.finished(job, JobStatus.SUCCEEDED, direct, created)
    await dispatcher.wait_idle()
    assert await store.deliveries_of_job(job.id) == []
    assert receiver.requests == []
    assert dispatcher.free_slots == dispatcher._webhooks.concurrency


async def test_a_webhook_created_sending_by_a_dead_process_is_sent_again(
        store, clock, receiver, tenant, make_dispatcher):
    dispatcher = make_dispatcher()
    job, direct = await claimed_with_a_slot(store, clock, dispatcher, receiver.url())
    assert await store.finish_job(job, owner="o", status=JobStatus.SUCCEEDED,
                                       now=clock.now(), result_json='{"ok":true}', direct=direct)
    # "kill -9" before it was sent: the next start puts it back and sends it, same id
    assert (await delivery(store, direct.id)).status is DeliveryStatus.SENDING
    restarted = make_dispatcher()
    assert await store.release_deliveries(now=clock.now(), all_sending=True) == 1
    assert await round_(restarted) == 1
    assert (await delivery(store, direct.id)).status is DeliveryStatus.SUCCEEDED
    assert [r.headers["webhook-id"] for r in receiver.requests] == [direct.id]
    assert json.loads(receiver.requests[0].body)["jobId"] == job.id


async def test_no_webhook_is_sent_at_once_after_shutdown_began(store, clock, make_dispatcher):
    dispatcher = make_dispatcher()
    assert await round_(dispatcher) == 0
    await dispatcher.shutdown(1)
    job = ClaimedJob(id="job_x", tenant_id="acme", type="noop", payload="{}", attempt=1,
                     max_attempts=1, timeout_seconds=None, webhook_url="http://127.0.0.1:9/h")
    assert dispatcher.reserve(job, JobStatus.SUCCEEDED, T0, "{}", None) is None


@pytest.mark.parametrize(("status", "woken"), [
    (JobStatus.SUCCEEDED, True),
    (JobStatus.FATAL, True),
    (JobStatus.CANCELLED, True),
    (JobStatus.RETRY, False),  # not final: no webhook yet
    (None, False),             # the write failed: nothing was queued
])
def test_a_job_finished_with_its_webhook_queued_wakes_the_dispatcher(store, clock, config,
                                                                     status, woken):
    dispatcher = Dispatcher(store=store, clock=clock, config=config)
    job = ClaimedJob(id="job_x", tenant_id="acme", type="noop", payload="{}", attempt=1,
                     max_attempts=3, timeout_seconds=None, webhook_url="http://127.0.0.1:9/h")
    dispatcher.finished(job, status, None, False)
    assert dispatcher._wake.is_set() is woken


async def test_the_pool_tells_the_dispatcher_only_of_jobs_with_a_webhook(store, clock, tenant,
                                                                        wired):
    pool, dispatcher = wired()
    told: list[tuple[str, JobStatus | None]] = []
    dispatcher.finished = lambda job, status, direct, created: told.append((job.id, status))
    with_hook = await submit(store, clock, "http://127.0.0.1:9/hook", "a")
    await submit(store, clock, None, "b")  # type: ignore[arg-type]
    assert await pool.run_once() == 2
    await until(lambda: pool.idle, "both jobs")
    assert told == [(with_hook, JobStatus.SUCCEEDED)]
