"""Calls that a backend runs together and answers one by one: "one statement for all
of them, else each on its own", written once for both backends.

A batch (new jobs, finishes, webhook attempts) first goes to the database as one
statement. The items that statement did not take -- an Idempotency-Key already in use,
a key revoked meanwhile, a delivery whose claim is no longer current -- or every item,
when the statement failed on one item's data, are then done one by one, so that each
call keeps its own outcome: its result, or its own refusal.

:func:`all_else_each` takes plain functions (SQLite: the writer thread, which runs it
with :func:`run_now`) or coroutine functions (PostgreSQL: awaited on the event loop).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from jobd.errors import JobdError

T = TypeVar("T")
R = TypeVar("R")
Outcome = tuple[bool, Any]  # (True, result) or (False, the exception)
TRIES = 3


async def all_else_each(items: Sequence[T], all_items: Callable[[Sequence[T]], Any],
                        each: Callable[[T], Any], *,
                        item_errors: tuple[type[BaseException], ...],
                        retry_errors: tuple[type[BaseException], ...] = ()) -> list[Outcome]:
    """``all_items(items)`` gives an outcome per item, None for one it did not take;
    each such item, or every item when ``all_items`` raised one of ``item_errors`` (an
    error one item's data can cause), then goes to ``each(item)`` on its own. An item's
    refusal (a :class:`~jobd.errors.JobdError`) or data error is its outcome; any other
    error fails the whole batch. ``retry_errors`` are failures of the statement as a whole
    that a second try may not meet (a deadlock with another transaction, which the
    database rolled back): ``all_items`` is tried again, up to :data:`TRIES` times."""
    outcomes: Sequence[Outcome | None]
    for attempt in range(1, TRIES + 1):
        try:
            outcomes = await _result(all_items(items))
        except item_errors:
            outcomes = [None] * len(items)
        except retry_errors:
            if attempt == TRIES:
                raise
            continue
        break
    refusals: tuple[type[BaseException], ...] = (JobdError, *item_errors)
    done: list[Outcome] = []
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome is None:
            try:
                outcome = (True, await _result(each(item)))
            except refusals as exc:
                outcome = (False, exc)
        done.append(outcome)
    return done


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def run_now(coro: Coroutine[Any, Any, R]) -> R:
    """The result of a coroutine that never waits (every await in it finishes at once),
    run here without an event loop: :func:`all_else_each` over plain functions, in a
    thread that has no loop (the SQLite writer's)."""
    try:
        coro.send(None)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(f"{coro!r} waited for something; run it on an event loop")
