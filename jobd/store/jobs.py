"""Job transactions for the API and the CLI: create (idempotently), read, cancel, retry."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from jobd.credentials import new_job_id
from jobd.errors import IdempotencyConflict, InvalidState, NotFound, Unauthorized
from jobd.models import IdempotentResult, Job, JobStatus, NewJob, row_to_job
from jobd.store.outbox import enqueue_delivery
from jobd.store.queries import Q

RenderCreated = Callable[[str, float], bytes]


def lookup_idempotent(conn: sqlite3.Connection, tenant_id: str, key: str, body_hash: bytes,
                      now: float) -> IdempotentResult | None:
    """The stored answer for ``key`` if it is still live; 409 if the body differs."""
    rows = conn.execute(Q["idempotency_get"], (tenant_id, key)).fetchall()
    if not rows or rows[0]["expires_at"] <= now:
        return None
    row = rows[0]
    if row["body_hash"] != body_hash:
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was already used with a different request body")
    return IdempotentResult(status=row["response_status"], body=row["response_body"],
                            job_id=row["job_id"], replayed=True)


def insert_job(conn: sqlite3.Connection, job: NewJob, *, body_hash: bytes, now: float,
               idempotency_ttl_s: float, render: RenderCreated,
               api_key_hash: str | None = None) -> IdempotentResult:
    """Create the job unless its Idempotency-Key already answered; one transaction.

    With ``api_key_hash`` the key is checked again inside the transaction, so a key
    rotated or a tenant disabled a moment ago cannot slip through a cache."""
    if api_key_hash is not None and not conn.execute(
            Q["tenant_key_is_live"], (job.tenant_id, api_key_hash)).fetchall():
        raise Unauthorized("the API key is unknown or was revoked, or the tenant is disabled")
    job_id = new_job_id()
    body = render(job_id, now)
    claimed = conn.execute(Q["idempotency_claim"], {
        "tenant_id": job.tenant_id, "key": job.idempotency_key, "body_hash": body_hash,
        "job_id": job_id, "status": 201, "body": body, "expires_at": now + idempotency_ttl_s,
        "now": now,
    }).rowcount
    if not claimed:
        existing = lookup_idempotent(conn, job.tenant_id, job.idempotency_key, body_hash, now)
        assert existing is not None, "a live idempotency row must exist when the claim fails"
        return existing
    conn.execute(Q["job_insert"], (
        job_id, job.tenant_id, job.type, job.payload, job.priority, job.max_attempts,
        job.timeout_seconds, job.run_at, job.run_at, job.webhook_url, job.idempotency_key,
        now, now,
    ))
    return IdempotentResult(status=201, body=body, job_id=job_id, replayed=False)


def find_job(conn: sqlite3.Connection, job_id: str, tenant_id: str | None = None) -> Job | None:
    if tenant_id is None:
        rows = conn.execute(Q["job_get"], (job_id,)).fetchall()
    else:
        rows = conn.execute(Q["job_get_for_tenant"], (job_id, tenant_id)).fetchall()
    return row_to_job(rows[0]) if rows else None


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
    rows = conn.execute(Q[_list_query(conn, tenant_id, status)], {
        "tenant_id": tenant_id, "status": status, "type": job_type, "limit": limit,
        "before": before_seq if before_seq is not None else 2**63 - 1,
    }).fetchall()
    return [row_to_job(r) for r in rows]


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
