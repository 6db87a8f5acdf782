"""The scheduler loop and the worker pool.

``run_once`` claims one round of due jobs for the free slots and starts a task
for each; ``run`` repeats it whenever it is woken (a job was created, a slot
freed, a retry became due) and every ``poll_interval`` as a fallback, which is
also how changes made by the CLI are noticed.

A job created while the queue is empty and a slot is free does not wait for a
claim: :meth:`WorkerPool.reserve` holds the slot, the job is inserted already
running under a :class:`~jobd.models.StartLease`, and :meth:`WorkerPool.follow`
starts it once that insert is committed. Nothing else was waiting, so no job is
overtaken; when the queue is not known to be empty, jobs go through the claim.

Slots freed while the loop's claim is in flight are claimed at once by a second
claim beside it (at most two are in flight), not after the first comes back. So
jobs that finish at different moments are still claimed in the next group
commit; with one claim at a time, a pool whose jobs started in two groups would
refill each group on alternate commits, at half the throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from jobd.clock import Clock
from jobd.config import Config
from jobd.handlers.base import Services
from jobd.handlers.registry import Registry
from jobd.models import ClaimedJob, IdempotentResult, JobStatus, NewJob, StartLease
from jobd.retry import RetryAt, decide, write_again
from jobd.runtime.execution import (
    Cancelled,
    Failed,
    Interrupted,
    Outcome,
    Succeeded,
    TimedOut,
    run_attempt,
)
from jobd.store.backend import Backend, ClaimRound, DirectDelivery, Rotation
from jobd.supervisor import Supervisor

log = logging.getLogger("jobd.workers")

_MAX_CLAIMS = 2  # in flight at once: the loop's, and one beside it for slots freed meanwhile
CLEANUP_S = 1.0  # at shutdown, after the grace: jobs cancelled and their outcomes written


@dataclass
class _Running:
    job: ClaimedJob
    task: asyncio.Task[None]
    stop_reason: str | None = None  # "cancel" or "shutdown" once we asked it to stop


class WorkerPool:
    def __init__(self, *, store: Backend, registry: Registry, services: Services, clock: Clock,
                 config: Config, owner: str, rng: random.Random | None = None) -> None:
        self._store = store
        self._registry = registry
        self._services = services
        self._clock = clock
        self._config = config
        self.owner = owner
        self._rng = rng or random.Random()
        self._running: dict[str, _Running] = {}
        self._recording: set[asyncio.Future[Any]] = set()  # outcome known, being written
        # Outcomes whose write failed, written again (their leases are still extended)
        self._unwritten: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._next_due: float | None = None
        self._rotation = Rotation()
        self._claiming = True
        self._claims = 0  # claims in flight, and the slots they asked for
        self._claim_slots = 0
        self._no_claims = asyncio.Event()
        self._no_claims.set()
        self._side_claim_soon = False
        self._polled = True  # the loop's last wait ran out (rather than being woken)
        # The last claim round saw no job queued or waiting for a retry, and nothing was
        # queued since (every wake() clears it; ``_changes`` counts them).
        self._queue_empty = False
        self._changes = 0
        self._reserved = 0  # slots held for jobs being created running (see reserve)
        self._no_reservations = asyncio.Event()
        self._no_reservations.set()
        self.listeners: list[JobListener] = []
        self.webhooks: WebhookHandOff | None = None  # told of every finish of a job with one
        # Whether this node may take work now (nodes sharing a database: its heartbeats go
        # through); None: always. Asked before every claim and direct start.
        self.may_claim: Callable[[], bool] | None = None

    # signals from outside ----------------------------------------------------------
    def wake(self, due_at: float | None = None) -> None:
        """Something may be runnable now (or at ``due_at``)."""
        self._changes += 1
        self._queue_empty = False
        if due_at is not None and due_at > self._clock.now():
            if self._next_due is None or due_at < self._next_due:
                self._next_due = due_at
                self._wake.set()
            return
        self._wake.set()

    def _slot_freed(self) -> None:
        if self._queue_empty:  # there is nothing to claim for it
            return
        if not self._claims:
            self._wake.set()
        elif self._claims < _MAX_CLAIMS and not self._side_claim_soon:
            # Claim beside the one in flight, once for all the slots freed in this step
            # (after their outcomes were handed to the writer: one group commit).
            self._side_claim_soon = True
            asyncio.get_running_loop().call_soon(self._side_claim)
        # else a claim in flight that comes back full wakes the loop (see _claimed)

    def _side_claim(self) -> None:
        self._side_claim_soon = False
        free = self.free_slots
        if free <= 0 or self._queue_empty or not self._may_claim():
            return
        if not self._claims:
            self._wake.set()  # the loop's claim came back meanwhile: the loop takes it
        elif self._claims < _MAX_CLAIMS:
            self._claim(free, side=True)

    def running_ids(self) -> list[str]:
        """The jobs this pool holds: running, or with an outcome still to be written."""
        return [*self._running, *self._unwritten]

    @property
    def idle(self) -> bool:
        """No job running and no outcome waiting to be written."""
        return not self._running and not self._recording

    def cancel(self, job_id: str, reason: str = "cancel") -> bool:
        entry = self._running.get(job_id)
        if entry is None or entry.stop_reason is not None:
            return False
        entry.stop_reason = reason
        entry.task.cancel()
        return True

    # the loop ----------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return (self._config.workers.concurrency - len(self._running) - self._reserved
                - self._claim_slots)

    @property
    def has_room(self) -> bool:
        """A job queued now would be claimed here at once: a slot is free (not held by a
        claim in flight) and this node may claim."""
        return self.free_slots > 0 and self._may_claim()

    # jobs created running ------------------------------------------------------------
    def reserve(self, job: NewJob, *, now: float, capped: bool) -> StartLease | None:
        """Hold a slot for ``job``, about to be created, if it can start at once without
        overtaking anything: the queue is empty, a slot is free, the job is due, and its
        tenant has no concurrency cap (caps are counted by the claim). Pass the lease to
        the insert, then the insert's future to :meth:`follow`."""
        if (not self._queue_empty or capped or job.run_at > now or self.free_slots <= 0
                or not self._may_claim()):
            return None
        self._reserved += 1
        self._no_reservations.clear()
        return StartLease(self.owner, now + self._config.workers.lease_seconds)

    def follow(self, job: NewJob, now: float, created: asyncio.Future[IdempotentResult]) -> None:
        """Start ``job`` once its insert (under a lease from :meth:`reserve`) is committed
        as running; give the slot back if it was not."""
        created.add_done_callback(functools.partial(self._created, job, now))

    def _created(self, job: NewJob, now: float, created: asyncio.Future[IdempotentResult]) -> None:
        self._reserved -= 1
        if not self._reserved:
            self._no_reservations.set()
        failed = created.cancelled() or created.exception() is not None
        result = None if failed else created.result()
        if result is None or not result.started:  # refused, replayed or created queued
            self._slot_freed()
            return
        claimed = ClaimedJob(result.job_id, job.tenant_id, job.type, job.payload, 1,
                             job.max_attempts, job.timeout_seconds, now, now, job.webhook_url)
        task = asyncio.create_task(self._run_job(claimed), name=f"job:{claimed.id}")
        self._running[claimed.id] = _Running(claimed, task)

    async def run_once(self) -> int:
        """Claim one round for the free slots and start them; return how many."""
        free = self.free_slots
        if free <= 0 or not self._may_claim():
            return 0
        return len((await self._claim(free)).jobs)  # _claimed has started them

    def _may_claim(self) -> bool:
        return self._claiming and (self.may_claim is None or self.may_claim())

    def _claim(self, limit: int, *, side: bool = False) -> asyncio.Future[ClaimRound]:
        """Claim up to ``limit`` jobs, holding that many slots until the claim is done."""
        self._claims += 1
        self._claim_slots += limit
        self._no_claims.clear()
        changes = self._changes  # a job announced from now on may not be in its snapshot
        claim = self._store.claim_jobs(now=self._clock.now(), limit=limit, owner=self.owner,
                                       lease_s=self._config.workers.lease_seconds,
                                       rotation=self._rotation)
        # Added before anyone awaits it, so it runs first: jobs are started (and the
        # queue's state known) when an awaiting run_once resumes.
        claim.add_done_callback(functools.partial(self._claimed, limit, changes, side))
        return claim

    def _claimed(self, limit: int, changes: int, side: bool,
                 claim: asyncio.Future[ClaimRound]) -> None:
        self._claims -= 1
        self._claim_slots -= limit
        if not self._claims:
            self._no_claims.set()
        error = None if claim.cancelled() else claim.exception()
        if claim.cancelled() or error is not None:
            if side:  # nobody awaits it (the loop's own claim raises in run_once)
                log.error("a claim failed; the loop claims again", exc_info=error)
                self._wake.set()
            return
        round_ = claim.result()
        self._queue_empty = round_.queue_was_empty and self._changes == changes
        for job in round_.jobs:
            task = asyncio.create_task(self._run_job(job), name=f"job:{job.id}")
            self._running[job.id] = _Running(job, task)
        if len(round_.jobs) == limit and self.free_slots > 0:
            self._wake.set()  # there may be more due, and slots were freed meanwhile

    async def run(self, supervisor: Supervisor | None = None) -> None:
        """The scheduler: :meth:`step` until shutdown, under ``supervisor`` (a failed claim
        is retried after a pause; see :mod:`jobd.supervisor`)."""
        await (supervisor or Supervisor()).loop("scheduler", self.step,
                                                running=lambda: self._claiming)

    async def step(self) -> None:
        """One claim round, then a wait unless it filled every free slot."""
        self._wake.clear()
        free = self.free_slots
        # A freed slot wakes us too; with the queue known to be empty there is nothing
        # to claim, and only the poll looks (for what the CLI may have queued).
        started = 0 if self._queue_empty and not self._polled else await self.run_once()
        if free > 0 and started == free:
            return  # there may be more due right now
        self._polled = await self._sleep()

    async def _sleep(self) -> bool:
        """Wait to be woken or for the poll interval; True if it ran out."""
        timeout = self._config.workers.poll_interval
        if self._next_due is not None:
            until_due = self._next_due - self._clock.now()
            if until_due <= timeout:
                self._next_due = None
                timeout = max(0.0, until_due)
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return True
        return False

    # one job -----------------------------------------------------------------------
    async def _run_job(self, job: ClaimedJob) -> None:
        started = time.perf_counter()
        outcome: Outcome
        try:
            outcome = await run_attempt(job, registry=self._registry, services=self._services,
                                        default_timeout_s=self._config.jobs.timeout)
        except asyncio.CancelledError:
            entry = self._running.get(job.id)
            if entry is None or entry.stop_reason is None:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            outcome = (Cancelled("cancelled while running") if entry.stop_reason == "cancel"
                       else Interrupted("interrupted by shutdown; put back in the queue"))
        # The slot is free as soon as the outcome is known: the next claim then joins the
        # same group commit as this job's outcome (one fsync per round, not two). The claim
        # is queued after the outcome, so it already sees this job as finished.
        task = self._running.pop(job.id).task
        self._slot_freed()
        if isinstance(outcome, Succeeded):  # the common case: no second step of this task
            now = self._clock.now()
            webhooks = self._webhooks_of(job)
            direct = None if webhooks is None else webhooks.reserve(
                job, JobStatus.SUCCEEDED, now, outcome.result_json, None)
            recorded = self._store.finish_job(job, owner=self.owner, status=JobStatus.SUCCEEDED,
                                              now=now, result_json=outcome.result_json,
                                              direct=direct)
            self._recording.add(recorded)
            recorded.add_done_callback(functools.partial(self._succeeded, job, outcome, started,
                                                         direct))
            return
        self._recording.add(task)
        try:
            status = await self._record(job, outcome)
        except Exception as exc:
            self._write_later(job, outcome, started, exc)
            return
        finally:
            self._recording.discard(task)
        self._recorded(job, outcome, status, started)

    def _recorded(self, job: ClaimedJob, outcome: Outcome, status: JobStatus | None,
                  started: float) -> None:
        """After an outcome other than a direct success was written."""
        if (webhooks := self._webhooks_of(job)) is not None:
            webhooks.finished(job, status, None, False)
        self._notify(job, outcome, status, started)

    def _write_later(self, job: ClaimedJob, outcome: Outcome, started: float,
                     error: BaseException) -> None:
        """The database did not take an outcome (it is restarting, its disk is full...):
        write it again until it is taken, while this pool still holds the job's lease.
        Writes are fenced, so one that lands after the job was rescued changes nothing,
        and one that was committed although its answer was lost is not repeated."""
        log.warning("could not record the outcome of job %s (%s); trying again", job.id,
                    str(error) or type(error).__name__)
        task = asyncio.get_running_loop().create_task(self._rewrite(job, outcome, started),
                                                      name=f"outcome:{job.id}")
        self._unwritten[job.id] = task
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _rewrite(self, job: ClaimedJob, outcome: Outcome, started: float) -> None:
        try:
            status = await write_again(
                lambda: self._record(job, outcome), clock=self._clock,
                give_up_at=self._clock.now() + self._config.workers.lease_seconds)
        except Exception:
            log.exception("could not record the outcome of job %s; its lease will expire and "
                          "it runs again", job.id)
            return
        finally:
            self._unwritten.pop(job.id, None)
        log.info("recorded the outcome of job %s", job.id)
        self._recorded(job, outcome, status, started)

    def _succeeded(self, job: ClaimedJob, outcome: Succeeded, started: float,
                   direct: DirectDelivery | None, recorded: asyncio.Future[bool]) -> None:
        """The writer committed a success (a callback: see :meth:`_run_job`)."""
        self._recording.discard(recorded)
        error = None if recorded.cancelled() else recorded.exception()
        failed = recorded.cancelled() or error is not None
        if (webhooks := self._webhooks_of(job)) is not None:
            webhooks.finished(job, None if failed else JobStatus.SUCCEEDED, direct,
                              not failed and recorded.result())
        if failed:
            self._write_later(job, outcome, started,
                              error if error is not None else asyncio.CancelledError())
            return
        self._notify(job, outcome, JobStatus.SUCCEEDED, started)

    def _webhooks_of(self, job: ClaimedJob) -> WebhookHandOff | None:
        """The dispatcher, for a job that has a webhook."""
        return None if job.webhook_url is None else self.webhooks

    def _notify(self, job: ClaimedJob, outcome: Outcome, status: JobStatus | None,
                started: float) -> None:
        for listener in self.listeners:
            try:
                listener(job, outcome, status, time.perf_counter() - started)
            except Exception:
                log.exception("a listener failed on job %s", job.id)

    async def _record(self, job: ClaimedJob, outcome: Outcome) -> JobStatus | None:
        """Write an outcome (a success only when it is written again: see :meth:`_run_job`)."""
        now = self._clock.now()
        store, owner = self._store, self.owner
        if isinstance(outcome, Succeeded):
            await store.finish_job(job, owner=owner, status=JobStatus.SUCCEEDED, now=now,
                                   result_json=outcome.result_json)
            return JobStatus.SUCCEEDED
        if isinstance(outcome, Cancelled):
            await store.finish_job(job, owner=owner, status=JobStatus.CANCELLED, now=now,
                                   error=outcome.error)
            return JobStatus.CANCELLED
        if isinstance(outcome, Interrupted):
            await store.requeue_job(job, owner=owner, now=now, reason=outcome.error)
            return JobStatus.QUEUED
        return await self._record_failure(job, outcome, now)

    async def _record_failure(self, job: ClaimedJob, outcome: Failed | TimedOut,
                              now: float) -> JobStatus:
        permanent = isinstance(outcome, Failed) and outcome.permanent
        cfg = self._config.jobs
        decision = decide(attempt=job.attempt, max_attempts=job.max_attempts, permanent=permanent,
                          now=now, base_s=cfg.backoff_base, max_s=cfg.backoff_max, rng=self._rng)
        if isinstance(decision, RetryAt):
            await self._store.retry_job_later(job, owner=self.owner, now=now,
                                              next_run_at=decision.next_run_at,
                                              error=outcome.error)
            self.wake(decision.next_run_at)
            return JobStatus.RETRY
        log.warning("job %s (%s) failed for good after %d attempt(s): %s",
                    job.id, job.type, job.attempt, outcome.error)
        await self._store.finish_job(job, owner=self.owner, status=JobStatus.FATAL, now=now,
                                     error=outcome.error)
        return JobStatus.FATAL

    # shutdown ----------------------------------------------------------------------
    async def shutdown(self, grace_s: float, *, cleanup_s: float = CLEANUP_S) -> None:
        """Stop claiming; let running jobs finish for ``grace_s``, then cancel the rest and
        put them back in the queue. Returns within ``grace_s + cleanup_s``: a job that
        does not stop when cancelled, or an outcome the database does not take by then,
        is left to the next start (which puts back every job left running)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        end = deadline + cleanup_s
        self._claiming = False
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(end):
                await self._no_claims.wait()  # a claim in flight registers its jobs first
                await self._no_reservations.wait()  # and so does a job being created running
        tasks = [entry.task for entry in self._running.values()]
        if tasks:
            log.info("waiting up to %.3gs for %d running job(s)",
                     max(0.0, deadline - loop.time()), len(tasks))
            await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        leftover = list(self._running)
        for job_id in leftover:
            self.cancel(job_id, reason="shutdown")
        remaining = [entry.task for entry in self._running.values()] + list(self._recording)
        if remaining:
            _done, late = await asyncio.wait(remaining, timeout=max(0.0, end - loop.time()))
            if late:
                log.warning("%d job(s) or outcome(s) not settled %gs after the grace; the next "
                            "start puts back what is left running", len(late), cleanup_s)
        for rewrite in list(self._unwritten.values()):
            rewrite.cancel()
        if leftover:
            log.info("put %d unfinished job(s) back in the queue", len(leftover))


class WebhookHandOff(Protocol):
    """The webhook dispatcher, as the pool sees it (:class:`~jobd.runtime.dispatcher.Dispatcher`)."""

    def reserve(self, job: ClaimedJob, status: JobStatus, now: float, result_json: str | None,
                error: str | None) -> DirectDelivery | None:
        """Before a finish: a slot to send the job's webhook in at once, if there is one."""

    def finished(self, job: ClaimedJob, status: JobStatus | None,
                 direct: DirectDelivery | None, created: bool) -> None:
        """After it: the job's status (None if the write failed), and whether its
        delivery was created sending (only with ``direct``)."""


class JobListener(Protocol):
    """Called after each attempt is recorded (metrics, logs)."""

    def __call__(self, job: ClaimedJob, outcome: Outcome, status: JobStatus | None,
                 duration_s: float) -> None: ...
