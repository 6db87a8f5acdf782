"""How jobs look on the wire."""

from __future__ import annotations

from typing import Any

import orjson

from jobd.clock import to_rfc3339
from jobd.models import Delivery, Job, JobStatus

_SCHEDULED = (JobStatus.QUEUED, JobStatus.RETRY)


def job_view(job: Job, deliveries: list[Delivery] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "jobId": job.id,
        "status": job.status.value,
        "attempts": job.attempts,
        "nextRunAt": to_rfc3339(job.next_run_at) if job.status in _SCHEDULED else None,
        "createdAt": to_rfc3339(job.created_at),
        "updatedAt": to_rfc3339(job.updated_at),
        "type": job.type,
        "maxAttempts": job.max_attempts,
        "priority": job.priority,
        "runAt": to_rfc3339(job.run_at),
        "startedAt": to_rfc3339(job.started_at),
        "completedAt": to_rfc3339(job.completed_at),
        "lastError": job.last_error,
        "result": None if job.result is None else orjson.Fragment(job.result),
        "cancelRequested": job.cancel_requested,
        "webhookUrl": job.webhook_url,
    }
    if deliveries:
        latest = deliveries[-1]
        view["webhook"] = {
            "deliveryId": latest.id, "status": latest.status.value, "attempts": latest.attempts,
            "lastError": latest.last_error, "lastStatusCode": latest.last_status_code,
            "deliveredAt": to_rfc3339(latest.delivered_at),
        }
    return view


def created_body(job_id: str, created_at: float) -> bytes:
    return orjson.dumps({"jobId": job_id, "status": "queued", "createdAt": to_rfc3339(created_at)})
