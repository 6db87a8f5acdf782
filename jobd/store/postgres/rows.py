"""Rows as jobd's records, and the webhook body of a finished job (built by
:func:`jobd.webhook_body.build_body`, the same bytes on every backend)."""

from __future__ import annotations

from typing import Any

from jobd.models import (
    ClaimedJob,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    JobStatus,
    Tenant,
)
from jobd.webhook_body import build_body


def tenant(row: Any) -> Tenant:
    return Tenant(
        id=row["id"], api_key_prefix=row["api_key_prefix"],
        webhook_secret=row["webhook_secret"], rate=row["rate"], burst=row["burst"],
        max_concurrency=row["max_concurrency"], disabled=row["disabled"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


def delivery(row: Any) -> Delivery:
    return Delivery(
        id=row["id"], job_id=row["job_id"], tenant_id=row["tenant_id"], url=row["url"],
        body=row["body"], status=DeliveryStatus(row["status"]), attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"], last_error=row["last_error"],
        last_status_code=row["last_status_code"], created_at=row["created_at"],
        updated_at=row["updated_at"], delivered_at=row["delivered_at"], dead_at=row["dead_at"],
    )


def attempt(row: Any) -> DeliveryAttempt:
    return DeliveryAttempt(delivery_id=row["delivery_id"], attempted_at=row["attempted_at"],
                           status_code=row["status_code"], error=row["error"],
                           duration_ms=row["duration_ms"])


def finished_body(row: Any) -> bytes:
    """The webhook body of a job row just finished (a ``RETURNING`` row)."""
    return build_body(
        job_id=row["id"], job_type=row["type"], status=row["status"],
        attempts=row["attempts"], payload_json=row["payload"],
        completed_at=row["completed_at"], result_json=row["result"],
        error=row["last_error"] if row["status"] != JobStatus.SUCCEEDED else None)


def claimed_body(job: ClaimedJob, status: JobStatus, now: float, result_json: str | None,
                 error: str | None) -> bytes:
    """The webhook body ``job`` will have once finished as ``status`` at ``now``: what
    :func:`finished_body` builds from the row, from what the worker knows."""
    return build_body(job_id=job.id, job_type=job.type, status=status.value,
                      attempts=job.attempt, payload_json=job.payload, completed_at=now,
                      result_json=result_json,
                      error=error if status is not JobStatus.SUCCEEDED else None)
