"""The daemon's store: named transitions over one group-commit writer and one reader.

Writes go through :class:`GroupCommitWriter` (durable before they return).
Point reads (a job by id, a tenant by key) run on a reader connection in the
event loop's thread: in WAL mode they never wait for the writer and take
microseconds, less than a hop to another thread. The reader is read-only and is
opened first and closed last: SQLite deletes the ``-wal`` and ``-shm`` files when the
last connection that may write closes, and a next start on a full disk could not
create the ``-shm`` again (nor read anything without it).
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
from jobd.models import (
    ClaimedJob,
    DeliveryStatus,
    IdempotentResult,
    Job,
    JobStatus,
    NewJob,
    StartLease,
    Tenant,
)
from jobd.store.sqlite import deliveries, jobs, scheduling, tenants
from jobd.store.sqlite.checkpointer import WAL_RESTART_BYTES, Checkpointer
from jobd.store.sqlite.connection import connect, hold_daemon_lock, migrate, others_can_read
from jobd.store.sqlite.scheduling import ClaimRound
from jobd.store.sqlite.writer import GroupCommitWriter, WriterStats, left_until
from jobd.supervisor import Supervisor

T = TypeVar("T")
log = logging.getLogger("jobd.store")


class Store:
    def __init__(self, config: DatabaseConfig, *, supervisor: Supervisor | None = None) -> None:
        self._config = config
        self._open = functools.partial(connect, config.path, synchronous=config.synchronous,
                                       busy_timeout_s=config.busy_timeout)
        supervisor = supervisor or Supervisor()
        # synchronous = full: the writer's connection commits as NORMAL and the writer's
        # syncer fsyncs the WAL before any result is given out, which is the one thing
        # FULL adds to NORMAL in WAL mode, done off the writer's path (see writer.py)
        self._sync_wal_apart = config.synchronous == "full" and config.path != ":memory:"
        self._wal_fd: int | None = None
        self._writer = GroupCommitWriter(
            self._open_writer, sync=self._sync_wal if self._sync_wal_apart else None,
            supervisor=supervisor)
        self._checkpointer = Checkpointer(self._open, on_long_wal=self._writer.request_checkpoint,
                                          supervisor=supervisor)
        self._reader: sqlite3.Connection | None = None
        self._lock: IO[bytes] | None = None
        # one partial per ttl and per owner, so that the writer groups their items together
        self._insert_groups: dict[float, Callable[..., Any]] = {}
        self._finish_groups: dict[str, Callable[..., Any]] = {}

    # lifecycle -----------------------------------------------------------------
    def open(self, *, daemon_lock: bool = False) -> None:
        """Migrate and open. With ``daemon_lock``, refuse if another daemon has this file:
        two daemons would each take the other's running jobs for orphans."""
        if daemon_lock:
            self._lock = hold_daemon_lock(self._config.path)
            if others_can_read(self._config.path):
                log.warning("database %s can be read by other users, and it holds every "
                            "tenant's webhook secret: chmod 600 it (and its -wal and -shm)",
                            self._config.path)
        conn = self._open()
        try:
            migrate(conn)
            # read-only, and closed last (see the module's docstring)
            self._reader = self._open(read_only=True)
        finally:
            conn.close()
        self._writer.start()
        self._checkpointer.start()

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._open()
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
            self._wal_fd = os.open(f"{self._config.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(self._wal_fd)

    def close(self, timeout_s: float | None = None) -> None:
        """Finish the writes handed over, checkpoint and close. With ``timeout_s``, stop
        waiting for the writer (held by a lock elsewhere) or the last checkpoint (a slow
        disk): what the writer had not committed was not reported done, a checkpoint cut
        short is finished by the next start, and the process's exit ends both threads."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self._writer.stop(left_until(deadline)):
            log.warning("the database writer did not finish within %gs; leaving it to the exit",
                        timeout_s)
            return
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        if not self._checkpointer.stop(left_until(deadline)):
            log.warning("the last checkpoint did not finish within %gs; the next start "
                        "finishes it", timeout_s)
            return
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def writer_stats(self) -> WriterStats:
        """A copy of the writer's counts (for /metrics and tests)."""
        return self._writer.stats.copy()

    @property
    def sync_failed(self) -> bool:
        """The write-ahead log could not be synced to disk: every write fails from then
        on, until a restart (see writer.py)."""
        return self._writer.sync_failed

    @property
    def write_error(self) -> str | None:
        """Why the database's writes are failing now (a full disk, a lock held elsewhere),
        or None; it clears by itself once a write succeeds again (see writer.py)."""
        return self._writer.write_error

    def file_bytes(self) -> dict[str, int]:
        """The size of the database file (``main``) and of its write-ahead log (``wal``,
        0 when there is none). A WAL that keeps growing means checkpoints cannot finish."""
        path = self._config.path
        if path == ":memory:":
            return {}
        return {"main": _size(path), "wal": _size(f"{path}-wal")}

    # generic -------------------------------------------------------------------
    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if kwargs:
            return await self._writer.call(functools.partial(fn, **kwargs), *args)
        return await self._writer.call(fn, *args)

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        assert self._reader is not None, "store is not open"
        return fn(self._reader, *args, **kwargs)

    async def read_slow(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read that may scan: on its own connection in a worker thread."""
        def run() -> T:
            conn = self._open()
            try:
                return fn(conn, *args, **kwargs)
            finally:
                conn.close()
        return await asyncio.to_thread(run)

    # API -----------------------------------------------------------------------
    def tenant_for_key_hash(self, key_hash: str) -> Tenant | None:
        return self.read(tenants.tenant_for_key_hash, key_hash)

    async def insert_job(self, job: NewJob, *, body_hash: bytes, now: float,
                         idempotency_ttl_s: float,
                         api_key_hash: str | None = None) -> IdempotentResult:
        """Create a job (or replay its key). The jobs created in one batch of the
        writer are inserted together, by one multi-row INSERT."""
        return await self.insert_job_soon(job, body_hash=body_hash, now=now,
                                          idempotency_ttl_s=idempotency_ttl_s,
                                          api_key_hash=api_key_hash)

    def insert_job_soon(self, job: NewJob, *, body_hash: bytes, now: float,
                        idempotency_ttl_s: float,
                        api_key_hash: str | None = None,
                        lease: StartLease | None = None) -> asyncio.Future[IdempotentResult]:
        """:meth:`insert_job` as a future, done after the COMMIT. With a ``lease`` the job
        may be created running (its result says ``started``)."""
        group = self._insert_groups.get(idempotency_ttl_s)
        if group is None:
            group = self._insert_groups[idempotency_ttl_s] = functools.partial(
                jobs.insert_jobs, idempotency_ttl_s=idempotency_ttl_s)
        return self._writer.call_grouped(group, jobs.Creation(job, body_hash, now, api_key_hash,
                                                                lease), alone=True)

    def find_job(self, job_id: str, tenant_id: str | None = None) -> Job | None:
        return self.read(jobs.find_job, job_id, tenant_id)

    def deliveries_of_job(self, job_id: str) -> list[deliveries.Delivery]:
        return self.read(deliveries.deliveries_of_job, job_id)

    async def cancel_job(self, job_id: str, *, tenant_id: str | None, now: float) -> Job:
        return await self.write(jobs.cancel_job, job_id, tenant_id=tenant_id, now=now)

    # scheduler and workers -----------------------------------------------------
    async def claim_due_jobs(self, *, now: float, limit: int, owner: str, lease_s: float,
                             rotation: scheduling.Rotation | None = None) -> ClaimRound:
        return await self.claim_due_jobs_soon(now=now, limit=limit, owner=owner,
                                              lease_s=lease_s, rotation=rotation)

    def claim_due_jobs_soon(self, *, now: float, limit: int, owner: str, lease_s: float,
                            rotation: scheduling.Rotation | None = None,
                            ) -> asyncio.Future[ClaimRound]:
        """:meth:`claim_due_jobs` as a future, done after the COMMIT. The round-robin goes
        on from ``rotation`` (a fresh one starts at the first tenant)."""
        return self._writer.call(functools.partial(
            scheduling.claim_rotating, now=now, limit=limit, owner=owner, lease_s=lease_s),
            rotation or scheduling.Rotation())

    async def finish_job(self, job: ClaimedJob, *, owner: str, status: JobStatus, now: float,
                         result_json: str | None = None, error: str | None = None) -> None:
        """Finish a job (queueing its webhook). The outcomes that reach one batch of the
        writer are written together, with one statement for all of them."""
        await self.finish_job_soon(job, owner=owner, status=status, now=now,
                                   result_json=result_json, error=error)

    def finish_job_soon(self, job: ClaimedJob, *, owner: str, status: JobStatus, now: float,
                        result_json: str | None = None, error: str | None = None,
                        direct: scheduling.DirectDelivery | None = None) -> asyncio.Future[bool]:
        """:meth:`finish_job` as a future, done after the COMMIT. With ``direct`` the job's
        webhook is created ``sending`` under its lease; the future then says whether it was
        (False if the job's claim was no longer current: nothing was written)."""
        group = self._finish_groups.get(owner)
        if group is None:
            group = self._finish_groups[owner] = functools.partial(scheduling.finish_each,
                                                                   owner=owner)
        return self._writer.call_grouped(
            group, scheduling.Finish(job, status, now, result_json, error, direct))

    async def schedule_retry(self, job: ClaimedJob, *, owner: str, now: float,
                             next_run_at: float, error: str) -> bool:
        return await self.write(scheduling.schedule_retry, job, owner=owner, now=now,
                                next_run_at=next_run_at, error=error)

    async def requeue_job(self, job: ClaimedJob, *, owner: str, now: float, reason: str) -> bool:
        return await self.write(scheduling.requeue_job, job, owner=owner, now=now, reason=reason)

    async def extend_leases(self, job_ids: list[str], *, owner: str, expires: float) -> list[str]:
        return await self.write(scheduling.extend_leases, job_ids, owner=owner, expires=expires)

    async def rescue_orphans(self, *, now: float, all_running: bool) -> dict[str, int]:
        return await self.write(scheduling.rescue_orphans, now=now, all_running=all_running)

    # webhooks ------------------------------------------------------------------
    async def claim_due_deliveries(self, *, now: float, limit: int,
                                   lease_s: float) -> list[deliveries.ClaimedDelivery]:
        return await self.write(deliveries.claim_due_deliveries, now=now, limit=limit,
                                lease_s=lease_s)

    def webhook_secret(self, tenant_id: str) -> str | None:
        """The tenant's current webhook secret (None: no such tenant)."""
        return self.read(tenants.webhook_secret, tenant_id)

    def next_delivery_due_time(self) -> float | None:
        return self.read(deliveries.next_delivery_due_time)

    async def release_sending_deliveries(self, *, now: float, all_sending: bool) -> int:
        return await self.write(deliveries.release_sending_deliveries, now=now,
                                all_sending=all_sending)

    async def record_delivery_attempt(self, delivery: deliveries.ClaimedDelivery, *, now: float,
                                      attempted_at: float, status_code: int | None,
                                      error: str | None, duration_ms: float,
                                      retry_at: float | None) -> DeliveryStatus | None:
        """The attempts recorded in one writer batch share two statements."""
        status: DeliveryStatus | None = await self._writer.call_grouped(
            deliveries.record_delivery_attempts, deliveries.AttemptRecord(
                delivery, now, attempted_at, status_code, error, duration_ms, retry_at))
        return status

    async def redeliver_dead(self, delivery_ids: list[str], *, now: float) -> list[str]:
        return await self.write(deliveries.redeliver_dead, delivery_ids, now=now)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
