"""One attempt under its deadline: timeouts, the handler's own errors, and cancellation
from outside, as ``asyncio.timeout`` would have them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobd.config import Config
from jobd.handlers.base import JobType, Services
from jobd.handlers.registry import Registry
from jobd.models import ClaimedJob
from jobd.runtime.execution import Failed, Succeeded, TimedOut, run_attempt


def registry_with(handler: Any) -> Registry:
    return Registry([JobType(name="probe", handler=handler)])


async def attempt(handler: Any, *, timeout_s: float = 0.05) -> Any:
    job = ClaimedJob("job_x", "acme", "probe", "{}", 1, 3, timeout_s)
    return await run_attempt(job, registry=registry_with(handler),
                             services=Services(config=Config(), http=None),  # type: ignore[arg-type]
                             default_timeout_s=300)


async def test_a_slow_handler_times_out_and_leaves_the_task_clean() -> None:
    async def slow(payload: Any, ctx: Any) -> None:
        await asyncio.sleep(10)

    outcome = await attempt(slow)
    assert isinstance(outcome, TimedOut) and "0.05s" in outcome.error
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.1)  # the timer is gone: nothing cancels us later
    assert task.cancelling() == 0


async def test_a_quick_handler_succeeds_and_the_timer_is_disarmed() -> None:
    async def quick(payload: Any, ctx: Any) -> dict[str, int]:
        return {"n": 1}

    assert await attempt(quick, timeout_s=0.01) == Succeeded('{"n":1}')
    await asyncio.sleep(0.05)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_the_handlers_own_timeout_error_is_a_failure_not_a_timeout() -> None:
    async def raises(payload: Any, ctx: Any) -> None:
        raise TimeoutError("upstream took too long")

    outcome = await attempt(raises)
    assert isinstance(outcome, Failed) and not isinstance(outcome, TimedOut)
    assert "upstream took too long" in outcome.error


async def test_a_handler_that_swallows_the_cancel_keeps_its_result() -> None:
    async def stubborn(payload: Any, ctx: Any) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "finished anyway"
        return "never"

    assert await attempt(stubborn) == Succeeded('"finished anyway"')
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_cancel_from_outside_propagates() -> None:
    started = asyncio.Event()

    async def waits(payload: Any, ctx: Any) -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(attempt(waits, timeout_s=60))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancel_from_outside_wins_over_the_deadline() -> None:
    started = asyncio.Event()

    async def waits(payload: Any, ctx: Any) -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.1)  # the deadline fires while the outside cancel unwinds

    task = asyncio.create_task(attempt(waits, timeout_s=0.05))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
