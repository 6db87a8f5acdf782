"""The supervision helper: backoff, what counts toward giving up, the loops it runs."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from jobd.errors import StoreUnavailable
from jobd.supervisor import Backoff, Supervisor, describe, is_storage_error

FAST = Backoff(first_s=0.001, max_s=0.004)


@pytest.mark.parametrize(("failures", "delay"), [
    (1, 0.1), (2, 0.2), (3, 0.4), (6, 3.2), (7, 5.0), (50, 5.0), (10_000, 5.0),
])
def test_the_delay_doubles_up_to_its_cap(failures: int, delay: float) -> None:
    assert Backoff(first_s=0.1, max_s=5.0).delay_s(failures) == pytest.approx(delay)


@pytest.mark.parametrize(("exc", "storage"), [
    (StoreUnavailable("database write failed: database or disk is full"), True),
    (RuntimeError("a bug"), False),
    (ValueError("bad data"), False),
])
def test_storage_failures_are_told_from_faults(exc: BaseException, storage: bool) -> None:
    """The store says "the database cannot be used now" with StoreUnavailable (the SQLite
    backend's own test of what it counts as such: tests/store/test_write_failures.py)."""
    assert is_storage_error(exc) is storage


def test_faults_in_a_row_give_up_once_and_say_why() -> None:
    reasons: list[str] = []
    supervisor = Supervisor(backoff=FAST, give_up_after=3, on_give_up=reasons.append)
    assert supervisor.failed("scheduler", RuntimeError("one")) is not None
    assert supervisor.failed("scheduler", RuntimeError("two")) is not None
    assert supervisor.failed("scheduler", RuntimeError("three")) is None
    assert supervisor.gave_up is not None and "scheduler failed 3 times in a row" in supervisor.gave_up
    assert "RuntimeError: three" in supervisor.gave_up
    supervisor.give_up("pruner", "also")  # only the first reason is kept and reported
    assert reasons == [supervisor.gave_up]


def test_a_success_ends_the_streak_and_storage_failures_never_give_up() -> None:
    supervisor = Supervisor(backoff=FAST, give_up_after=2)
    supervisor.failed("lifeline", RuntimeError("one"))
    supervisor.succeeded("lifeline")
    supervisor.failed("lifeline", RuntimeError("two"))
    for _ in range(100):
        assert supervisor.failed("lifeline", StoreUnavailable("locked")) is not None
    assert supervisor.gave_up is None
    # ... but they do not reset the count of faults either
    assert supervisor.failed("lifeline", RuntimeError("three")) is None


def test_each_failure_is_one_line_naming_the_task_and_where(
        caplog: pytest.LogCaptureFixture) -> None:
    def fail() -> None:
        raise ValueError("bad\nthing")
    try:
        fail()
    except ValueError as exc:
        error = exc
    assert describe(error).startswith("ValueError: bad thing at test_supervisor.py:")
    with caplog.at_level(logging.WARNING, logger="jobd.supervisor"):
        Supervisor(backoff=FAST).failed("pruner", error)
        Supervisor(backoff=FAST).failed("scheduler", StoreUnavailable("database is locked"))
    fault, storage = caplog.records
    assert (fault.levelno, storage.levelno) == (logging.ERROR, logging.WARNING)
    assert "pruner failed (ValueError: bad thing" in fault.getMessage()
    assert "\n" not in fault.getMessage() and fault.exc_info is None


async def test_loop_retries_a_failing_step_until_it_works() -> None:
    supervisor = Supervisor(backoff=FAST, give_up_after=5)
    calls: list[int] = []

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) <= 3:
            raise StoreUnavailable("database write failed: database is locked")
        if len(calls) == 6:
            raise RuntimeError("a fault after the storage came back")

    async with asyncio.timeout(5):
        await supervisor.loop("scheduler", step, running=lambda: len(calls) < 10)
    assert len(calls) == 10
    assert supervisor.gave_up is None


async def test_loop_returns_when_the_task_gives_up() -> None:
    supervisor = Supervisor(backoff=FAST, give_up_after=4)

    async def step() -> None:
        raise RuntimeError("always")

    async with asyncio.timeout(5):
        await supervisor.loop("dispatcher", step, running=lambda: True)
    assert supervisor.gave_up is not None and "dispatcher failed 4 times" in supervisor.gave_up


async def test_every_runs_a_step_periodically_until_stopped() -> None:
    supervisor = Supervisor(backoff=FAST)
    stop = asyncio.Event()
    runs = 0

    async def step() -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            raise StoreUnavailable("full")
        if runs == 5:
            stop.set()

    async with asyncio.timeout(5):
        await supervisor.every("pruner", step, 0.001, stop)
    assert runs == 5


def test_every_in_thread_survives_failures_of_its_step() -> None:
    supervisor = Supervisor(backoff=FAST)
    stop = threading.Event()
    runs: list[int] = []

    def step() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise StoreUnavailable("checkpoint failed: disk I/O error")
        stop.set()

    thread = threading.Thread(target=supervisor.every_in_thread,
                              args=("checkpointer", step, 0.001, stop))
    thread.start()
    thread.join(5)
    assert not thread.is_alive() and len(runs) == 3
    assert supervisor.gave_up is None


async def test_a_task_that_ends_while_the_daemon_runs_makes_it_give_up() -> None:
    reasons: list[str] = []
    supervisor = Supervisor(backoff=FAST, on_give_up=reasons.append)

    async def ends() -> None:
        return None

    supervisor.start("sweeper", ends())
    async with asyncio.timeout(5):
        while not reasons:
            await asyncio.sleep(0.001)
    assert reasons == ["ended"] and supervisor.gave_up == "ended"
    await supervisor.cancel_tasks()


async def test_tasks_cancelled_at_shutdown_are_not_failures() -> None:
    supervisor = Supervisor(backoff=FAST)
    supervisor.start("forever", asyncio.sleep(3600))
    await asyncio.sleep(0)
    await supervisor.cancel_tasks()
    assert supervisor.gave_up is None
