"""The webhook dispatcher: sends due deliveries, signed, and records every attempt.

``run_once`` puts back deliveries whose lease ran out, claims due ones for the
free slots (``webhooks.concurrency``) and starts a send for each. ``run``
repeats it whenever it is woken (a job finished with a webhook, a send
finished), when the next retry falls due, and every ``workers.poll_interval``
as a fallback -- which is how deliveries written by the API's cancel, by the
lifeline's rescue or by ``jobd dlq retry`` are noticed.

A job that succeeds while a slot is free and no delivery waits for one does not
wait for a claim: :meth:`Dispatcher.reserve` holds the slot, the finish creates
its delivery already ``sending`` under that lease (in the job's own commit), and
:meth:`Dispatcher.finished` sends it once that is committed. Under load, once
every slot is taken, new deliveries queue and are claimed oldest first until a
claim round finds fewer due than it asked for.

One attempt: ``netguard.check_url``, then one POST of the stored body bytes
through :mod:`~jobd.runtime.webhook_client` (kept-alive connections, every address
checked, no redirects, no proxies, the answer bounded by :mod:`jobd.outbound`),
``webhooks.timeout`` in total, at most :data:`MAX_READ_BYTES` of the answer kept.
A 2xx is delivered; anything else is a failure, retried after
``webhooks.retry_delays`` and then dead-lettered (see :func:`retry_at`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jobd import __version__, netguard
from jobd.clock import Clock
from jobd.config import Config
from jobd.credentials import new_delivery_id
from jobd.models import FINAL_STATUSES, ClaimedJob, DeliveryStatus, JobStatus
from jobd.retry import write_again
from jobd.runtime.webhook_client import WebhookClient, webhook_client
from jobd.signing import signature_headers
from jobd.store.backend import Backend, ClaimedDelivery, DirectDelivery
from jobd.supervisor import Supervisor
from jobd.webhook_body import claimed_job_body

log = logging.getLogger("jobd.dispatcher")

LEASE_MARGIN_S = 30.0  # a claim outlives webhooks.timeout by this much before it is rescued
MAX_READ_BYTES = 1024  # of a receiver's answer; only an excerpt ends up in last_error
MAX_ERROR_BODY_CHARS = 200
MAX_ERROR_CHARS = 300
CLEANUP_S = 1.0  # at shutdown, after the grace: cancelled sends put back, outcomes written
USER_AGENT = f"jobd/{__version__}"


# policy (pure) -------------------------------------------------------------------------

def retry_at(attempts: int, retry_delays: Sequence[float], now: float) -> float | None:
    """When to try again after the ``attempts``-th failed attempt of the current budget.

    With delays ``(30, 60, 120)``: after attempt 1 → now + 30, 2 → + 60, 3 → + 120,
    and after attempt 4 → None, the DLQ (one delivery plus 3 retries).
    """
    if 1 <= attempts <= len(retry_delays):
        return now + retry_delays[attempts - 1]
    return None


def request_headers(delivery: ClaimedDelivery, secret: str, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signature_headers(secret, delivery.id, timestamp, delivery.body),
    }


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_failure(exc: BaseException, timeout_s: float) -> str:
    """A one-line reason for a request that got no usable answer (no URL, no secrets)."""
    seen: BaseException | None = exc
    while seen is not None:  # a refusal may come wrapped in another error
        if isinstance(seen, netguard.BlockedAddress):
            return _shorten(f"refused URL: {seen}", MAX_ERROR_CHARS)
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g}s"
    return _shorten(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS)


def describe_status(status: int, excerpt: bytes) -> str:
    note = " (redirects are not followed)" if 300 <= status < 400 else ""
    message = f"HTTP {status}{note}"
    detail = _shorten(excerpt.decode("utf-8", errors="replace"), MAX_ERROR_BODY_CHARS)
    return f"{message}: {detail}" if detail else message


# one attempt ---------------------------------------------------------------------------

@dataclass(slots=True)
class AttemptResult:
    status_code: int | None
    error: str | None  # None: delivered
    duration_ms: float


async def send(poster: WebhookClient, delivery: ClaimedDelivery, *, timestamp: int,
               timeout_s: float, allow_private: bool) -> AttemptResult:
    """POST one delivery; never raises for a failed attempt."""
    started = time.perf_counter()

    def result(status_code: int | None, error: str | None) -> AttemptResult:
        return AttemptResult(status_code, error, (time.perf_counter() - started) * 1000)

    if delivery.secret is None:
        return result(None, f"tenant {delivery.tenant_id!r} does not exist; cannot sign")
    try:
        netguard.check_url(delivery.url, allow_private=allow_private)
        headers = request_headers(delivery, delivery.secret, timestamp)
        status, excerpt = await poster.post(delivery.url, delivery.body, headers.items(),
                                            timeout_s=timeout_s, read_limit=MAX_READ_BYTES)
    except Exception as exc:  # any failure to get an answer is a failed attempt
        return result(None, describe_failure(exc, timeout_s))
    if 200 <= status < 300:
        return result(status, None)
    return result(status, describe_status(status, excerpt))


# the loop ------------------------------------------------------------------------------

class Dispatcher:
    """See the module docstring. ``owner`` names this node's sends in the database (nodes
    sharing it put a dead node's sends back by that name)."""

    def __init__(self, *, store: Backend, clock: Clock, config: Config,
                 owner: str | None = None) -> None:
        self._store = store
        self._owner = owner
        self._clock = clock
        self._webhooks = config.webhooks
        self._poll_interval_s = config.workers.poll_interval
        self._poster = webhook_client(fast=config.webhooks.fast_client,
                                      allow_private=config.webhooks.allow_private_networks)
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._recording: set[asyncio.Task[None]] = set()  # answer in, outcome being written
        self._reserved = 0  # slots held for deliveries being created sending (see reserve)
        # Deliveries may be waiting for a slot: new ones then queue behind them, for the
        # claim. Set when every slot is taken and by wake() (written elsewhere: a cancel,
        # a retry); cleared by a claim round that found fewer due than it asked for.
        self._backlog = True
        self._changes = 0  # wake() calls: a round's "nothing due" holds only if none came
        self._wake = asyncio.Event()
        self._claiming = True
        self._next_rescue_at = float("-inf")
        self.on_attempt: Callable[[str, float], None] | None = None  # (outcome, seconds): metrics
        # Nodes sharing a database (set by the daemon): whether this node may take work now
        # (its heartbeats go through), whether it leads (only the leader puts back sends
        # whose lease ran out), and ``only_sender``: no other process sends from this
        # database, so at shutdown every delivery left ``sending`` is this one's to put
        # back (else the node's leaving puts back its own).
        self.may_claim: Callable[[], bool] | None = None
        self.leads: Callable[[], bool] | None = None
        self.only_sender = True
        # Called when a finish queued a delivery and every slot here is taken: other
        # nodes may send it sooner.
        self.on_queued_without_room: Callable[[], None] | None = None

    @property
    def lease_s(self) -> float:
        return self._webhooks.timeout + LEASE_MARGIN_S

    @property
    def free_slots(self) -> int:
        return self._webhooks.concurrency - len(self._sending) - self._reserved

    # signals from outside ------------------------------------------------------------
    def wake(self) -> None:
        """A delivery may be due now."""
        self._changes += 1
        self._backlog = True
        self._wake.set()

    # deliveries created sending (WorkerPool.webhooks) ----------------------------------
    def reserve(self, job: ClaimedJob, status: JobStatus, now: float, result_json: str | None,
                error: str | None) -> DirectDelivery | None:
        """Hold a slot for the webhook of ``job``, about to be finished, if it can be sent
        at once without overtaking a due one: no backlog and a free slot. The finish then
        creates it ``sending`` under the lease returned, and :meth:`finished` sends it."""
        if not self._claiming or self._backlog or not self._may_claim():
            return None
        if self.free_slots <= 0:
            self._backlog = True  # from now on they queue, and are claimed oldest first
            return None
        self._reserved += 1
        return DirectDelivery(new_delivery_id(),
                              claimed_job_body(job, status, now, result_json, error),
                              now + self.lease_s)

    def finished(self, job: ClaimedJob, status: JobStatus | None,
                 direct: DirectDelivery | None, created: bool) -> None:
        """``job``, which has a webhook, was finished (``status``; None if that write
        failed). Send its delivery if it was created sending; else, if the job reached a
        final status, its delivery was queued pending in that transaction: the next round
        claims it. (If a round that began before that commit comes back short and clears
        the backlog, new webhooks may be sent before it, until that next round.)"""
        if direct is not None:
            self._reserved -= 1
            if created:
                self._send_created(job, direct)
                return
        if status in FINAL_STATUSES:
            self._wake.set()
            if self.on_queued_without_room is not None and self.free_slots <= 0:
                self.on_queued_without_room()

    def _send_created(self, job: ClaimedJob, direct: DirectDelivery) -> None:
        self._sending[direct.id] = asyncio.create_task(
            self._deliver_created(job, direct, self._clock.now()), name=f"webhook:{direct.id}")

    async def _deliver_created(self, job: ClaimedJob, direct: DirectDelivery,
                               attempted_at: float) -> None:
        """Send a delivery created ``sending`` by its job's finish, once the tenant's secret
        is read (if that read fails, the lease runs out and a claim sends it)."""
        assert job.webhook_url is not None
        try:
            secret = await self._store.webhook_secret(job.tenant_id)
        except Exception:
            self._sending.pop(direct.id, None)
            log.exception("webhook delivery %s: could not read the tenant's secret; it is sent "
                          "once its lease expires", direct.id)
            return
        delivery = ClaimedDelivery(id=direct.id, job_id=job.id, tenant_id=job.tenant_id,
                                   url=job.webhook_url, body=direct.body, secret=secret,
                                   attempts=0, lease_expires_at=direct.lease_expires_at)
        await self._deliver(delivery, attempted_at)

    # rounds --------------------------------------------------------------------------
    async def run_once(self, now: float | None = None) -> int:
        """Rescue expired claims, claim due deliveries for the free slots, start sending them."""
        now = self._clock.now() if now is None else now
        if now >= self._next_rescue_at:  # at most once per poll interval, however often woken
            self._next_rescue_at = now + self._poll_interval_s
            rescued = 0
            if self.leads is None or self.leads():
                rescued = await self._store.release_deliveries(now=now, all_sending=False)
            if rescued:
                log.warning("put back %d webhook delivery(ies) whose lease expired", rescued)
        free = self.free_slots
        if free <= 0:
            self._backlog = True  # a freed slot wakes the loop, which claims for it
            return 0
        if not self._claiming or not self._may_claim():
            return 0
        changes = self._changes
        due = await self._store.next_delivery_due()
        if due is None or due > now:
            if self._changes == changes:  # nothing was queued while it was read
                self._backlog = False
            return 0
        claimed = await self._store.claim_deliveries(now=now, limit=free, lease_s=self.lease_s,
                                                     owner=self._owner)
        if len(claimed) < free:
            self._backlog = False
        for delivery in claimed:
            self._start(delivery, now)
        return len(claimed)

    def _may_claim(self) -> bool:
        return self.may_claim is None or self.may_claim()

    def _start(self, delivery: ClaimedDelivery, attempted_at: float) -> None:
        task = asyncio.create_task(self._deliver(delivery, attempted_at),
                                   name=f"webhook:{delivery.id}")
        self._sending[delivery.id] = task

    async def wait_idle(self) -> None:
        """Wait until every send started so far is sent and recorded."""
        while self._sending or self._recording:
            await asyncio.gather(*self._sending.values(), *self._recording,
                                 return_exceptions=True)

    async def run(self, supervisor: Supervisor | None = None) -> None:
        """:meth:`step` until shutdown, under ``supervisor`` (a failed round is retried
        after a pause; see :mod:`jobd.supervisor`)."""
        await (supervisor or Supervisor()).loop("webhook dispatcher", self.step,
                                                running=lambda: self._claiming)

    async def step(self) -> None:
        """One round, then a wait unless it filled every free slot."""
        self._wake.clear()
        free = self.free_slots
        started = await self.run_once()
        if free > 0 and started == free:
            return  # there may be more due right now
        await self._sleep()

    async def _sleep(self) -> None:
        timeout = self._poll_interval_s
        if self.free_slots > 0:
            with contextlib.suppress(Exception):  # a failed read only costs a poll interval
                due = await self._store.next_delivery_due()
                if due is not None:
                    timeout = min(timeout, max(0.0, due - self._clock.now()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    # one delivery --------------------------------------------------------------------
    async def _deliver(self, delivery: ClaimedDelivery, attempted_at: float) -> None:
        task = asyncio.current_task()
        result: AttemptResult | None = None
        try:
            result = await send(self._poster, delivery, timestamp=int(attempted_at),
                                timeout_s=self._webhooks.timeout,
                                allow_private=self._webhooks.allow_private_networks)
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly; its lease will expire",
                          delivery.id)
        finally:
            # The slot is free once the answer is in: the next claim then shares a commit
            # with this outcome (it is queued after it, so it sees the delivery settled).
            # With no backlog there is nothing to claim for it.
            self._sending.pop(delivery.id, None)
            if self._backlog:
                self._wake.set()
        if result is None:
            return
        if task is not None:
            self._recording.add(task)
        try:
            try:
                await self._record(delivery, attempted_at, result)
            except Exception as exc:  # the database is away: again while the lease holds
                log.warning("could not record webhook delivery %s (%s); trying again",
                            delivery.id, str(exc) or type(exc).__name__)
                await write_again(lambda: self._record(delivery, attempted_at, result),
                                  clock=self._clock, give_up_at=delivery.lease_expires_at)
                log.info("recorded webhook delivery %s", delivery.id)
        except Exception:
            log.exception("could not record webhook delivery %s; its lease will expire and it "
                          "is sent again (same webhook-id)", delivery.id)
        finally:
            if task is not None:
                self._recording.discard(task)

    async def _record(self, delivery: ClaimedDelivery, attempted_at: float,
                      result: AttemptResult) -> None:
        now = self._clock.now()
        attempt = delivery.attempts + 1
        retry = None if result.error is None else retry_at(attempt, self._webhooks.retry_delays, now)
        status = await self._store.record_delivery_attempt(
            delivery, now=now, attempted_at=attempted_at, status_code=result.status_code,
            error=result.error, duration_ms=result.duration_ms, retry_at=retry)
        if self.on_attempt is not None:
            outcome = "succeeded" if result.error is None else (
                "dead_lettered" if status is DeliveryStatus.DEAD else "failed")
            self.on_attempt(outcome, result.duration_ms / 1000)
        if status is DeliveryStatus.DEAD:
            log.warning("webhook delivery %s for job %s moved to the DLQ after %d attempt(s): %s",
                        delivery.id, delivery.job_id, attempt, result.error)
        elif status is DeliveryStatus.PENDING:
            self.wake()  # due again at its retry time: the loop's sleep takes it into account
            log.info("webhook delivery %s for job %s failed (attempt %d): %s; next try in %gs",
                     delivery.id, delivery.job_id, attempt, result.error, (retry or now) - now)
        elif status is None:
            log.warning("webhook delivery %s: claim was taken over; attempt recorded only",
                        delivery.id)

    # shutdown ------------------------------------------------------------------------
    async def shutdown(self, grace_s: float, *, cleanup_s: float = CLEANUP_S) -> None:
        """Stop claiming; let sends in flight finish for ``grace_s``, then cancel the rest
        and put them back to ``pending`` (sent again, same id, at the next start). Returns
        within ``grace_s + cleanup_s``: what is not written by then the next start does."""
        self._claiming = False
        self._wake.set()
        tasks = list(self._sending.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in self._sending.values():
            task.cancel()
        remaining = list(self._sending.values())
        try:
            async with asyncio.timeout(cleanup_s):
                if self._recording:
                    await asyncio.wait(list(self._recording))
                if remaining:
                    await asyncio.wait(remaining)
                if remaining and self.only_sender:  # every `sending` one is ours
                    await self._store.release_deliveries(now=self._clock.now(),
                                                         all_sending=True)
        except Exception as exc:  # TimeoutError, or the write failed
            log.warning("could not put interrupted webhook sends back (%s); the next start "
                        "will", exc or type(exc).__name__)
        if remaining:
            log.info("%d webhook send(s) interrupted by shutdown; sent again at the next start",
                     len(remaining))

    async def close(self) -> None:
        """Cancel sends still in flight (after a failed start) and outcomes still being
        written, and close the connections."""
        tasks = [*self._sending.values(), *self._recording]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._poster.close()
