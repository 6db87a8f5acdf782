"""What the writer counts for /metrics: its transactions, their writes and times, the
ones the database failed, and the size of the files."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobd.errors import StoreUnavailable
from jobd.store.sqlite.store import Store
from jobd.store.sqlite.writer import TRANSACTION_BUCKETS_S, WriterStats
from tests.conftest import make_config


@pytest.fixture
def impatient_store(tmp_path: Path) -> Iterator[Store]:
    """A store that gives up on a locked database after 50 ms."""
    s = Store(make_config(tmp_path, database={"busy_timeout": 0.05}).database)
    s.open()
    yield s
    s.close()


def note(conn: sqlite3.Connection, text: str) -> str:
    conn.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES (?)", (text,))
    return text


async def test_transactions_writes_and_times_are_counted(impatient_store: Store) -> None:
    before = impatient_store.writer_stats
    await asyncio.gather(*(impatient_store.write(note, f"n{i}") for i in range(30)))
    await impatient_store.write(note, "alone")
    after = impatient_store.writer_stats

    transactions = after.transactions - before.transactions
    assert 2 <= transactions <= 31  # the 30 shared some; "alone" came after them
    assert after.units - before.units == 31
    assert after.failed == before.failed == 0
    assert sum(after.by_bucket) == after.transactions  # each timed once
    assert after.seconds > before.seconds


async def test_a_transaction_the_database_fails_is_counted_as_failed(
        impatient_store: Store, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "jobd.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
        before = impatient_store.writer_stats
        with pytest.raises(StoreUnavailable):
            await impatient_store.write(note, "refused")
        failed = impatient_store.writer_stats
        assert (failed.transactions, failed.failed) == (before.transactions + 1, before.failed + 1)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert await impatient_store.write(note, "accepted") == "accepted"
    after = impatient_store.writer_stats
    assert (after.transactions, after.failed) == (failed.transactions + 1, failed.failed)


def test_a_transaction_is_counted_in_the_first_bucket_at_or_above_its_time() -> None:
    stats = WriterStats()
    stats.count(3, 0.0005, failed=False)  # le is inclusive
    stats.count(1, 0.0006, failed=False)
    stats.count(2, 5.0, failed=True)
    assert stats.by_bucket[0] == 1 and stats.by_bucket[1] == 1
    assert stats.by_bucket[len(TRANSACTION_BUCKETS_S)] == 1  # above every bound
    assert (stats.transactions, stats.failed, stats.units) == (3, 1, 6)
    copy = stats.copy()
    stats.count(1, 0.01, failed=False)
    assert copy.transactions == 3 and sum(copy.by_bucket) == 3  # a copy does not move


async def test_the_file_sizes_are_those_on_disk(impatient_store: Store, tmp_path: Path) -> None:
    await impatient_store.write(note, "x" * 10_000)
    sizes = impatient_store.file_bytes()
    assert set(sizes) == {"main", "wal"}
    # While the store is open the files only grow (a checkpoint may copy into main meanwhile).
    assert 0 < sizes["main"] <= (tmp_path / "jobd.db").stat().st_size
    assert sizes["wal"] == (tmp_path / "jobd.db-wal").stat().st_size
    assert sizes["wal"] > 10_000  # the note went through the log
