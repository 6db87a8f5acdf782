"""``all_else_each``: one statement for all, else each on its own; a statement the
database rolled back for another transaction's sake is tried again."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from jobd.store.outcomes import TRIES, Outcome, all_else_each


class Deadlock(Exception):
    pass


class BadRow(Exception):
    pass


def statement(failures: list[BaseException]):
    """An all-items call that raises each of ``failures`` in turn, then succeeds."""
    calls: list[Sequence[int]] = []

    async def all_items(items: Sequence[int]) -> list[Outcome | None]:
        calls.append(list(items))
        if failures:
            raise failures.pop(0)
        return [(True, i * 10) for i in items]
    return all_items, calls


async def one(item: int) -> int:
    return -item


async def test_a_deadlocked_statement_is_tried_again_and_answers_every_item() -> None:
    all_items, calls = statement([Deadlock(), Deadlock()])
    done = await all_else_each([1, 2], all_items, one, item_errors=(BadRow,),
                               retry_errors=(Deadlock,))
    assert done == [(True, 10), (True, 20)]
    assert len(calls) == 3


async def test_a_statement_that_keeps_deadlocking_fails_the_batch() -> None:
    all_items, calls = statement([Deadlock() for _ in range(TRIES)])
    with pytest.raises(Deadlock):
        await all_else_each([1], all_items, one, item_errors=(BadRow,), retry_errors=(Deadlock,))
    assert len(calls) == TRIES


async def test_without_retry_errors_a_failure_is_not_tried_again() -> None:
    all_items, calls = statement([Deadlock()])
    with pytest.raises(Deadlock):
        await all_else_each([1], all_items, one, item_errors=(BadRow,))
    assert len(calls) == 1


async def test_an_item_error_sends_every_item_on_its_own() -> None:
    all_items, calls = statement([BadRow()])
    done = await all_else_each([1, 2], all_items, one, item_errors=(BadRow,),
                               retry_errors=(Deadlock,))
    assert done == [(True, -1), (True, -2)]
    assert len(calls) == 1
