"""Running one attempt of one job and naming its outcome (a closed set)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from jobd.handlers.base import JobContext, PermanentError, Services
from jobd.handlers.registry import Registry
from jobd.models import ClaimedJob

MAX_ERROR_CHARS = 500
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    """The error of a failed attempt as it is stored and shown: at most MAX_ERROR_CHARS,
    and text every database takes (a lone surrogate, as in a message made of undecodable
    bytes, becomes U+FFFD)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class _Deadline:
    """Cancels the current task after ``timeout_s``, like ``asyncio.timeout`` but with
    one ``call_later`` and none of its context-manager bookkeeping. A cancellation from elsewhere (job cancel,
    shutdown) that arrives as well wins, as it does with ``asyncio.timeout``."""

    __slots__ = ("_cancelling", "_fired", "_handle", "_task")

    def __init__(self, timeout_s: float) -> None:
        task = asyncio.current_task()
        assert task is not None, "run_attempt runs in a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._fired = False
        self._handle = asyncio.get_running_loop().call_later(timeout_s, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def took_effect(self) -> bool:
        """On CancelledError: was it this deadline alone? (Its cancel is undone either way.)"""
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() <= self._cancelling

    def disarm(self) -> None:
        self._handle.cancel()
        if self._fired:  # it fired, but the handler did not let the CancelledError out
            self._fired = False
            self._task.uncancel()


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
    deadline = _Deadline(timeout_s)
    try:
        result = await job_type.handler(payload, ctx)
    except asyncio.CancelledError:
        if deadline.took_effect():
            return TimedOut(f"attempt timed out after {timeout_s:g}s")
        raise
    except PermanentError as exc:
        return Failed(describe(exc), permanent=True)
    except Exception as exc:
        return Failed(describe(exc))
    finally:
        deadline.disarm()
    try:
        return Succeeded(orjson.dumps(result).decode())
    except TypeError as exc:
        return Failed(f"handler returned a result that is not JSON: {exc}", permanent=True)
