"""The body of a job-finished webhook: built here only, from a finished job's fields,
so that the bytes signed and sent are the same whichever path wrote the delivery (the
store's outbox row, or the dispatcher's direct send) and whichever backend runs."""

from __future__ import annotations

import orjson

from jobd.clock import to_rfc3339
from jobd.models import ClaimedJob, JobStatus


def build_body(*, job_id: str, job_type: str, status: str, attempts: int, payload_json: str,
               completed_at: float, result_json: str | None, error: str | None) -> bytes:
    """The JSON body; ``payload_json`` and ``result_json`` go in as their own bytes. A
    succeeded job's body has no ``error``."""
    body: dict[str, object] = {
        "jobId": job_id,
        "type": job_type,
        "status": status,
        "attempts": attempts,
        "payload": orjson.Fragment(payload_json),
        "completedAt": to_rfc3339(completed_at),
    }
    if result_json is not None:
        body["result"] = orjson.Fragment(result_json)
    if error is not None and status != JobStatus.SUCCEEDED:
        body["error"] = error
    return orjson.dumps(body)


def claimed_job_body(job: ClaimedJob, status: JobStatus, now: float, result_json: str | None,
                     error: str | None) -> bytes:
    """The body ``job`` will have once a worker finishes it as ``status`` at ``now``: the
    same bytes the store builds from the finished row."""
    return build_body(job_id=job.id, job_type=job.type, status=status.value,
                      attempts=job.attempt, payload_json=job.payload, completed_at=now,
                      result_json=result_json, error=error)
