"""Job transitions for the API and the CLI: create (idempotently), read, cancel, retry, list."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import asyncpg

from jobd.credentials import new_delivery_id, new_job_id
from jobd.errors import IdempotencyConflict, InvalidState, NotFound, StoreUnavailable, Unauthorized
from jobd.models import Delivery, IdempotentResult, Job, JobStatus, NewJob, StartLease
from jobd.store import rows
from jobd.store.outcomes import Outcome, all_else_each
from jobd.store.postgres.deliveries import deliveries_of_job
from jobd.store.postgres.failures import ITEM_ERRORS, TRANSIENT_ERRORS
from jobd.store.postgres.queries import Q, holds_nul

# A key released (or its job pruned) between our insert and our read of its holder sends
# us round again; more rounds than this mean something keeps taking it.
KEY_ROUNDS = 3
LAST_SEQ = 2**63 - 1


@dataclass(slots=True)
class Creation:
    """One ``insert_job`` call waiting for its batch."""

    job: NewJob
    body_hash: bytes
    now: float
    idempotency_ttl_s: float
    api_key_hash: str | None = None  # checked again in the statement when given
    lease: StartLease | None = None  # create it running (only in the batch's statement)


async def insert_jobs(conn: asyncpg.Connection, items: list[Creation]) -> list[Outcome]:
    """Create many jobs, one outcome per item. The common case (live API keys, a key not
    seen before) is one statement for all of them, which also checks the keys; the items
    it did not insert (a key in use or revoked, the same key twice) then go one by one."""
    return await all_else_each(items, functools.partial(_insert_all, conn),
                               functools.partial(_insert_one, conn), item_errors=ITEM_ERRORS,
                               retry_errors=TRANSIENT_ERRORS)


async def _insert_all(conn: asyncpg.Connection, items: list[Creation]) -> list[Outcome | None]:
    ids = [new_job_id() for _ in items]
    inserted = {r[0] for r in await conn.fetch(Q["jobs_insert"], _rows(ids, items))}
    return [(True, IdempotentResult(job_id, c.now, replayed=False, started=c.lease is not None))
            if job_id in inserted else None
            for job_id, c in zip(ids, items, strict=True)]


async def _insert_one(conn: asyncpg.Connection, item: Creation) -> IdempotentResult:
    """Create the job unless its Idempotency-Key already answered: then replay it, or 409
    for a different body; a key older than the TTL is released by its job and taken
    over. The job is created queued (a lease is only honoured by the batch)."""
    job = item.job
    async with conn.transaction():
        if item.api_key_hash is not None and not await conn.fetchval(
                Q["tenant_key_is_live"], job.tenant_id, item.api_key_hash):
            raise Unauthorized("the API key is unknown or was revoked, or the tenant is disabled")
        plain = Creation(job, item.body_hash, item.now, item.idempotency_ttl_s)
        for _ in range(KEY_ROUNDS):
            job_id = new_job_id()
            if await conn.fetch(Q["jobs_insert"], _rows([job_id], [plain])):
                return IdempotentResult(job_id, item.now, replayed=False)
            holder = await conn.fetchrow(Q["job_holding_key"], job.tenant_id, job.idempotency_key)
            if holder is None:  # let go of since the insert: try again
                continue
            if holder["created_at"] + item.idempotency_ttl_s > item.now:
                if holder["body_hash"] != item.body_hash:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {job.idempotency_key!r} was already used with a "
                        "different request body")
                return IdempotentResult(holder["id"], holder["created_at"], replayed=True)
            await conn.execute(Q["job_release_key"], holder["id"])
        raise StoreUnavailable(f"Idempotency-Key {job.idempotency_key!r} kept changing hands; "
                               "try again")


def _rows(ids: list[str], items: list[Creation]) -> list[tuple[Any, ...]]:
    """The rows of ``jobs_insert`` (a ``jobs_insert_row`` each), one per job."""
    return [(job_id, c.job.tenant_id, c.job.type, c.job.payload, c.job.priority,
             c.job.max_attempts, c.job.timeout_seconds, c.job.run_at, c.job.webhook_url,
             c.job.idempotency_key, c.body_hash, c.now, c.api_key_hash,
             c.lease.owner if c.lease else None, c.lease.expires_at if c.lease else None)
            for job_id, c in zip(ids, items, strict=True)]


# reads --------------------------------------------------------------------------------


async def find_job(conn: asyncpg.Connection, job_id: str,
                   tenant_id: str | None = None) -> Job | None:
    if holds_nul(job_id):
        return None
    if tenant_id is None:
        row = await conn.fetchrow(Q["job_get"], job_id)
    else:
        row = await conn.fetchrow(Q["job_get_for_tenant"], job_id, tenant_id)
    return rows.job(row) if row else None


async def job_state(conn: asyncpg.Connection, job_id: str,
                    tenant_id: str) -> tuple[Job, list[Delivery]] | None:
    """The tenant's job and its deliveries (a job without a webhook has none: one read)."""
    job = await find_job(conn, job_id, tenant_id)
    if job is None:
        return None
    return job, await deliveries_of_job(conn, job_id) if job.webhook_url else []


