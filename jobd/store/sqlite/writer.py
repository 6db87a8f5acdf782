"""The one writer: a thread that owns the write connection and commits in groups.

Callers hand it a transaction function ``fn(conn, *args)``. The thread takes
every function that is waiting, runs them inside one ``BEGIN IMMEDIATE`` ...
``COMMIT`` and only after the commit resolves the callers' futures. If one of
them raises, the batch is rolled back and run again with each function in its
own savepoint, so only the failing one is undone. A result is
therefore never seen before it is durable, and many small writes share one
fsync.

``call_grouped`` is for writes that are cheaper together (one multi-row INSERT
for many new jobs): every item handed in with the same function in one batch
goes to a single ``fn(conn, items)`` call, which answers one outcome per item.

A batch that holds nothing but one such group whose function says it can commit
by itself (``alone=True``: new jobs, when nothing else is being written) runs
without BEGIN and COMMIT: its one statement is then SQLite's own transaction,
with the same fsync. Every statement lets go of the GIL and must win it back
from the event loop, so two fewer a batch make it shorter (``bench/README.md``
has the figures).

With ``sync`` (the store passes one when ``database.synchronous`` is ``full``) the
writer's connection commits without waiting for the disk, and a second thread,
the syncer, calls ``sync()`` (an fdatasync of the write-ahead log) before it
resolves the futures of everything committed up to then. That is what SQLite's
FULL does at every COMMIT, moved off the writer's path: the writer starts the next
batch while the disk works, and one fsync covers every batch committed meanwhile.
A result is still never given out before it is durable. If a sync fails, nothing
that was or will be committed is reported done any more (:class:`StoreUnavailable`):
after a failed fsync the kernel may drop the pages it could not write, and a later
fsync can succeed without them; the syncer gives up (see :mod:`jobd.supervisor`) and
the daemon exits.

Failures are supervised rather than fatal to the thread. A transaction the database
fails (locked by another process past busy_timeout, a full disk, an I/O error) fails the
callers' writes with :class:`StoreUnavailable` and makes :attr:`GroupCommitWriter.
write_error` say why until a transaction that writes something commits again; while it
is set, the writer tries a one-page write of its own every :data:`PROBE_INTERVAL_S`, so
that it notices the disk or the lock coming back without waiting for a request (and it
tries one as it starts, so that a full disk shows before the first request).
Such a streak is logged in a few lines, not one per transaction. Any other failure (the
file is corrupt, a bug) is reported to the supervisor, which gives up after a few in a
row.

The WAL is reset to its start only by a write that begins when every frame in it has
been copied to the database. The checkpointer thread copies while the writer appends,
so under steady load that moment never comes and the file grows without end; when the
checkpointer finds it long (:meth:`GroupCommitWriter.request_checkpoint`), the writer
runs one checkpoint itself between two batches: it copies the few frames written since
the checkpointer's pass, and its next write starts the log over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from jobd.errors import StoreUnavailable
from jobd.store.backend import WriterStats
from jobd.store.outcomes import Outcome
from jobd.store.sqlite.connection import savepoint
from jobd.store.sqlite.failures import as_store_error, is_storage_error, unavailable
from jobd.supervisor import Supervisor

log = logging.getLogger("jobd.store")

T = TypeVar("T")
TxFn = Callable[..., Any]
_Item = tuple[TxFn, tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop, int]
GroupFn = Callable[[sqlite3.Connection, list[Any]], list[Outcome]]
_STOP = object()
# what an item is (_Item's last field; false only for a plain call)
_CALL, _GROUP, _GROUP_ALONE = 0, 1, 2
PROBE_INTERVAL_S = 1.0  # while writes fail: how often the writer tries one of its own
REPORT_INTERVAL_S = 10.0  # while writes fail: at most one log line this often


class WriteFailures:
    """A streak of failed write transactions: what /healthz says, and its few log lines.
    Only the writer's thread changes it."""

    def __init__(self) -> None:
        self.error: str | None = None  # the last one's, while the streak lasts
        self._since = 0.0
        self._count = 0
        self._reported = 0      # how many the last log line had counted
        self._reported_at = 0.0
        self._tried_at = 0.0
        self.changes = 0        # the connection's total_changes when it began

    def until_probe(self) -> float:
        return max(0.0, self._tried_at + PROBE_INTERVAL_S - time.monotonic())

    def probe_due(self) -> bool:
        """Time for the writer to try a write of its own (other writes may only read:
        a claim round that finds nothing due proves nothing)."""
        return self.until_probe() == 0.0

    def failed(self, exc: BaseException, changes: int) -> None:
        now = self._tried_at = time.monotonic()
        self.error = " ".join(str(exc).split())
        self._count += 1
        if self._count == 1:
            self._since = self._reported_at = now
            self.changes = changes
            log.error("database write failed: %s; writes fail until it is resolved, "
                      "and jobd retries by itself", self.error)
        elif now - self._reported_at >= REPORT_INTERVAL_S:
            log.error("database writes still failing: %d transaction(s) failed in %.0fs: %s",
                      self._count - self._reported, now - self._reported_at, self.error)
            self._reported, self._reported_at = self._count, now

    def ended(self) -> None:
        log.warning("database writes succeed again after %d failed transaction(s) over %.1fs",
                    self._count, time.monotonic() - self._since)
        self.error = None
        self._count = self._reported = 0


