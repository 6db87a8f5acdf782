"""The body of a job-finished webhook, serialised once when the job finishes."""

from __future__ import annotations

import orjson

from jobd.clock import to_rfc3339


def build_body(*, job_id: str, job_type: str, status: str, attempts: int, payload_json: str,
               completed_at: float, result_json: str | None, error: str | None) -> bytes:
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
    if error is not None:
        body["error"] = error
    return orjson.dumps(body)
