"""Futures the API waits on without a task: the store's answers to the hot paths.

A backend may answer ``tenant_for_key_hash`` and ``job_state`` with a future that is done
already (SQLite reads on the event loop's thread); :func:`when_done` then goes on at
once, where ``add_done_callback`` would wait for the loop's next turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def when_done(future: asyncio.Future[T], callback: Callable[[asyncio.Future[T]], Any]) -> None:
    """``callback(future)`` now if it is done, else once it is."""
    if future.done():
        callback(future)
    else:
        future.add_done_callback(callback)


def then(future: asyncio.Future[T], fn: Callable[[T], R]) -> asyncio.Future[R]:
    """``fn`` of ``future``'s result, as a future (done at once when ``future`` is); an
    exception from either is the new future's."""
    out: asyncio.Future[R] = asyncio.get_running_loop().create_future()

    def finish(done: asyncio.Future[T]) -> None:
        if out.done():
            return
        if done.cancelled():
            out.cancel()
            return
        try:
            out.set_result(fn(done.result()))
        except Exception as exc:
            out.set_exception(exc)
    when_done(future, finish)
    return out
