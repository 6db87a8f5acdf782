"""Running one attempt of one job and naming its outcome (a closed set)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from jobd.handlers.base import JobContext, PermanentError, Services
from jobd.handlers.registry import Registry
from jobd.models import ClaimedJob

MAX_ERROR_CHARS = 500


@dataclass(slots=True)
class Succeeded:
    result_json: str


@dataclass(slots=True)
class Failed:
    error: str
    permanent: bool = False


@dataclass(slots=True)
class TimedOut:
    error: str


@dataclass(slots=True)
class Cancelled:
    error: str


@dataclass(slots=True)
class Interrupted:
    """The daemon stopped the attempt (shutdown); the job itself did nothing wrong."""

    error: str


Outcome = Succeeded | Failed | TimedOut | Cancelled | Interrupted


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


async def run_attempt(job: ClaimedJob, *, registry: Registry, services: Services,
                      default_timeout_s: float) -> Succeeded | Failed | TimedOut:
    """Run the handler under the attempt's timeout. Cancellation propagates to the caller."""
    job_type = registry.get(job.type)
    if job_type is None:
        return Failed(f"no handler is registered for type {job.type!r}", permanent=True)
    try:
        payload = job_type.payload_model.model_validate_json(job.payload)
    except ValidationError as exc:
        return Failed(f"payload no longer valid for {job.type!r}: {exc.error_count()} error(s)",
                      permanent=True)
    ctx = JobContext(job_id=job.id, tenant_id=job.tenant_id, attempt=job.attempt,
                     max_attempts=job.max_attempts, services=services)
    timeout_s = job.timeout_seconds or default_timeout_s
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            result = await job_type.handler(payload, ctx)
    except TimeoutError as exc:
        if deadline.expired():
            return TimedOut(f"attempt timed out after {timeout_s:g}s")
        return Failed(describe(exc))
    except PermanentError as exc:
        return Failed(describe(exc), permanent=True)
    except Exception as exc:
        return Failed(describe(exc))
    try:
        return Succeeded(orjson.dumps(result).decode())
    except TypeError as exc:
        return Failed(f"handler returned a result that is not JSON: {exc}", permanent=True)
