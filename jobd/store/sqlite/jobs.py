"""Job transactions for the API and the CLI: create (idempotently), read, cancel, retry."""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass

import orjson

from jobd.credentials import new_job_id
from jobd.errors import IdempotencyConflict, InvalidState, NotFound, Unauthorized
from jobd.models import Delivery, IdempotentResult, Job, JobStatus, NewJob, StartLease
from jobd.store import rows
from jobd.store.outcomes import Outcome, all_else_each, run_now
from jobd.store.sqlite.connection import OneByOne, transaction
from jobd.store.sqlite.deliveries import deliveries_of_job
from jobd.store.sqlite.failures import ITEM_ERRORS
from jobd.store.sqlite.outbox import enqueue_delivery
from jobd.store.sqlite.queries import MAX_ROWS_PER_STATEMENT, Q, run_rows


@dataclass(slots=True)
class Creation:
    """One ``POST /jobs`` waiting for the writer. With ``api_key_hash`` the key is
    checked again inside the transaction, so a key rotated or a tenant disabled a
    moment ago cannot slip through the API's cache."""

    job: NewJob
    body_hash: bytes
    now: float
    api_key_hash: str | None = None
    lease: StartLease | None = None  # create it running (only on the one-statement path)


def insert_jobs(conn: sqlite3.Connection, items: list[Creation], *,
                idempotency_ttl_s: float) -> list[Outcome]:
    """Create many jobs, one outcome per item (a result, or the error for that item).

    The common case (live API keys, no Idempotency-Key seen before) is one statement,
    which also checks the keys. The items it did not insert (a key in use or revoked,
    the same key twice in the batch) then go through :func:`insert_job` one by one,
    each in its own savepoint; the rows it did insert stay. Fewer statements matter
    here: each one gives up the GIL, and the writer then waits for the event loop to
    hand it back.

    The writer may call this outside a transaction (``call_grouped(..., alone=True)``,
    when a batch holds nothing else): the one statement is then a transaction by
    itself, and the items it left are done in one transaction of their own. (Over
    :data:`MAX_ROWS_PER_STATEMENT` items, all of it is one transaction of its own.)

    An item with a ``lease`` is created running (``started`` in its result) by the
    one statement; by :func:`insert_job` it is created queued like the rest."""
    if len(items) > MAX_ROWS_PER_STATEMENT and not conn.in_transaction:
        with transaction(conn):  # more than one statement: not alone
            return insert_jobs(conn, items, idempotency_ttl_s=idempotency_ttl_s)
    one = functools.partial(_insert_one, conn, idempotency_ttl_s)
    with OneByOne(conn, one) as each:
        return run_now(all_else_each(items, functools.partial(_insert_all, conn), each,
                                     item_errors=ITEM_ERRORS))


def _insert_all(conn: sqlite3.Connection, items: list[Creation]) -> list[Outcome | None]:
    """The one statement; None for each item it did not insert."""
    ids = [new_job_id() for _ in items]
    try:
        inserted = run_rows(conn, "jobs_insert_if_key_live", [
            (*_row(job_id, c.job, c.body_hash, c.now), c.api_key_hash,
             *((c.lease.owner, c.lease.expires_at) if c.lease else (None, None)))
            for job_id, c in zip(ids, items, strict=True)
        ])
    except sqlite3.IntegrityError:
        inserted = -1  # that statement was undone (an earlier one of 500 rows was not)
    if inserted == len(items):
        present = set(ids)
    else:
        present = {row[0] for row in conn.execute(Q["jobs_present"],
                                                  (orjson.dumps(ids).decode(),))}
    return [(True, IdempotentResult(job_id, c.now, replayed=False, started=c.lease is not None))
            if job_id in present else None for job_id, c in zip(ids, items, strict=True)]


def _insert_one(conn: sqlite3.Connection, ttl_s: float, item: Creation) -> IdempotentResult:
    return insert_job(conn, item.job, body_hash=item.body_hash, now=item.now,
                      idempotency_ttl_s=ttl_s, api_key_hash=item.api_key_hash)


def insert_job(conn: sqlite3.Connection, job: NewJob, *, body_hash: bytes, now: float,
               idempotency_ttl_s: float,
               api_key_hash: str | None = None) -> IdempotentResult:
    """Create the job unless its Idempotency-Key already answered (then replay, or 409
    for a different body). A key older than ``idempotency_ttl_s`` is taken over."""
    if api_key_hash is not None and not _key_is_live(conn, job.tenant_id, api_key_hash):
        raise Unauthorized("the API key is unknown or was revoked, or the tenant is disabled")
    job_id = new_job_id()
    row = _row(job_id, job, body_hash, now)
    if not conn.execute(Q["job_insert"], row).rowcount:
        holder = conn.execute(Q["job_holding_key"], (job.tenant_id, job.idempotency_key)).fetchall()[0]
        if holder["created_at"] + idempotency_ttl_s > now:
            if holder["body_hash"] != body_hash:
                raise IdempotencyConflict(
                    f"Idempotency-Key {job.idempotency_key!r} was already used with a different "
                    "request body")
            return IdempotentResult(holder["id"], holder["created_at"], replayed=True)
        conn.execute(Q["job_release_key"], (holder["id"],))
        conn.execute(Q["job_insert"], row)
    return IdempotentResult(job_id, now, replayed=False)


