"""synchronous = full with the fsync apart: the writer commits, its syncer fsyncs the
write-ahead log, and only then does anyone hear "done"."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobd.errors import StoreUnavailable
from jobd.runtime.metrics import Metrics
from jobd.store.backend import BackendMetrics, WriterStats
from jobd.store.sqlite.backend import SqliteBackend
from jobd.store.sqlite.connection import connect
from jobd.store.sqlite.writer import GroupCommitWriter
from tests.conftest import make_config
from tests.store.conftest import note, read, write, writer_stats


class Disk:
    """A ``sync`` for the writer that the test holds until released, and a log of what
    was committed when each sync began."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail: OSError | None = None
        self.seen: list[int] = []  # rows committed (as another connection sees them) at each sync

    def sync(self) -> None:
        conn = sqlite3.connect(self.path)
        try:
            self.seen.append(conn.execute("SELECT count(*) FROM notes").fetchone()[0])
        finally:
            conn.close()
        self.entered.set()
        assert self.release.wait(10), "sync never released"
        if self.fail is not None:
            raise self.fail

    def hold(self) -> None:
        self.entered.clear()
        self.release.clear()

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10), "no sync began"


@pytest.fixture
def disk(notes_path: Path) -> Disk:
    return Disk(notes_path)


@pytest.fixture
def writer(disk: Disk) -> Iterator[GroupCommitWriter]:
    w = GroupCommitWriter(lambda: connect(str(disk.path), synchronous="normal"), sync=disk.sync)
    w.start()
    yield w
    disk.release.set()
    w.stop()




async def test_a_result_is_given_only_after_its_commit_was_synced(
        writer: GroupCommitWriter, disk: Disk) -> None:
    disk.hold()
    future = writer.call(note, 1)
    await disk.wait_entered()
    assert disk.seen == [1], "the sync began before the commit"
    await asyncio.sleep(0.05)  # time for a writer that answers early to do so
    assert not future.done(), "answered before the sync returned"
    disk.release.set()
    assert await future == 1
    assert writer.stats.syncs == 1


async def test_batches_committed_during_a_sync_share_the_next_one(
        writer: GroupCommitWriter, disk: Disk) -> None:
    disk.hold()
    first = writer.call(note, 1)
    await disk.wait_entered()
    later = [writer.call(note, n) for n in range(2, 12)]
    deadline = time.monotonic() + 10
    while writer.stats.transactions < 2:  # the writer goes on committing meanwhile
        assert time.monotonic() < deadline, "the writer did not commit during the sync"
        await asyncio.sleep(0.005)
    assert not any(f.done() for f in later)
    disk.release.set()
    assert await first == 1
    assert await asyncio.gather(*later) == list(range(2, 12))
    assert disk.seen == [1, 11]
    assert writer.stats.syncs == 2


async def test_after_a_failed_sync_nothing_is_reported_done(
        writer: GroupCommitWriter, disk: Disk, caplog: pytest.LogCaptureFixture) -> None:
    assert await writer.call(note, 1) == 1
    disk.fail = OSError(5, "Input/output error")
    with pytest.raises(StoreUnavailable, match="sync failed"):
        await writer.call(note, 2)
    disk.fail = None  # the disk "recovers": a later fsync could succeed without the lost pages
    with pytest.raises(StoreUnavailable, match="sync failed"):
        await writer.call(note, 3)
    assert "could not fsync the write-ahead log" in caplog.text


async def test_stop_syncs_and_answers_what_was_committed_last(disk: Disk) -> None:
    w = GroupCommitWriter(lambda: connect(str(disk.path), synchronous="normal"), sync=disk.sync)
    w.start()
    futures = [w.call(note, n) for n in range(5)]
    for _ in range(2):  # the hand-over takes one more turn of the loop (see _submit)
        await asyncio.sleep(0)
    await asyncio.to_thread(w.stop)
    assert await asyncio.wait_for(asyncio.gather(*futures), 5) == list(range(5))
    assert disk.seen[-1] == 5


# the store ----------------------------------------------------------------------------


def pragma_synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


@pytest.fixture
def fdatasyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The inode of every file the store fdatasyncs (the real call still runs)."""
    inodes: list[int] = []
    real: Callable[[int], None] = os.fdatasync

    def spy(fd: int) -> None:
        inodes.append(os.fstat(fd).st_ino)
        real(fd)
    monkeypatch.setattr("jobd.store.sqlite.backend.os.fdatasync", spy)
    return inodes


async def test_full_syncs_the_wal_of_the_database_before_answering(
        tmp_path: Path, fdatasyncs: list[int]) -> None:
    config = make_config(tmp_path, database={"synchronous": "full"})
    store = SqliteBackend(config.database)
    await store.open()
    try:
        assert await write(store, pragma_synchronous) == 1  # NORMAL: the commit does not wait
        assert read(store, pragma_synchronous) == 2          # readers keep FULL
        before = len(fdatasyncs)
        await write(store, lambda c: c.execute("UPDATE tenants SET burst = 1 WHERE 0"))
        assert len(fdatasyncs) > before
        wal = os.stat(f"{config.database.path}-wal").st_ino
        assert set(fdatasyncs) == {wal}
        assert writer_stats(store).syncs == len(fdatasyncs)
    finally:
        await store.close()


@pytest.mark.parametrize("synchronous", ["normal", "off"])
async def test_below_full_nothing_is_synced_apart(tmp_path: Path, fdatasyncs: list[int],
                                                  synchronous: str) -> None:
    config = make_config(tmp_path, database={"synchronous": synchronous})
    store = SqliteBackend(config.database)
    await store.open()
    try:
        expected = {"normal": 1, "off": 0}[synchronous]
        assert await write(store, pragma_synchronous) == expected
        await write(store, lambda c: c.execute("UPDATE tenants SET burst = 1 WHERE 0"))
        assert fdatasyncs == []
        assert writer_stats(store).syncs == 0
    finally:
        await store.close()


def test_metrics_name_the_syncs() -> None:
    text = Metrics().render(BackendMetrics(jobs={}, dlq_size=0,
                                           writer=WriterStats(syncs=3, sync_seconds=0.25))).decode()
    assert "jobd_db_wal_syncs_total 3.0" in text
    assert "jobd_db_wal_sync_seconds_total 0.25" in text
