"""Shared by the worker-pool tests: job types whose handlers a test controls, a fake clock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from jobd.clock import FakeClock
from jobd.handlers.base import AnyPayload, JobContext, JobType, PermanentError
from jobd.handlers.registry import Registry, builtin_types
from tests.conftest import T0


class Behaviour:
    """Job types whose handlers the test controls."""

    def __init__(self) -> None:
        self.started: list[tuple[str, float]] = []
        self.release = asyncio.Event()
        self.running = 0
        self.peak = 0

    def registry(self) -> Registry:
        async def fail(payload: AnyPayload, ctx: JobContext) -> Any:
            raise RuntimeError("boom")

        async def permanent(payload: AnyPayload, ctx: JobContext) -> Any:
            raise PermanentError("bad input, do not retry")

        async def hold(payload: AnyPayload, ctx: JobContext) -> Any:
            self.started.append((ctx.job_id, time.perf_counter()))
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await self.release.wait()
            finally:
                self.running -= 1
            return {"held": True}

        return Registry([*builtin_types(), JobType("fail", fail), JobType("permanent", permanent),
                         JobType("hold", hold)])


@pytest.fixture
def behaviour() -> Behaviour:
    return Behaviour()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)
