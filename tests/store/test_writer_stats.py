"""What the writer counts for /metrics: its transactions, their writes and times, the
ones the database failed, and the size of the files."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobd.errors import StoreUnavailable
from jobd.store.backend import TRANSACTION_BUCKETS_S, WriterStats
from jobd.store.sqlite.backend import SqliteBackend
from tests.conftest import make_config
from tests.store.conftest import write, writer_stats


@pytest.fixture
async def impatient_store(tmp_path: Path) -> AsyncIterator[SqliteBackend]:
    """A store that gives up on a locked database after 50 ms."""
    s = SqliteBackend(make_config(tmp_path, database={"busy_timeout": 0.05}).database)
    await s.open()
    yield s
    await s.close()


def note(conn: sqlite3.Connection, text: str) -> str:
    conn.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES (?)", (text,))
    return text


async def test_transactions_writes_and_times_are_counted(impatient_store: SqliteBackend) -> None:
    before = writer_stats(impatient_store)
    await asyncio.gather(*(write(impatient_store, note, f"n{i}") for i in range(30)))
    await write(impatient_store, note, "alone")
    after = writer_stats(impatient_store)

    transactions = after.transactions - before.transactions
    assert 2 <= transactions <= 31  # the 30 shared some; "alone" came after them
    assert after.units - before.units == 31
    assert after.failed == before.failed == 0
    assert sum(after.by_bucket) == after.transactions  # each timed once
    assert after.seconds > before.seconds


async def test_a_transaction_the_database_fails_is_counted_as_failed(
        impatient_store: SqliteBackend, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "jobd.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
        before = writer_stats(impatient_store)
        with pytest.raises(StoreUnavailable):
            await write(impatient_store, note, "refused")
        failed = writer_stats(impatient_store)
        assert (failed.transactions, failed.failed) == (before.transactions + 1, before.failed + 1)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert await write(impatient_store, note, "accepted") == "accepted"
    after = writer_stats(impatient_store)
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


async def test_the_file_sizes_are_those_on_disk(impatient_store: SqliteBackend,
                                               tmp_path: Path) -> None:
    await write(impatient_store, note, "x" * 10_000)
    sizes = {dict(g.labels)["file"]: g.value for g in (await impatient_store.metrics()).gauges
             if g.name == "jobd_db_bytes"}
    assert set(sizes) == {"main", "wal"}
    # While the store is open the files only grow (a checkpoint may copy into main meanwhile).
    assert 0 < sizes["main"] <= (tmp_path / "jobd.db").stat().st_size
    assert sizes["wal"] == (tmp_path / "jobd.db-wal").stat().st_size
    assert sizes["wal"] > 10_000  # the note went through the log
