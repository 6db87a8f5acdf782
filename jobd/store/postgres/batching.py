"""Calls made together go out together: one statement for many calls, on a connection of
their own.

A :class:`Batcher` collects the calls of one kind (new jobs, finishes, webhook attempts)
made while it has no batch waiting for a connection. The batch takes a pooled
connection as soon as one is free and runs every call collected until then; calls made
meanwhile start the next batch. So a quiet daemon sends each call at once (the calls of
one turn of the event loop together), and a busy one sends bigger batches, several at a
time on as many connections, whose commits PostgreSQL flushes to its WAL together.

:func:`jobd.store.outcomes.all_else_each` is the one way a batch runs: one statement for
all its items; the items that statement did not take (or all of them, when it failed on
an item's data) each on their own, so that every call keeps its own outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import asyncpg

from jobd.errors import JobdError
from jobd.store.outcomes import Outcome

T = TypeVar("T")
RunBatch = Callable[[asyncpg.Connection, list[T]], Awaitable[list[Outcome]]]
Connect = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]

MAX_BATCH = 2000  # items of one statement: bounds its time and its arrays


class Batcher(Generic[T]):
    """Collects calls of one kind into batches; see the module docstring.

    ``run(conn, items)`` returns one outcome per item; ``connect()`` lends a pooled
    connection and turns a failure to get or use one into the error (StoreUnavailable)
    every item of that batch gets; ``failed(exc)`` turns an item's own database error
    into the error its caller sees."""

    def __init__(self, run: RunBatch[T], connect: Connect,
                 failed: Callable[[BaseException], BaseException]) -> None:
        self._run = run
        self._connect = connect
        self._failed = failed
        self._waiting: list[tuple[T, asyncio.Future[Any]]] = []
        self._collecting = False  # a batch is waiting for a connection
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.items = 0

    @property
    def in_flight(self) -> int:
        """Batches waiting for a connection or running."""
        return len(self._tasks)

    def submit(self, item: T) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((item, future))
        if not self._collecting:
            self._collecting = True
            task = loop.create_task(self._batch())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def drain(self) -> None:
        """Wait until every call submitted so far is answered."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _batch(self) -> None:
        taken: list[tuple[T, asyncio.Future[Any]]] = []
        try:
            async with self._connect() as conn:
                taken = self._take()
                outcomes = await self._run(conn, [item for item, _ in taken])
        except asyncio.CancelledError:
            for _, future in taken or self._take():
                future.cancel()
            raise
        except Exception as exc:  # from connect(): StoreUnavailable; or a bug
            for _, future in taken or self._take():
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        self.items += len(taken)
        for (_, future), (ok, value) in zip(taken, outcomes, strict=True):
            if future.done():  # its caller gave up waiting
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value if isinstance(value, JobdError) else self._failed(value))

    def _take(self) -> list[tuple[T, asyncio.Future[Any]]]:
        """The calls for this batch; calls made from now on start the next one."""
        taken, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        self._collecting = False
        if self._waiting:  # more than one batch's worth: the rest go out in parallel
            self._collecting = True
            task = asyncio.get_running_loop().create_task(self._batch())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return taken