def _key_is_live(conn: sqlite3.Connection, tenant_id: str, api_key_hash: str | None) -> bool:
    return bool(conn.execute(Q["tenant_key_is_live"], (tenant_id, api_key_hash)).fetchall())


def _row(job_id: str, job: NewJob, body_hash: bytes, now: float) -> tuple[object, ...]:
    return (job_id, job.tenant_id, job.type, job.payload, job.priority, job.max_attempts,
            job.timeout_seconds, job.run_at, job.run_at, job.webhook_url, job.idempotency_key,
            body_hash, now, now)


def find_job(conn: sqlite3.Connection, job_id: str, tenant_id: str | None = None) -> Job | None:
    if tenant_id is None:
        found = conn.execute(Q["job_get"], (job_id,)).fetchall()
    else:
        found = conn.execute(Q["job_get_for_tenant"], (job_id, tenant_id)).fetchall()
    return rows.job(found[0]) if found else None


def job_state(conn: sqlite3.Connection, job_id: str,
              tenant_id: str) -> tuple[Job, list[Delivery]] | None:
    """The tenant's job and its deliveries (a job without a webhook has none: one read)."""
    job = find_job(conn, job_id, tenant_id)
    if job is None:
        return None
    return job, deliveries_of_job(conn, job_id) if job.webhook_url else []


def get_job(conn: sqlite3.Connection, job_id: str, tenant_id: str | None = None) -> Job:
    job = find_job(conn, job_id, tenant_id)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist")
    return job


def cancel_job(conn: sqlite3.Connection, job_id: str, *, tenant_id: str | None,
               now: float) -> Job:
    """Waiting jobs are cancelled at once; a running one is asked to stop."""
    job = get_job(conn, job_id, tenant_id)
    if job.status in (JobStatus.QUEUED, JobStatus.RETRY):
        for row in conn.execute(Q["job_cancel_waiting"], {"id": job_id, "now": now}).fetchall():
            enqueue_delivery(conn, row, now)
    elif job.status is JobStatus.RUNNING:
        conn.execute(Q["job_request_cancel"], {"id": job_id, "now": now})
    else:
        raise InvalidState(f"job {job_id} is already {job.status.value}; it cannot be cancelled")
    return get_job(conn, job_id)


def retry_job(conn: sqlite3.Connection, job_id: str, *, tenant_id: str | None,
              now: float) -> Job:
    """Run a fatal or cancelled job again (with at least one more attempt)."""
    job = get_job(conn, job_id, tenant_id)
    if job.status not in (JobStatus.FATAL, JobStatus.CANCELLED):
        raise InvalidState(
            f"job {job_id} is {job.status.value}; only fatal or cancelled jobs can be retried")
    conn.execute(Q["job_retry_final"], {"id": job_id, "now": now})
    return get_job(conn, job_id)


def list_jobs(conn: sqlite3.Connection, *, tenant_id: str | None = None,
              status: str | None = None, job_type: str | None = None, limit: int = 50,
              before_seq: int | None = None) -> list[Job]:
    """Newest first; page with ``before_seq`` (the last row's ``seq``), never OFFSET.

    Each status is read through the index that holds it (see ``job_list*`` in
    queries.sql), so a rare status is found without scanning a million rows."""
    found = conn.execute(Q[_list_query(conn, tenant_id, status)], {
        "tenant_id": tenant_id, "status": status, "type": job_type, "limit": limit,
        "before": before_seq if before_seq is not None else 2**63 - 1,
    }).fetchall()
    return [rows.job(r) for r in found]


SORT_WAITING_MAX = 10_000  # a backlog up to this long is sorted; a longer one, walked


def _list_query(conn: sqlite3.Connection, tenant_id: str | None, status: str | None) -> str:
    if status == JobStatus.QUEUED and conn.execute(
            Q["waiting_jobs_capped"], {"cap": SORT_WAITING_MAX}).fetchall()[0][0] > SORT_WAITING_MAX:
        return "job_list" if tenant_id is None else "job_list_of_tenant"
    if status in (JobStatus.QUEUED, JobStatus.RETRY):
        return "job_list_waiting"
    if status == JobStatus.RUNNING:
        return "job_list_running"
    if status in (JobStatus.FATAL, JobStatus.CANCELLED):
        return "job_list_failed"
    # no status, or succeeded (most rows): seq order, by tenant if asked
    return "job_list" if tenant_id is None else "job_list_of_tenant"
