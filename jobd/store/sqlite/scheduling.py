"""Job transitions for the scheduler and workers: claim, finish, retry, rescue.

Every finishing write is fenced: it names the attempt and the lease owner, so
a worker whose lease was taken away cannot overwrite a newer outcome.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import orjson

from jobd.credentials import new_delivery_id
from jobd.models import ClaimedJob, JobStatus
from jobd.store.backend import ClaimRound, DirectDelivery, Rotation
from jobd.store.sqlite.outbox import enqueue_delivery
from jobd.store.sqlite.queries import Q, run_rows
from jobd.webhook_body import claimed_job_body


def claim_rotating(conn: sqlite3.Connection, rotation: Rotation, *, now: float, limit: int,
                   owner: str, lease_s: float) -> ClaimRound:
    """:func:`claim_due_jobs` from where ``rotation`` stands, moving it on."""
    round_ = claim_due_jobs(conn, now=now, limit=limit, owner=owner, lease_s=lease_s,
                            after_tenant=rotation.after)
    rotation.after = round_.last_tenant
    return round_


def claim_due_jobs(conn: sqlite3.Connection, *, now: float, limit: int, owner: str,
                   lease_s: float, after_tenant: str | None = None) -> ClaimRound:
    """Claim up to ``limit`` due jobs, round-robin across tenants.

    Each tenant with waiting jobs gets its best job before any tenant gets a
    second one; within a tenant, higher priority and then earlier due time go
    first. A tenant's ``max_concurrency`` caps what it may hold.
    """
    if limit <= 0:
        return ClaimRound([], after_tenant)
    waiting, caps, first, first_room, first_rows = conn.execute(Q["claim_plan"], {
        "after": after_tenant, "limit": limit, "now": now}).fetchone()
    tenants = _rotation(sorted(orjson.loads(waiting)), after_tenant)
    room = {tenant_id: max(0, cap - running) for tenant_id, cap, running in orjson.loads(caps)}
    per_tenant: list[list[Any]] = []
    last_tenant = after_tenant
    for tenant_id in tenants:
        if len(per_tenant) >= limit:
            break
        last_tenant = tenant_id
        allowance = min(limit, room.get(tenant_id, limit))
        if tenant_id == first and allowance == first_room:  # fetched with the plan
            rows = orjson.loads(first_rows)
        elif allowance > 0:
            rows = orjson.loads(conn.execute(Q["due_jobs_of_tenant_packed"], (
                tenant_id, now, allowance)).fetchone()[0])
        else:
            rows = []
        if rows:  # tenants with nothing due or no room do not use up the round
            per_tenant.append(rows)
    chosen = [row for rank in zip_longest(*per_tenant) for row in rank if row is not None][:limit]
    expires = now + lease_s
    if chosen:
        conn.execute(Q["jobs_mark_running"], {"owner": owner, "expires": expires, "now": now,
                                              "seqs": orjson.dumps([r[0] for r in chosen])})
    jobs = [ClaimedJob(r[1], r[2], r[3], r[4], r[5] + 1, r[6], r[7], r[8], now, r[9])
            for r in chosen]  # by position, as due_jobs_of_tenant_packed lists them
    return ClaimRound(jobs, last_tenant, queue_was_empty=not tenants)


def _rotation(tenants: list[str], after: str | None) -> list[str]:
    if after is None:
        return tenants
    later = [t for t in tenants if t > after]
    return later + [t for t in tenants if t <= after]


def finish_job(conn: sqlite3.Connection, job: ClaimedJob, *, owner: str, status: JobStatus,
               now: float, result_json: str | None = None, error: str | None = None) -> bool:
    """Move the job to a final status (and queue its webhook); False if fenced out."""
    rows = conn.execute(Q["job_finish_running"], {
        "id": job.id, "attempt": job.attempt, "owner": owner, "status": status.value,
        "now": now, "error": error, "result": result_json,
    }).fetchall()
    for row in rows:
        enqueue_delivery(conn, row, now)
    return bool(rows)


@dataclass(slots=True)
class Finish:
    job: ClaimedJob
    status: JobStatus
    now: float
    result_json: str | None = None
    error: str | None = None
    direct: DirectDelivery | None = None  # its webhook, created sending (needs a webhook_url)


def finish_each(conn: sqlite3.Connection, items: list[Finish], *,
                owner: str) -> list[tuple[bool, Any]]:
    """:func:`finish_jobs` as a group of the group-commit writer: one outcome per item,
    True when that job was finished (its claim was still current; with a direct
    delivery, that delivery was then created ``sending``)."""
    finished = finish_jobs(conn, items, owner=owner)
    if finished == len(items):  # none was fenced out (the common case): no more reading
        return [(True, True)] * len(items)
    return [(True, done) for done in _finished_now(conn, items)]


def _finished_now(conn: sqlite3.Connection, items: list[Finish]) -> list[bool]:
    """Which items :func:`finish_jobs` just finished, when some were fenced out: the
    rows that now hold exactly what each finish wrote (no other transition writes a
    worker's outcome, error and time). The same job twice: only its first finish."""
    found = conn.execute(Q["jobs_outcomes"], (orjson.dumps([f.job.id for f in items]).decode(),))
    now = {r["id"]: (r["status"], r["attempts"], r["completed_at"], r["result"], r["last_error"],
                     r["lease_owner"]) for r in found.fetchall()}
    done: list[bool] = []
    for f in items:
        written = (f.status.value, f.job.attempt, f.now, f.result_json, f.error, None)
        done.append(now.get(f.job.id) == written)
        if done[-1]:
            del now[f.job.id]
    return done


def _webhook_row(f: Finish, url: str) -> tuple[object, ...]:
    if f.direct is not None:
        return (f.direct.id, f.job.id, f.job.tenant_id, url, f.direct.body, f.now,
                f.job.attempt, f.direct.lease_expires_at)
    body = claimed_job_body(f.job, f.status, f.now, f.result_json, f.error)
    return (new_delivery_id(), f.job.id, f.job.tenant_id, url, body, f.now, f.job.attempt, None)


def finish_jobs(conn: sqlite3.Connection, items: list[Finish], *, owner: str) -> int:
    """:func:`finish_job` for many jobs in one go: one statement for their webhooks (if
    any) and one for the jobs, both fenced. The webhooks go first, while the fence can
    still be read: a job whose claim is no longer current gets neither. No savepoint:
    each statement it would take gives up the GIL, and the writer then waits for the
    event loop to hand it back. Returns how many were finished."""
    webhooks = [_webhook_row(f, url) for f in items if (url := f.job.webhook_url) is not None]
    if webhooks:
        run_rows(conn, "deliveries_insert_if_held", webhooks, owner)
    return run_rows(conn, "jobs_finish_running_many", [
        (f.job.id, f.status.value, f.result_json, f.error, f.now, f.job.attempt) for f in items
    ], owner)


def schedule_retry(conn: sqlite3.Connection, job: ClaimedJob, *, owner: str, now: float,
                   next_run_at: float, error: str) -> bool:
    cur = conn.execute(Q["job_retry_running"], {
        "id": job.id, "attempt": job.attempt, "owner": owner, "now": now,
        "next_run_at": next_run_at, "error": error,
    })
    return cur.rowcount == 1


def requeue_job(conn: sqlite3.Connection, job: ClaimedJob, *, owner: str, now: float,
                reason: str) -> bool:
    """Put a job back without judging it (shutdown): it runs again as soon as possible."""
    cur = conn.execute(Q["job_requeue_running"], {
        "id": job.id, "attempt": job.attempt, "owner": owner, "now": now, "error": reason,
    })
    return cur.rowcount == 1


def extend_leases(conn: sqlite3.Connection, job_ids: list[str], *, owner: str,
                  expires: float) -> list[str]:
    """Heartbeat for live jobs; returns the ids whose cancellation was requested, in the
    order given."""
    if not job_ids:
        return []
    found = conn.execute(Q["job_extend_leases"], {
        "ids": orjson.dumps(job_ids).decode(), "owner": owner, "expires": expires,
    }).fetchall()
    asked = {r["id"] for r in found if r["cancel_requested"]}
    return [job_id for job_id in dict.fromkeys(job_ids) if job_id in asked]


def rescue_orphans(conn: sqlite3.Connection, *, now: float, all_running: bool) -> dict[str, int]:
    """Running jobs nobody holds any more go back to ``retry`` (or ``fatal`` if that
    was their last attempt). At startup ``all_running`` takes every running job,
    since no other process can be running them."""
    counts = {"retry": 0, "fatal": 0}
    query = Q["jobs_running_all"] if all_running else Q["jobs_lease_expired"]
    for row in conn.execute(query, {"now": now}).fetchall():
        why = "process died" if all_running else "lease expired"
        if row["attempts"] >= row["max_attempts"]:
            error = f"attempt {row['attempts']} was interrupted ({why}) and it was the last one"
            for finished in conn.execute(Q["job_orphan_to_fatal"],
                                         {"id": row["id"], "now": now, "error": error}).fetchall():
                enqueue_delivery(conn, finished, now)
            counts["fatal"] += 1
        else:
            error = f"attempt {row['attempts']} was interrupted ({why}); retrying"
            conn.execute(Q["job_orphan_to_retry"], {"id": row["id"], "now": now, "error": error})
            counts["retry"] += 1
    return counts
