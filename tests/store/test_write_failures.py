"""The writer when the database cannot be written: it says why, fails the callers'
writes, notices by itself when writes work again, and tells its supervisor about what
waiting will not fix. And the WAL stays bounded under a steady stream of writes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from jobd.errors import StoreUnavailable
from jobd.store.sqlite import backend as backend_module
from jobd.store.sqlite import checkpointer as checkpointer_module
from jobd.store.sqlite import writer as writer_module
from jobd.store.sqlite.backend import SqliteBackend
from jobd.store.sqlite.connection import connect
from jobd.store.sqlite.failures import is_storage_error
from jobd.store.sqlite.writer import GroupCommitWriter
from jobd.supervisor import Backoff, Supervisor
from tests.conftest import make_config
from tests.store.conftest import Transactions, note, write


def _sqlite_error(code: int) -> sqlite3.Error:
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize(("exc", "storage"), [
    (StoreUnavailable("database write failed: database or disk is full"), True),
    (_sqlite_error(5), True),              # SQLITE_BUSY
    (_sqlite_error(13), True),             # SQLITE_FULL
    (_sqlite_error(10 | (4 << 8)), True),  # SQLITE_IOERR_WRITE
    (_sqlite_error(11), False),            # SQLITE_CORRUPT: waiting does not help
    (sqlite3.ProgrammingError("closed"), False),
    (RuntimeError("a bug"), False),
])
def test_storage_failures_are_told_from_faults(exc: BaseException, storage: bool) -> None:
    assert is_storage_error(exc) is storage


def test_a_checkpoint_the_disk_refuses_reaches_the_supervisor_as_a_storage_failure(
        notes_path: Path) -> None:
    """A storage failure is retried for as long as it lasts; only faults give up."""
    def full() -> sqlite3.Connection:
        raise _sqlite_error(13)
    checkpointer = checkpointer_module.Checkpointer(full)
    with pytest.raises(StoreUnavailable, match="checkpoint failed"):
        checkpointer.run_once()


@pytest.fixture
def path(notes_path: Path) -> Path:
    return notes_path


@pytest.fixture(autouse=True)
def _probe_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "PROBE_INTERVAL_S", 0.05)


def _writer(path: Path, supervisor: Supervisor | None = None,
            factory: type[sqlite3.Connection] | None = None) -> GroupCommitWriter:
    def open_() -> sqlite3.Connection:
        if factory is None:
            return connect(str(path), busy_timeout_s=0.05)
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               factory=factory)
    w = GroupCommitWriter(open_, supervisor=supervisor)
    w.start()
    return w


async def _until(predicate: Any, what: str) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_a_lock_held_elsewhere_fails_writes_until_released_and_health_follows(
        path: Path) -> None:
    writer = _writer(path)
    try:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await writer.call(note, "refused")
        assert writer.write_error is not None and "locked" in writer.write_error
        holder.execute("ROLLBACK")
        holder.close()
        # nothing else is written: the writer's own probe notices
        await _until(lambda: writer.write_error is None, "the writer to see writes work")
        assert await writer.call(note, "after") == "after"
    finally:
        writer.stop()


async def test_a_commit_that_only_reads_does_not_end_a_streak_of_failed_writes(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "PROBE_INTERVAL_S", 3600)  # no probe: only batches
    writer = _writer(path)
    try:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable):
            await writer.call(note, "refused")
        holder.execute("ROLLBACK")
        holder.close()
        await writer.call(lambda conn: conn.execute("SELECT count(*) FROM notes").fetchall())
        assert writer.write_error is not None  # a claim that found nothing proves nothing
        await writer.call(note, "written")
        assert writer.write_error is None
    finally:
        writer.stop()


async def test_a_full_disk_inside_one_write_fails_the_transaction_not_just_that_write(
        path: Path) -> None:
    writer = _writer(path)

    def full(conn: sqlite3.Connection) -> None:
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = 13  # SQLITE_FULL, as a spill of the page cache would raise
        raise exc

    try:
        kept, failing = writer.call(note, "kept?"), writer.call(full)
        for future in (kept, failing):
            with pytest.raises(StoreUnavailable, match="full"):
                await future
        assert writer.write_error == "database or disk is full"
    finally:
        writer.stop()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    conn.close()


class _Corrupt(sqlite3.Connection):
    failing = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if _Corrupt.failing and sql == "COMMIT":
            exc = sqlite3.DatabaseError("database disk image is malformed")
            exc.sqlite_errorcode = 11  # SQLITE_CORRUPT: waiting does not fix it
            raise exc
        return super().execute(sql, *args)


async def test_failures_that_waiting_cannot_fix_make_the_supervisor_give_up(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reasons: list[str] = []
    supervisor = Supervisor(backoff=Backoff(0.001, 0.001), give_up_after=3,
                            on_give_up=reasons.append)
    monkeypatch.setattr(_Corrupt, "failing", True)
    writer = _writer(path, supervisor, factory=_Corrupt)
    try:
        for n in range(3):
            with pytest.raises(StoreUnavailable, match="malformed"):
                await writer.call(note, f"n{n}")
        assert len(reasons) == 1 and "database writer failed 3 times" in reasons[0]
        assert writer.write_error is None  # not a storage outage: /healthz says task_failed
    finally:
        writer.stop()


async def test_a_failed_fsync_gives_up_at_once(path: Path) -> None:
    reasons: list[str] = []

    def eio() -> None:
        raise OSError(5, "Input/output error")

    writer = GroupCommitWriter(lambda: connect(str(path), synchronous="normal"), sync=eio,
                               supervisor=Supervisor(on_give_up=reasons.append))
    writer.start()
    try:
        with pytest.raises(StoreUnavailable, match="sync failed"):
            await writer.call(note, "lost")
        assert writer.sync_failed
        assert len(reasons) == 1 and "could not fsync" in reasons[0]
    finally:
        writer.stop()


# ------------------------------------------------------------------ the WAL's size


@pytest.fixture
def small_wal_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    limit = 256 * 1024
    monkeypatch.setattr(checkpointer_module, "WAL_RESTART_BYTES", limit)
    monkeypatch.setattr(backend_module, "WAL_RESTART_BYTES", limit)
    monkeypatch.setattr(checkpointer_module, "INTERVAL_S", 0.05)
    return limit


async def test_the_wal_stays_bounded_under_a_steady_stream_of_writes(
        tmp_path: Path, small_wal_limit: int) -> None:
    config = make_config(tmp_path, database={"synchronous": "normal"})
    Transactions(config.database).close()
    store = SqliteBackend(config.database)
    await store.open(daemon=True)  # the checkpointer runs in a daemon
    wal = Path(f"{config.database.path}-wal")
    try:
        await write(store, lambda conn: conn.execute("CREATE TABLE notes (t TEXT)"))
        largest, shrank, size, deadline = 0, 0, 0, time.monotonic() + 3
        blob = "x" * 2000
        while time.monotonic() < deadline:  # writes back to back, as under steady load
            await asyncio.gather(*(write(store, note, blob) for _ in range(20)))
            size, last = wal.stat().st_size, size
            largest, shrank = max(largest, size), shrank + (size < last)
        written = await write(store, lambda conn: conn.execute(
            "SELECT count(*) FROM notes").fetchone()[0])
    finally:
        await store.close()
    through = written * len(blob)  # at least this much went through the WAL
    assert through > 40 * small_wal_limit
    # it started over again and again, each time cut back to the limit; without that it
    # holds every page written
    assert shrank >= 3, f"the WAL was cut back {shrank} time(s)"
    assert largest < through / 2, f"the WAL grew to {largest} bytes of {through} written"


async def test_closing_keeps_the_wal_and_shm_files_so_a_full_disk_can_still_be_read(
        tmp_path: Path) -> None:
    """SQLite deletes them when the last connection that may write closes; a start on a
    full disk could then not create the -shm again, and could read nothing."""
    config = make_config(tmp_path)
    db = config.database.path
    Transactions(config.database).close()
    assert os.path.exists(f"{db}-shm") and os.path.exists(f"{db}-wal")
    store = SqliteBackend(config.database)
    await store.open()
    await store.close()
    assert os.path.getsize(f"{db}-shm") > 0 and os.path.exists(f"{db}-wal")


async def test_closing_with_a_deadline_does_not_wait_for_a_writer_stuck_on_a_lock(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, database={"busy_timeout": 30})
    Transactions(config.database).close()
    store = SqliteBackend(config.database)
    await store.open()
    holder = sqlite3.connect(config.database.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    stuck = asyncio.ensure_future(write(store, note, "waits"))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await store.close(timeout_s=0.2)
    assert time.monotonic() - started < 2
    holder.execute("ROLLBACK")
    holder.close()
    stuck.cancel()