async def list_jobs(conn: asyncpg.Connection, *, tenant_id: str | None = None,
                    status: str | None = None, job_type: str | None = None, limit: int = 50,
                    before_seq: int | None = None) -> list[Job]:
    """Newest first; page with ``before_seq`` (the last row's ``seq``), never OFFSET."""
    found = await conn.fetch(Q["jobs_list"], LAST_SEQ if before_seq is None else before_seq,
                             limit, tenant_id, status, job_type)
    return [rows.job(r) for r in found]


# the operator's transitions --------------------------------------------------------------


async def cancel_job(conn: asyncpg.Connection, job_id: str, *, tenant_id: str | None,
                     now: float) -> Job:
    """A waiting job is cancelled at once (its webhook queued with it); a running one is
    asked to stop."""
    async with conn.transaction():
        job = await _locked(conn, job_id, tenant_id)
        if job.status in (JobStatus.QUEUED, JobStatus.RETRY):
            cancelled = await conn.fetchrow(Q["job_cancel_waiting"], job_id, now)
            await queue_webhook(conn, cancelled, now)
        elif job.status is JobStatus.RUNNING:
            await conn.execute(Q["job_request_cancel"], job_id, now)
        else:
            raise InvalidState(f"job {job_id} is already {job.status.value}; it cannot be cancelled")
        return await _locked(conn, job_id, None)


async def retry_job(conn: asyncpg.Connection, job_id: str, *, tenant_id: str | None,
                    now: float) -> Job:
    """A fatal or cancelled job is queued again, with at least one more attempt."""
    async with conn.transaction():
        job = await _locked(conn, job_id, tenant_id)
        if job.status not in (JobStatus.FATAL, JobStatus.CANCELLED):
            raise InvalidState(f"job {job_id} is {job.status.value}; only fatal or cancelled "
                               "jobs can be retried")
        await conn.execute(Q["job_retry_final"], job_id, now)
        return await _locked(conn, job_id, None)


async def _locked(conn: asyncpg.Connection, job_id: str, tenant_id: str | None) -> Job:
    row = None if holds_nul(job_id) else await conn.fetchrow(Q["job_lock"], job_id)
    if row is None or (tenant_id is not None and row["tenant_id"] != tenant_id):
        raise NotFound(f"job {job_id!r} does not exist")
    return rows.job(row)


async def queue_webhook(conn: asyncpg.Connection, finished: asyncpg.Record | None,
                        now: float) -> None:
    """The webhook of a job row just finished (a ``RETURNING`` row), pending, due now."""
    if finished is None or not finished["webhook_url"]:
        return
    await conn.execute(Q["delivery_insert"], new_delivery_id(), finished["id"],
                       finished["tenant_id"], finished["webhook_url"],
                       rows.finished_body(finished), now)
