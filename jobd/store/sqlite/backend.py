"""jobd's store on SQLite: :class:`SqliteBackend`, one implementation of
:class:`jobd.store.backend.Backend`.

One file in WAL mode. Every write goes through :class:`GroupCommitWriter`: one thread that
owns the write connection and commits what was handed over in a turn of the event loop
as one transaction, durable before it answers. New jobs, finishes and webhook attempts
of one batch share one statement (``call_grouped``).

Point reads (a tenant by key, a job and its deliveries, a webhook secret ...) run on a
read-only connection in the event loop's thread: in WAL mode they never wait for the
writer and cost less than a hop to another thread, so ``tenant_for_key_hash`` and
``job_state`` return futures that are already done, and the API answers at once. Reads
that may scan (stats, /metrics, what retention would delete) run in a worker thread on
a connection of their own.

The reader is opened first and closed last: SQLite deletes the ``-wal`` and ``-shm``
files when the last connection that may write closes, and a next start on a full disk
could not create the ``-shm`` again (nor read anything without it).

A daemon (``open(daemon=True)``) also holds ``<path>.lock`` (two daemons on one file
would take each other's running jobs for orphans), warns when other users may read the
file, and checkpoints the WAL in a thread of its own (:mod:`.checkpointer`); the CLI
opens without them, and its writer does not write before it is asked to.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar

from jobd.config import DatabaseConfig
from jobd.errors import JobdError
from jobd.models import (
    ClaimedJob,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    IdempotentResult,
    Job,
    JobStatus,
    NewJob,
    NewTenant,
    StartLease,
    Tenant,
)
from jobd.store.backend import (
    BackendMetrics,
    ClaimedDelivery,
    ClaimRound,
    DirectDelivery,
    Gauge,
    Prunable,
    Rotation,
    Stats,
    Unhealthy,
)
from jobd.store.sqlite import deliveries, jobs, retention, scheduling, stats, tenants
from jobd.store.sqlite.checkpointer import WAL_RESTART_BYTES, Checkpointer
from jobd.store.sqlite.connection import connect, hold_daemon_lock, migrate, others_can_read
from jobd.store.sqlite.failures import unavailable
from jobd.store.sqlite.writer import GroupCommitWriter, left_until
from jobd.supervisor import Supervisor

T = TypeVar("T")
log = logging.getLogger("jobd.store")

STORAGE_FAILED = "storage_failed"
WRITES_FAILING = "writes_failing"


class SqliteBackend:
    """Named transitions over one SQLite file. See the module docstring."""

    name = "sqlite"

    def __init__(self, config: DatabaseConfig, *, supervisor: Supervisor | None = None) -> None:
        self._config = config
        self._path = config.path
        self._connect = functools.partial(connect, config.path, synchronous=config.synchronous,
                                          busy_timeout_s=config.busy_timeout)
        self._supervisor = supervisor or Supervisor()
        # synchronous = full: the writer's connection commits as NORMAL and the writer's
        # syncer fsyncs the WAL before any result is given out, which is the one thing
        # FULL adds to NORMAL in WAL mode, done off the writer's path (see writer.py)
        self._sync_wal_apart = config.synchronous == "full" and config.path != ":memory:"
        self._wal_fd: int | None = None
        self._daemon = False
        self.writer: GroupCommitWriter | None = None
        self._checkpointer: Checkpointer | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock: IO[bytes] | None = None
        # one partial per ttl and per owner, so that the writer groups their items together
        self._insert_groups: dict[float, Callable[..., Any]] = {}
        self._finish_groups: dict[str, Callable[..., Any]] = {}

    # lifecycle ---------------------------------------------------------------------

    async def open(self, *, daemon: bool = False) -> None:
        """Migrate, then open the reader and start the writer (and, for a daemon, take
        the file's lock and start the checkpointer)."""
        self._daemon = daemon
        if daemon:
            self._lock = hold_daemon_lock(self._path)
            if others_can_read(self._path):
                log.warning("database %s can be read by other users, and it holds every "
                            "tenant's webhook secret: chmod 600 it (and its -wal and -shm)",
                            self._path)
        try:
            await self.migrate()
            self._reader = self._connect(read_only=True)  # closed last: see the docstring
            self.writer = GroupCommitWriter(
                self._open_writer, sync=self._sync_wal if self._sync_wal_apart else None,
                supervisor=self._supervisor, probe_at_start=daemon)
            self.writer.start()
        except BaseException:
            self._close_files()
            raise
        if daemon:
            self._checkpointer = Checkpointer(self._connect,
                                              on_long_wal=self.writer.request_checkpoint,
                                              supervisor=self._supervisor)
            self._checkpointer.start()

    async def migrate(self) -> int:
        conn = self._connect()
        try:
            return migrate(conn, path=self._path)
        except sqlite3.Error as exc:
            raise unavailable(exc, f"cannot migrate database {self._path}") from None
        finally:
            conn.close()

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        if self._daemon:
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
            # once the log starts over (see checkpointer.py), its file is cut back to this
            conn.execute(f"PRAGMA journal_size_limit = {WAL_RESTART_BYTES}")
        # the statement journal of a write inside BEGIN ... COMMIT in memory, not in a
        # temp file created and unlinked for every such transaction
        conn.execute("PRAGMA temp_store = MEMORY")
        if self._sync_wal_apart:
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _sync_wal(self) -> None:
        """Make every commit so far durable: fdatasync the write-ahead log (the writer's
        connection keeps it open, so it is the same file for the daemon's lifetime)."""
        if self._wal_fd is None:
            self._wal_fd = os.open(f"{self._path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(self._wal_fd)

    async def close(self, timeout_s: float | None = None) -> None:
        """Finish the writes handed over, checkpoint and close. With ``timeout_s``, stop
        waiting for the writer (held by a lock elsewhere) or the last checkpoint (a slow
        disk): what the writer had not committed was not reported done, a checkpoint cut
        short is finished by the next start, and the process's exit ends both threads.
        (It blocks the event loop meanwhile: nothing else runs at that point.)"""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self.writer is not None and not self.writer.stop(left_until(deadline)):
            log.warning("the database writer did not finish within %gs; leaving it to the exit",
                        timeout_s)
            return
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._checkpointer is not None and not self._checkpointer.stop(left_until(deadline)):
            log.warning("the last checkpoint did not finish within %gs; the next start "
                        "finishes it", timeout_s)
            return
        self._close_files()

    def _close_files(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def health(self) -> Unhealthy | None:
        writer = self.writer
        if writer is None:
            return None
        if writer.sync_failed:
            return Unhealthy(STORAGE_FAILED, "Storage failed",
                             "the database could not be synced to disk; restart jobd")
        if (error := writer.write_error) is not None:
            return Unhealthy(WRITES_FAILING, "Database writes are failing",
                             f"writes to the database fail ({error}); reads still work, and "
                             "jobd recovers by itself once a write succeeds")
        return None

    async def metrics(self) -> BackendMetrics:
        by_status, dlq = await self._read_apart(stats.job_counts_and_dlq)
        return BackendMetrics(jobs=by_status, dlq_size=dlq, gauges=self._file_sizes(),
                              writer=self._require_writer().stats.copy())

    def _file_sizes(self) -> list[Gauge]:
        """The size of the database file (``main``) and of its write-ahead log (``wal``,
        0 when there is none). A WAL that keeps growing means checkpoints cannot finish."""
        if self._path == ":memory:":
            return []
        help_ = "Size of the database file (main) and of its write-ahead log (wal)."
        return [Gauge("jobd_db_bytes", help_, _size(path), (("file", name),))
                for name, path in (("main", self._path), ("wal", f"{self._path}-wal"))]

    # tenants -------------------------------------------------------------------------

    async def create_tenant(self, tenant_id: str, *, rate: float, burst: int,
                            max_concurrency: int | None, now: float) -> NewTenant:
        return await self._write(tenants.create_tenant, tenant_id, rate=rate, burst=burst,
                                 max_concurrency=max_concurrency, now=now)

    async def find_tenant(self, tenant_id: str) -> Tenant | None:
        return self._read(tenants.find_tenant, tenant_id)

    async def list_tenants(self) -> list[Tenant]:
        return self._read(tenants.list_tenants)

    async def update_tenant_limits(self, tenant_id: str, *, rate: float | None,
                                   burst: int | None, max_concurrency: int | None,
                                   clear_max_concurrency: bool, now: float) -> Tenant:
        return await self._write(tenants.update_tenant_limits, tenant_id, rate=rate, burst=burst,
                                 max_concurrency=max_concurrency,
                                 clear_max_concurrency=clear_max_concurrency, now=now)

    async def set_tenant_disabled(self, tenant_id: str, *, disabled: bool,
                                  now: float) -> Tenant:
        return await self._write(tenants.set_tenant_disabled, tenant_id, disabled=disabled,
                                 now=now)

    async def rotate_api_key(self, tenant_id: str, *, now: float) -> NewTenant:
        return await self._write(tenants.rotate_api_key, tenant_id, now=now)

    def tenant_for_key_hash(self, key_hash: str) -> asyncio.Future[Tenant | None]:
        return self._read_now(tenants.tenant_for_key_hash, key_hash)

    async def webhook_secret(self, tenant_id: str) -> str | None:
        return self._read(tenants.webhook_secret, tenant_id)

    # jobs: the API and the CLI ---------------------------------------------------------

    def insert_job(self, job: NewJob, *, body_hash: bytes, now: float, idempotency_ttl_s: float,
                   api_key_hash: str | None = None,
                   lease: StartLease | None = None) -> asyncio.Future[IdempotentResult]:
        """The jobs created in one batch of the writer are inserted together, by one
        multi-row INSERT (and without BEGIN/COMMIT when nothing else is written)."""
        group = self._insert_groups.get(idempotency_ttl_s)
        if group is None:
            group = self._insert_groups[idempotency_ttl_s] = functools.partial(
                jobs.insert_jobs, idempotency_ttl_s=idempotency_ttl_s)
        return self._require_writer().call_grouped(
            group, jobs.Creation(job, body_hash, now, api_key_hash, lease), alone=True)

    def job_state(self, job_id: str, tenant_id: str,
                  ) -> asyncio.Future[tuple[Job, list[Delivery]] | None]:
        return self._read_now(jobs.job_state, job_id, tenant_id)

    async def find_job(self, job_id: str, tenant_id: str | None = None) -> Job | None:
        return self._read(jobs.find_job, job_id, tenant_id)

    async def cancel_job(self, job_id: str, *, tenant_id: str | None, now: float) -> Job:
        return await self._write(jobs.cancel_job, job_id, tenant_id=tenant_id, now=now)

    async def retry_job(self, job_id: str, *, tenant_id: str | None, now: float) -> Job:
        return await self._write(jobs.retry_job, job_id, tenant_id=tenant_id, now=now)

    async def list_jobs(self, *, tenant_id: str | None = None, status: str | None = None,
                        job_type: str | None = None, limit: int = 50,
                        before_seq: int | None = None) -> list[Job]:
        return self._read(functools.partial(jobs.list_jobs, tenant_id=tenant_id, status=status,
                                            job_type=job_type, limit=limit,
                                            before_seq=before_seq))

    # jobs: the scheduler and the workers -----------------------------------------------

    def claim_jobs(self, *, now: float, limit: int, owner: str, lease_s: float,
                   rotation: Rotation) -> asyncio.Future[ClaimRound]:
        """Claims run in the writer in commit order, so the claims of one rotation in
        flight at once each go on from where the one before moved it."""
        return self._require_writer().call(functools.partial(
            scheduling.claim_rotating, now=now, limit=limit, owner=owner, lease_s=lease_s),
            rotation)

    def finish_job(self, job: ClaimedJob, *, owner: str, status: JobStatus, now: float,
                   result_json: str | None = None, error: str | None = None,
                   direct: DirectDelivery | None = None) -> asyncio.Future[bool]:
        """The outcomes that reach one batch of the writer are written together, with one
        statement for their jobs and one for their webhooks."""
        group = self._finish_groups.get(owner)
        if group is None:
            group = self._finish_groups[owner] = functools.partial(scheduling.finish_each,
                                                                   owner=owner)
        return self._require_writer().call_grouped(
            group, scheduling.Finish(job, status, now, result_json, error, direct))

    async def retry_job_later(self, job: ClaimedJob, *, owner: str, now: float,
                              next_run_at: float, error: str) -> bool:
        return await self._write(scheduling.schedule_retry, job, owner=owner, now=now,
                                 next_run_at=next_run_at, error=error)

    async def requeue_job(self, job: ClaimedJob, *, owner: str, now: float, reason: str) -> bool:
        return await self._write(scheduling.requeue_job, job, owner=owner, now=now, reason=reason)

    async def extend_leases(self, job_ids: list[str], *, owner: str,
                            expires: float) -> list[str]:
        return await self._write(scheduling.extend_leases, job_ids, owner=owner, expires=expires)

    async def rescue_jobs(self, *, now: float, all_running: bool) -> dict[str, int]:
        return await self._write(scheduling.rescue_orphans, now=now, all_running=all_running)

    # webhook deliveries ---------------------------------------------------------------

    async def claim_deliveries(self, *, now: float, limit: int, lease_s: float,
                               owner: str | None = None) -> list[ClaimedDelivery]:
        """(``owner`` is not kept: one daemon per file, so every send is its own.)"""
        return await self._write(deliveries.claim_due_deliveries, now=now, limit=limit,
                                 lease_s=lease_s)

    async def next_delivery_due(self) -> float | None:
        return self._read(deliveries.next_delivery_due_time)

    async def release_deliveries(self, *, now: float, all_sending: bool) -> int:
        return await self._write(deliveries.release_sending_deliveries, now=now,
                                 all_sending=all_sending)

    def record_delivery_attempt(self, delivery: ClaimedDelivery, *, now: float,
                                attempted_at: float, status_code: int | None,
                                error: str | None, duration_ms: float,
                                retry_at: float | None) -> asyncio.Future[DeliveryStatus | None]:
        """The attempts recorded in one writer batch share two statements."""
        return self._require_writer().call_grouped(
            deliveries.record_delivery_attempts, deliveries.AttemptRecord(
                delivery, now, attempted_at, status_code, error, duration_ms, retry_at))

    async def deliveries_of_job(self, job_id: str) -> list[Delivery]:
        return self._read(deliveries.deliveries_of_job, job_id)

    async def delivery_attempts(self, delivery_id: str) -> list[DeliveryAttempt]:
        return self._read(deliveries.attempts_of_delivery, delivery_id)

    # the dead-letter queue --------------------------------------------------------------

    async def find_delivery(self, delivery_id: str) -> Delivery | None:
        return self._read(deliveries.find_delivery, delivery_id)

    async def list_dead_deliveries(self, *, tenant_id: str | None = None,
                                   limit: int = 50) -> list[Delivery]:
        return self._read(functools.partial(deliveries.list_dead_deliveries,
                                            tenant_id=tenant_id, limit=limit))

    async def dead_delivery_ids(self, *, tenant_id: str | None = None) -> list[str]:
        return self._read(functools.partial(deliveries.dead_delivery_ids, tenant_id=tenant_id))

    async def redeliver_dead(self, delivery_ids: list[str], *, now: float) -> list[str]:
        return await self._write(deliveries.redeliver_dead, delivery_ids, now=now)

    async def purge_dead(self, delivery_ids: list[str]) -> list[str]:
        return await self._write(deliveries.purge_dead, delivery_ids)

    # figures and retention ------------------------------------------------------------

    async def stats(self, *, now: float) -> Stats:
        return await self._read_apart(functools.partial(stats.collect_stats, now=now))

    async def count_prunable(self, *, jobs_before: float, deliveries_before: float) -> Prunable:
        return await self._read_apart(functools.partial(
            stats.count_prunable, jobs_before=jobs_before, deliveries_before=deliveries_before))

    async def prune_jobs(self, *, before: float, batch: int) -> int:
        return await self._write(retention.prune_jobs_batch, cutoff=before, batch=batch)

    async def prune_deliveries(self, *, before: float, batch: int) -> int:
        return await self._write(retention.prune_deliveries_batch, cutoff=before, batch=batch)

    # connections ------------------------------------------------------------------------

    def _require_writer(self) -> GroupCommitWriter:
        if self.writer is None:
            raise unavailable(RuntimeError("not open"), f"database {self._path}")
        return self.writer

    def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """``fn(conn, *args, **kwargs)`` in the writer's next transaction."""
        return self._require_writer().call(functools.partial(fn, **kwargs) if kwargs else fn,
                                           *args)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(reader, *args)`` here, on the reader."""
        if self._reader is None:
            raise unavailable(RuntimeError("not open"), f"database {self._path}")
        try:
            return fn(self._reader, *args)
        except sqlite3.Error as exc:
            raise unavailable(exc, f"cannot read database {self._path}") from None

    def _read_now(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """:meth:`_read` as a future that is done already."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(self._read(fn, *args))
        except JobdError as exc:
            future.set_exception(exc)
        return future

    async def _read_apart(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read that may scan: on a connection of its own, in a worker thread."""
        def run() -> T:
            conn = self._connect(read_only=True)
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise unavailable(exc, f"cannot read database {self._path}") from None
            finally:
                conn.close()
        return await asyncio.to_thread(run)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
