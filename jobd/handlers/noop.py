"""``noop``: succeeds at once. Used by tests and benchmarks."""

from __future__ import annotations

from typing import Any

from jobd.handlers.base import AnyPayload, JobContext, JobType


async def run_noop(payload: AnyPayload, ctx: JobContext) -> dict[str, Any]:
    return {"ok": True}


NOOP = JobType("noop", run_noop, AnyPayload, "Does nothing and succeeds.")
