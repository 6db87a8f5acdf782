"""Database rows as jobd's records, for both backends: a row is anything indexed by
column name (``sqlite3.Row``, ``asyncpg.Record``) holding the columns of jobd's schema,
which both backends share (``tests/store_pg/test_pg_migrations.py`` checks it)."""

from __future__ import annotations

from typing import Any

from jobd.models import Delivery, DeliveryAttempt, DeliveryStatus, Job, JobStatus, Tenant
from jobd.webhook_body import build_body


def job(row: Any) -> Job:
    return Job(
        id=row["id"], tenant_id=row["tenant_id"], type=row["type"], payload=row["payload"],
        status=JobStatus(row["status"]), priority=row["priority"], attempts=row["attempts"],
        max_attempts=row["max_attempts"], timeout_seconds=row["timeout_seconds"],
        run_at=row["run_at"], next_run_at=row["next_run_at"],
        cancel_requested=bool(row["cancel_requested"]), result=row["result"],
        last_error=row["last_error"], webhook_url=row["webhook_url"],
        created_at=row["created_at"], started_at=row["started_at"],
        completed_at=row["completed_at"], updated_at=row["updated_at"], seq=row["seq"],
        errors=row["errors"],
    )


def tenant(row: Any) -> Tenant:
    return Tenant(
        id=row["id"], api_key_prefix=row["api_key_prefix"],
        webhook_secret=row["webhook_secret"], rate=row["rate"], burst=row["burst"],
        max_concurrency=row["max_concurrency"], disabled=bool(row["disabled"]),
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


def delivery(row: Any) -> Delivery:
    return Delivery(
        id=row["id"], job_id=row["job_id"], tenant_id=row["tenant_id"], url=row["url"],
        body=bytes(row["body"]), status=DeliveryStatus(row["status"]),
        attempts=row["attempts"], next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"], last_status_code=row["last_status_code"],
        created_at=row["created_at"], updated_at=row["updated_at"],
        delivered_at=row["delivered_at"], dead_at=row["dead_at"],
    )


def attempt(row: Any) -> DeliveryAttempt:
    return DeliveryAttempt(delivery_id=row["delivery_id"], attempted_at=row["attempted_at"],
                           status_code=row["status_code"], error=row["error"],
                           duration_ms=row["duration_ms"])


def finished_body(row: Any) -> bytes:
    """The webhook body of a job row just finished (a ``RETURNING`` row)."""
    return build_body(job_id=row["id"], job_type=row["type"], status=row["status"],
                      attempts=row["attempts"], payload_json=row["payload"],
                      completed_at=row["completed_at"], result_json=row["result"],
                      error=row["last_error"])
