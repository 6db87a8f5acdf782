"""Job transitions for the scheduler and the workers: claim, finish, retry, requeue,
heartbeat, rescue.

Every finishing write is fenced in its WHERE clause: the job's id, ``running``, the
attempt and the lease owner, so a worker whose claim was taken away changes nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import asyncpg

from jobd.credentials import new_delivery_id
from jobd.models import ClaimedJob, JobStatus
from jobd.store.backend import ClaimRound, DirectDelivery
from jobd.store.outcomes import Outcome, all_else_each
from jobd.store.postgres.failures import ITEM_ERRORS, TRANSIENT_ERRORS
from jobd.store.postgres.jobs import queue_webhook
from jobd.store.postgres.queries import Q, changed, storable
from jobd.webhook_body import claimed_job_body


async def claim_jobs(conn: asyncpg.Connection, *, now: float, limit: int, owner: str,
                     lease_s: float, after: str | None) -> ClaimRound:
    """One round of claims, fair across tenants: ``jobd_claim`` (migration 0002)."""
    if limit <= 0:
        return ClaimRound([], after)
    found = await conn.fetch(Q["jobs_claim"], now, limit, owner, now + lease_s, after)
    jobs = [ClaimedJob(r["id"], r["tenant_id"], r["type"], r["payload"], r["attempt"],
                       r["max_attempts"], r["timeout_seconds"], r["due_at"], now,
                       r["webhook_url"])
            for r in found if r["id"] is not None]
    return ClaimRound(jobs, found[0]["last_tenant"], queue_was_empty=found[0]["queue_was_empty"])


@dataclass(slots=True)
class Finish:
    """One ``finish_job`` call waiting for its batch."""

    job: ClaimedJob
    owner: str
    status: JobStatus
    now: float
    result_json: str | None = None
    error: str | None = None
    direct: DirectDelivery | None = None  # its webhook, created sending (needs a webhook_url)


async def finish_jobs(conn: asyncpg.Connection, items: list[Finish]) -> list[Outcome]:
    """Finish many jobs with their webhooks: one statement (``jobs_finish``); each
    outcome says whether that job was finished (its claim was still current)."""
    return await all_else_each(items, functools.partial(_finish_all, conn),
                               functools.partial(_finish_one, conn), item_errors=ITEM_ERRORS,
                               retry_errors=TRANSIENT_ERRORS)


async def _finish_all(conn: asyncpg.Connection, items: list[Finish]) -> list[Outcome | None]:
    finished = {r[0] for r in await conn.fetch(Q["jobs_finish"], _finish_rows(items))}
    outcomes: list[Outcome | None] = []
    for f in items:
        outcomes.append((True, f.job.id in finished))
        finished.discard(f.job.id)  # the same job twice: the second was fenced out
    return outcomes


async def _finish_one(conn: asyncpg.Connection, item: Finish) -> Any:
    [outcome] = await _finish_all(conn, [item])
    assert outcome is not None
    return outcome[1]


def _finish_rows(items: list[Finish]) -> list[tuple[Any, ...]]:
    """The rows of ``jobs_finish`` (a ``jobs_finish_row`` each), one per job, in the order
    of their ids: batches (and lease extensions) that lock jobs in one order cannot
    deadlock each other."""
    return sorted(((f.job.id, f.status.value, f.result_json, storable(f.error), f.now,
                    f.job.attempt, f.owner, *_webhook(f)) for f in items), key=lambda r: r[0])


def _webhook(f: Finish) -> tuple[str | None, bytes | None, float | None]:
    """(delivery id, body, lease) of the job's webhook; all None when it has none."""
    if f.job.webhook_url is None:
        return None, None, None
    if f.direct is not None:
        return f.direct.id, f.direct.body, f.direct.lease_expires_at
    body = claimed_job_body(f.job, f.status, f.now, f.result_json, f.error)
    return new_delivery_id(), body, None


async def retry_job_later(conn: asyncpg.Connection, job: ClaimedJob, *, owner: str, now: float,
                          next_run_at: float, error: str) -> bool:
    status = await conn.execute(Q["job_retry_running"], job.id, job.attempt, owner, now,
                                next_run_at, storable(error))
    return changed(status) == 1


async def requeue_job(conn: asyncpg.Connection, job: ClaimedJob, *, owner: str, now: float,
                      reason: str) -> bool:
    status = await conn.execute(Q["job_requeue_running"], job.id, job.attempt, owner, now,
                                storable(reason))
    return changed(status) == 1


async def extend_leases(conn: asyncpg.Connection, job_ids: list[str], *, owner: str,
                        expires: float) -> list[str]:
    """Heartbeat for the owner's running jobs; the ids whose cancel was asked, in the
    order given."""
    if not job_ids:
        return []
    found = await conn.fetch(Q["jobs_extend_leases"], sorted(job_ids), owner, expires)
    asked = {r["id"] for r in found if r["cancel_requested"]}
    return [job_id for job_id in dict.fromkeys(job_ids) if job_id in asked]


async def rescue_jobs(conn: asyncpg.Connection, *, now: float,
                      all_running: bool) -> dict[str, int]:
    """Running jobs nobody holds go back to ``retry``, or to ``fatal`` (with their
    webhook) when that was their last attempt."""
    why = "process died" if all_running else "lease expired"
    counts = {"retry": 0, "fatal": 0}
    async with conn.transaction():
        for row in await conn.fetch(Q["jobs_rescue"], now, all_running, why):
            counts[row["status"]] += 1
            if row["status"] == JobStatus.FATAL:
                await queue_webhook(conn, row, now)
    return counts
