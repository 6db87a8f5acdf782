"""Supervision of the daemon's long-lived loops: retries with capped exponential backoff,
one log line per failure, and what /healthz needs to know.

Every long-lived task is a *step* called over and over: the scheduler's claim round, the
dispatcher's round, the lifeline's and the pruner's periodic passes, the idle-connection
sweep (asyncio tasks, :meth:`Supervisor.loop` and :meth:`Supervisor.every`) and the WAL
checkpoint (a thread, :meth:`Supervisor.every_in_thread`). The store's writer and syncer
threads, which serve requests rather than repeat a step, report to the same object
(:meth:`Supervisor.failed`, :meth:`Supervisor.give_up`).

A step that raises is logged (one line: the task, the error, where it was raised) and
called again after a delay that doubles from :attr:`Backoff.first_s` to
:attr:`Backoff.max_s`; a step that returns ends the streak. Two kinds of failure:

- the storage's (:func:`is_storage_error`: the database locked by another process past
  ``database.busy_timeout``, a full disk, an I/O error, a server that does not answer):
  retried for as long as it lasts. The store's own health says so meanwhile (``/healthz``
  answers 503, e.g. ``writes_failing``),
  and the task goes on by itself once the lock or the disk is back;
- any other (a fault): after ``give_up_after`` in a row the task gives up. The supervisor
  keeps the reason (``/healthz`` answers 503 ``task_failed``) and calls ``on_give_up``:
  the daemon then stops and exits non-zero rather than run on without that task.

A step that ran longer than the longest delay before it failed starts a new streak, so a
step that never returns (a sweep that loops by itself) is judged like the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from jobd.errors import StoreUnavailable

log = logging.getLogger("jobd.supervisor")

GIVE_UP_AFTER = 8  # faults in a row: with the default backoff, about 11 s of failing


def is_storage_error(exc: BaseException) -> bool:
    """The database cannot be used now (locked, a full disk, I/O, unreachable), through
    no fault of what was asked of it: the store raises :class:`StoreUnavailable` then."""
    return isinstance(exc, StoreUnavailable)


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float = 0.1
    max_s: float = 5.0

    def delay_s(self, failures: int) -> float:
        """The pause after the ``failures``-th failure in a row (1, 2, ...)."""
        return min(self.max_s, self.first_s * 2.0 ** min(max(failures, 1) - 1, 32))


def describe(exc: BaseException) -> str:
    """One line: the error and the innermost frame it came from (no locals, no values)."""
    text = " ".join(str(exc).split()) or "(no message)"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {text}{where}"


class Supervisor:
    def __init__(self, *, backoff: Backoff | None = None, give_up_after: int = GIVE_UP_AFTER,
                 on_give_up: Callable[[str], None] | None = None) -> None:
        self.backoff = backoff or Backoff()
        self._give_up_after = give_up_after
        self.on_give_up = on_give_up  # called once, from the thread that gave up
        self._lock = threading.Lock()  # the store's threads report here too
        self._failures: dict[str, int] = {}  # in a row, of any kind: the next delay
        self._faults: dict[str, int] = {}    # of those, the ones not the storage's
        self.gave_up: str | None = None      # why a task gave up (the first one)
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False  # set by the daemon's shutdown: tasks may end from then on

    # what a task reports -------------------------------------------------------------
    def failed(self, name: str, exc: BaseException) -> float | None:
        """Count a failure of ``name`` and log it; return the pause before the next try,
        or None if the task must give up (then :meth:`give_up` was called)."""
        storage = is_storage_error(exc)
        with self._lock:
            failures = self._failures[name] = self._failures.get(name, 0) + 1
            faults = self._faults[name] = self._faults.get(name, 0) + (not storage)
        delay = self.backoff.delay_s(failures)
        if faults >= self._give_up_after:
            self.give_up(name, f"{name} failed {faults} times in a row; last: {describe(exc)}")
            return None
        log.log(logging.WARNING if storage else logging.ERROR,
                "%s failed (%s); trying again in %.2gs", name, describe(exc), delay)
        return delay

    def succeeded(self, name: str) -> None:
        """``name`` did its work: the streak, if any, is over. Cheap when there is none."""
        if self._failures.get(name):
            with self._lock:
                failures = self._failures.pop(name, 0)
                self._faults.pop(name, None)
            if failures:
                log.warning("%s works again after %d failure(s)", name, failures)

    def give_up(self, name: str, reason: str) -> None:
        """``name`` cannot go on: say why once, and ask the daemon to stop."""
        with self._lock:
            first = self.gave_up is None
            if first:
                self.gave_up = reason
        log.critical("%s gave up: %s", name, reason)
        if first and self.on_give_up is not None:
            self.on_give_up(reason)

    # tasks -----------------------------------------------------------------------------
    def start(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` (a :meth:`loop` or :meth:`every`) as a task. One that ends before
        :attr:`stopping` is set -- a loop returns only when it gave up -- or by an error no
        loop caught makes the supervisor give up, if it had not already."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._ended)
        self._tasks.append(task)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.stopping or self.gave_up is not None:
            return
        error = task.exception()
        self.give_up(task.get_name(), "ended" if error is None else f"ended: {describe(error)}")

    async def cancel_tasks(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # loops -----------------------------------------------------------------------------
    async def loop(self, name: str, step: Callable[[], Awaitable[object]], *,
                   running: Callable[[], bool], stop: asyncio.Event | None = None) -> None:
        """Call ``step`` while ``running()`` says so (and ``stop`` is not set)."""
        while running() and not (stop is not None and stop.is_set()):
            started = time.monotonic()
            try:
                await step()
            except Exception as exc:
                if time.monotonic() - started > self.backoff.max_s:
                    self.succeeded(name)  # it worked for a while: a new streak
                delay = self.failed(name, exc)
                if delay is None:
                    return
                await _pause(stop, delay)
            else:
                self.succeeded(name)

    async def every(self, name: str, step: Callable[[], Awaitable[object]], interval_s: float,
                    stop: asyncio.Event) -> None:
        """Call ``step`` every ``interval_s`` until ``stop`` is set."""
        async def step_then_wait() -> None:
            await step()
            await _pause(stop, interval_s)
        await self.loop(name, step_then_wait, running=lambda: True, stop=stop)

    def every_in_thread(self, name: str, step: Callable[[], object], interval_s: float,
                        stop: threading.Event) -> None:
        """:meth:`every` for a thread: the body of its ``run``."""
        while not stop.wait(interval_s):
            try:
                step()
            except Exception as exc:
                delay = self.failed(name, exc)
                if delay is None or stop.wait(max(0.0, delay - interval_s)):
                    return
            else:
                self.succeeded(name)


async def _pause(stop: asyncio.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