class GroupCommitWriter:
    def __init__(self, connect: Callable[[], sqlite3.Connection], *, max_batch: int = 1024,
                 sync: Callable[[], None] | None = None,
                 supervisor: Supervisor | None = None, probe_at_start: bool = True) -> None:
        self._connect = connect
        self._probe_at_start = probe_at_start  # (the CLI's writer does not write unasked)
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="jobd-writer", daemon=True)
        self._sync = sync  # None: the COMMIT itself is durable, resolve at once
        self._unsynced: queue.SimpleQueue[Any] = queue.SimpleQueue()  # (batch, outcomes)
        self._syncer = threading.Thread(target=self._run_syncer, name="jobd-sync", daemon=True)
        self._sync_error: StoreUnavailable | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._outbox: list[_Item] = []  # collected on the loop's thread, handed over at once
        self._supervisor = supervisor or Supervisor()
        self._faulted = False  # a failure was reported to the supervisor, no success since
        self.failures = WriteFailures()
        self._checkpoint_wanted = False
        self.stats = WriterStats()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            raise self._open_error
        if self._sync is not None:
            self._syncer.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Finish what was handed over, then stop; False if that took past ``timeout_s``
        (a write waiting for a lock held elsewhere): the threads are left to the exit."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(left_until(deadline))
        if self._syncer.is_alive():  # after the writer: what it committed last is synced too
            self._unsynced.put(_STOP)
            self._syncer.join(left_until(deadline))
        return not (self._thread.is_alive() or self._syncer.is_alive())

    @property
    def sync_failed(self) -> bool:
        """An fsync of the WAL failed: no write is reported done any more."""
        return self._sync_error is not None

    @property
    def write_error(self) -> str | None:
        """Why writes are failing (the last failed transaction's error), or None."""
        return self.failures.error

    def request_checkpoint(self) -> None:
        """Have the writer checkpoint between two batches, so that its next write starts
        the WAL over (called by the checkpointer thread when the WAL is long)."""
        self._checkpoint_wanted = True

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(conn, *args)`` in the next group transaction; the future is done
        after COMMIT. (A future, not a coroutine: awaiting it costs no extra frame, and
        a caller may add a callback instead of awaiting it in a task.)"""
        return self._submit(fn, args, _CALL)

    def call_grouped(self, fn: GroupFn, item: Any, *, alone: bool = False) -> asyncio.Future[Any]:
        """Run ``fn(conn, [item, ...])`` once for every item of this batch with the same
        ``fn``. ``fn`` returns one ``(ok, value)`` per item, in order; a failed item must
        leave no write behind (the others are kept). The future gives this item's outcome.

        With ``alone``, ``fn`` may also be called outside any transaction, when its
        group is all the batch holds: each of its statements then commits by itself,
        so it must keep every item whole on its own (one statement for all of them,
        or a transaction it opens and closes)."""
        return self._submit(fn, (item,), _GROUP_ALONE if alone else _GROUP)

    def _submit(self, fn: TxFn, args: tuple[Any, ...], kind: int) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._outbox:
            loop.call_soon(self._hand_over_next_turn, loop)
        self._outbox.append((fn, args, future, loop, kind))
        return future

    def _hand_over_next_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """One more turn of the loop before the hand-over: the writes that the callbacks
        and tasks woken in this turn make (a job's outcome, the claim for the slot it
        freed, a request read just now) then join the same batch, so batches are bigger
        under load; when idle it costs one pass of the loop."""
        loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        """Pass everything written in this turn of the event loop to the thread in one go:
        one wake-up of the writer, and one batch instead of many small ones."""
        items, self._outbox = self._outbox, []
        self._queue.put(items)

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # reported to start()
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            if self._probe_at_start:
                self._probe(conn)  # a full disk shows at once, not at the first request
            while True:
                batch, stop = self._take_batch()
                if batch:
                    self._commit_batch(conn, batch)
                if self.failures.error is not None and self.failures.probe_due():
                    self._probe(conn)
                if self._checkpoint_wanted:
                    self._checkpoint(conn)
                if stop:
                    return
        finally:
            conn.close()

    def _take_batch(self) -> tuple[list[_Item], bool]:
        try:  # while writes fail, wake up in time to try one
            first = self._queue.get(timeout=None if self.failures.error is None
                                    else self.failures.until_probe())
        except queue.Empty:
            return [], False
        if first is _STOP:
            return [], True
        batch = list(first)
        while len(batch) < self._max_batch:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is _STOP:
                return batch, True
            batch.extend(more)
        return batch, False

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        started = time.perf_counter()
        failed = False
        try:
            if _alone(batch):
                outcomes = self._without_transaction(conn, batch)
            else:
                outcomes = self._transaction(conn, batch, isolate=False)
            if len(outcomes) < len(batch):
                # A unit failed and the whole batch was rolled back: run it again with
                # each unit in its own savepoint, so only the failing one is undone.
                outcomes = self._transaction(conn, batch, isolate=True)
        except Exception as exc:  # the database failed the transaction (or a bug did)
            self._failed(conn, exc)
            error = unavailable(exc)
            outcomes = [(False, error)] * len(batch)
            failed = True
        else:
            if self.failures.error is not None or self._faulted:
                self._committed(conn)
        self.stats.count(len(batch), time.perf_counter() - started, failed=failed)
        if self._sync is None:
            _resolve(batch, outcomes)
        else:
            self._unsynced.put((batch, outcomes))

    def _failed(self, conn: sqlite3.Connection, exc: Exception) -> None:
        if conn.in_transaction:  # one the failure left open (SQLite ends most by itself)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if is_storage_error(exc):
            self.failures.failed(exc, conn.total_changes)
        else:
            self._faulted = True
            self._supervisor.failed("database writer", exc)

    def _committed(self, conn: sqlite3.Connection, *, wrote: bool = False) -> None:
        """After a commit, while failures are on record. One that wrote something (rows
        changed, or the probe's page) ends a streak of failed writes; one that only read
        (a claim round that found nothing) does not."""
        if self._faulted:
            self._faulted = False
            self._supervisor.succeeded("database writer")
        if self.failures.error is not None and (wrote or
                                                 conn.total_changes != self.failures.changes):
            self.failures.ended()

    def _probe(self, conn: sqlite3.Connection) -> None:
        """While writes fail, now and then: one small write (the schema version rewritten
        as it is, one page), to notice when they work again."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchall()[0][0]
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except Exception as exc:
            self._failed(conn, exc)
        else:
            self._committed(conn, wrote=True)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        self._checkpoint_wanted = False
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the checkpointer's next pass asks again
            log.debug("writer's checkpoint skipped: %s", exc)

    def _run_syncer(self) -> None:
        """Sync, then answer, every batch committed since the last sync; until stopped
        (the writer has stopped by then, so nothing comes after the stop)."""
        stop = False
        while not stop:
            committed = [self._unsynced.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    committed.append(self._unsynced.get_nowait())
            stop = committed[-1] is _STOP
            if stop:
                committed.pop()
            if committed:
                self._sync_and_resolve(committed)

    def _sync_and_resolve(self, committed: list[tuple[list[_Item], list[Outcome]]]) -> None:
        assert self._sync is not None
        if self._sync_error is None:
            started = time.perf_counter()
            try:
                self._sync()
            except Exception as exc:  # OSError from the disk; anything else fails safe too
                self._sync_error = StoreUnavailable(f"database sync failed: {exc}")
                self._supervisor.give_up(
                    "database syncer", f"could not fsync the write-ahead log ({exc}); no "
                    "write is reported done from now on, restart jobd")
            self.stats.syncs += 1
            self.stats.sync_seconds += time.perf_counter() - started
        items: list[_Item] = []
        outcomes: list[Outcome] = []
        for batch, batch_outcomes in committed:
            items.extend(batch)
            outcomes.extend(batch_outcomes if self._sync_error is None
                            else [(False, self._sync_error)] * len(batch))
        _resolve(items, outcomes)

    @staticmethod
    def _without_transaction(conn: sqlite3.Connection, batch: list[_Item]) -> list[Outcome]:
        """The batch's one group, each statement its own transaction (see ``alone``).
        A database error fails the batch as a failed transaction does."""
        try:
            return _call_group(conn, batch[0][0], [item[1][0] for item in batch])
        except sqlite3.Error:
            raise
        except Exception as exc:  # a bug in fn: its items fail, the writer goes on
            return [(False, exc)] * len(batch)
        finally:
            if conn.in_transaction:  # one that fn opened, left open by a failure
                conn.execute("ROLLBACK")

    @staticmethod
    def _transaction(conn: sqlite3.Connection, batch: list[_Item],
                     *, isolate: bool) -> list[Outcome]:
        """One BEGIN IMMEDIATE ... COMMIT around the batch. Without ``isolate`` the
        first failing unit rolls everything back (the cheap, common path)."""
        outcomes: list[Outcome | None] = [None] * len(batch)
        groups: dict[TxFn, list[int]] = {}
        for i, item in enumerate(batch):
            if item[4]:
                groups.setdefault(item[0], []).append(i)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i, (fn, args, _future, _loop, grouped) in enumerate(batch):
                if outcomes[i] is not None:
                    continue  # answered with its group
                members = groups[fn] if grouped else [i]
                if grouped:
                    fn, args = _call_group, (fn, [batch[j][1][0] for j in members])
                ok, value = _run_unit(conn, fn, args) if isolate else _run_plain(conn, fn, args)
                if not ok and not isolate:
                    conn.execute("ROLLBACK")
                    return [(False, value)]
                if grouped and ok:
                    for j, outcome in zip(members, value, strict=True):
                        outcomes[j] = outcome
                else:
                    for j in members:
                        outcomes[j] = (ok, value)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return [o for o in outcomes if o is not None]


def _alone(batch: list[_Item]) -> bool:
    """Whether the batch is one group that may run outside a transaction."""
    fn = batch[0][0]
    return batch[0][4] == _GROUP_ALONE and all(item[0] is fn for item in batch)


def _call_group(conn: sqlite3.Connection, fn: GroupFn, items: list[Any]) -> list[Outcome]:
    outcomes = fn(conn, items)
    if len(outcomes) != len(items):  # a bug in fn: fail the group, keep the writer alive
        raise RuntimeError(f"{fn!r} gave {len(outcomes)} outcomes for {len(items)} items")
    return outcomes


def _run_plain(conn: sqlite3.Connection, fn: TxFn, args: tuple[Any, ...]) -> Outcome:
    try:
        return True, fn(conn, *args)
    except Exception as exc:
        if is_storage_error(exc):  # the transaction's failure, not this unit's
            raise
        return False, exc


def _run_unit(conn: sqlite3.Connection, fn: TxFn, args: tuple[Any, ...]) -> Outcome:
    return in_savepoint(conn, fn, *args)


def in_savepoint(conn: sqlite3.Connection, fn: TxFn, *args: Any) -> Outcome:
    """``fn(conn, ...)`` in its own savepoint: if it raises, only its writes are undone
    (unless the database failed: then the whole transaction fails)."""
    try:
        with savepoint(conn):
            return True, fn(conn, *args)
    except Exception as exc:
        if is_storage_error(exc):
            raise
        return False, exc


def left_until(deadline: float | None) -> float | None:
    """Seconds from now to ``deadline`` (monotonic), never negative; None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _resolve(batch: list[_Item], outcomes: list[tuple[bool, Any]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for (_fn, _args, future, loop, _grouped), (ok, value) in zip(batch, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((future, ok, value if ok else as_store_error(value)))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(_set_results, items)


def _set_results(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
