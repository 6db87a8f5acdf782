"""Shared by the worker-pool tests: job types whose handlers a test controls, a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest

from jobd import retry
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

        async def garbled(payload: AnyPayload, ctx: JobContext) -> Any:
            """Fails with a NUL character (and a lone surrogate) in its error: once for a
            retry, then for good."""
            if ctx.attempt < 2:
                raise RuntimeError("bad\x00news\udc80")
            raise PermanentError("worse\x00news")

        async def hold(payload: AnyPayload, ctx: JobContext) -> Any:
            self.started.append((ctx.job_id, time.perf_counter()))
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await self.release.wait()
            finally:
                self.running -= 1
            return {"held": True}

        async def stubborn(payload: AnyPayload, ctx: JobContext) -> Any:
            """``hold``, but it swallows cancellation (as a careless handler may)."""
            self.started.append((ctx.job_id, time.perf_counter()))
            while not self.release.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await self.release.wait()
            return {"held": True}

        return Registry([*builtin_types(), JobType("fail", fail), JobType("permanent", permanent),
                         JobType("garbled", garbled),
                         JobType("hold", hold), JobType("stubborn", stubborn)])


class Claims:
    """Records the pool's claim rounds as they go through the store: the ``limit`` each
    asked for, and how many are done."""

    def __init__(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.asked: list[int] = []
        self.rounds = 0
        claim = store.claim_jobs

        def recorded(**kwargs: Any) -> asyncio.Future[Any]:
            self.asked.append(kwargs["limit"])
            future = claim(**kwargs)
            future.add_done_callback(self._done)
            return future
        monkeypatch.setattr(store, "claim_jobs", recorded)

    def _done(self, future: asyncio.Future[Any]) -> None:
        self.rounds += 1

    async def reach(self, count: int) -> None:
        """Wait (with a deadline) until ``count`` rounds were asked for."""
        await until(lambda: len(self.asked) >= count,
                    f"only {len(self.asked)} claim(s) were made")


async def until(predicate: Callable[[], object], what: str, timeout_s: float = 5) -> None:
    """Poll ``predicate`` (a value, or an awaitable such as a store's read) until it
    holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await _value(predicate()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.001)


async def _value(value: object) -> object:
    return await value if inspect.isawaitable(value) else value


@pytest.fixture
def behaviour() -> Behaviour:
    return Behaviour()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def failing(method: Callable[..., Any], times: int | None) -> Any:
    """``method`` (a store's write), failing its first ``times`` calls (None: every one)
    as a database that is away would."""
    calls = {"n": 0}

    def call(*args: object, **kw: object) -> asyncio.Future[object]:
        calls["n"] += 1
        if times is None or calls["n"] <= times:
            future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            future.set_exception(ConnectionResetError("the database went away"))
            return future
        return asyncio.ensure_future(method(*args, **kw))
    call.calls = calls  # type: ignore[attr-defined]
    return call


@pytest.fixture
def quick_rewrites(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes refused by the database are tried again within milliseconds."""
    monkeypatch.setattr(retry, "WRITE_AGAIN_FIRST_S", 0.001)
    monkeypatch.setattr(retry, "WRITE_AGAIN_MAX_S", 0.002)
