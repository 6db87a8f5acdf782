"""jobd's store on PostgreSQL: :class:`PostgresBackend`, the second implementation of
:class:`jobd.store.backend.Backend`.

One asyncpg pool (``database.pool_size`` connections, jobd's session settings in the
startup packet). A call borrows a connection for its transaction; asyncpg prepares each
statement once per connection. No writer thread: each statement commits on its own
connection (``synchronous_commit`` from ``database.synchronous``, so a result is durable
before it is given out), and PostgreSQL flushes the WAL of commits made at the same time
together.

The three hot writes are batched (:mod:`jobd.store.postgres.batching`): new jobs,
finishes (with their webhooks) and webhook attempts made together go out as one
statement, several batches in flight at once. Claims run one round trip each
(``jobd_claim``, migration 0002); the claims of one :class:`Rotation` run one after
another, each starting where the previous one left the rotation, as on SQLite.

The module functions (``tenants``, ``jobs``, ``scheduling``, ``deliveries``, ``figures``)
take a connection; this class lends them one and turns database failures into
``StoreUnavailable``, remembering the last one for :meth:`health`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from jobd.config import DatabaseConfig
from jobd.errors import ConfigError, StoreUnavailable
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
from jobd.store.postgres import deliveries, figures, jobs, scheduling, tenants
from jobd.store.postgres.batching import Batcher, RunBatch
from jobd.store.postgres.connection import create_pool, migrate_database
from jobd.store.postgres.failures import (
    DATABASE_ERRORS,
    GONE,
    ITEM_ERRORS,
    OVERLOADED,
    READ_ONLY,
    STORAGE_FAILED,
    UNREACHABLE,
    reason_of,
    store_error,
)

log = logging.getLogger("jobd.store")

TITLES = {UNREACHABLE: "Database unreachable", READ_ONLY: "Database is read-only",
          STORAGE_FAILED: "Storage failed", OVERLOADED: "Database overloaded"}

R = TypeVar("R")
T = TypeVar("T")
Transition = Callable[..., Awaitable[R]]


class PostgresBackend:
    """Named transitions over one PostgreSQL database. See the module docstring."""

    name = "postgres"

    def __init__(self, config: DatabaseConfig) -> None:
        if config.url is None:
            raise ConfigError("database.url is not set: the database is SQLite")
        self._config = config
        self._url = config.url
        self._pool: asyncpg.Pool | None = None
        self._problem: str | None = None  # why the last call failed, until one succeeds
        self._problem_detail = ""
        self._inserts = Batcher(jobs.insert_jobs, self._connection, self._failed)
        self._finishes = Batcher(scheduling.finish_jobs, self._connection, self._failed)
        self._attempts = Batcher(deliveries.record_attempts, self._connection, self._failed)
        self._claims: dict[int, asyncio.Future[ClaimRound]] = {}  # id(Rotation) -> last claim
        self._reads: set[asyncio.Future[Any]] = set()

    # lifecycle ---------------------------------------------------------------------

    async def open(self, *, daemon: bool = False) -> None:
        """Migrate, then open the pool: all of it for a daemon, one connection (more on
        demand) for the CLI."""
        await self.migrate()
        self._pool = await create_pool(self._config, min_size=None if daemon else 1)

    async def migrate(self) -> int:
        return await migrate_database(self._config)

    async def close(self, timeout_s: float | None = None) -> None:
        """Answer every call made so far, then close the pool; past ``timeout_s``, end its
        connections instead (what was not answered was not committed)."""
        try:
            async with asyncio.timeout(timeout_s):
                for batcher in (self._inserts, self._finishes, self._attempts):
                    await batcher.drain()
                pending = [*self._claims.values(), *self._reads]
                await asyncio.gather(*pending, return_exceptions=True)
                if self._pool is not None:
                    await self._pool.close()
        except TimeoutError:
            log.warning("calls to the database did not finish within %gs; closing its "
                        "connections", timeout_s)
            if self._pool is not None:
                self._pool.terminate()
        self._pool = None

    def health(self) -> Unhealthy | None:
        if self._problem is None:
            return None
        return Unhealthy(self._problem, TITLES.get(self._problem, "Database unavailable"),
                         self._problem_detail)

    async def metrics(self) -> BackendMetrics:
        pool = self._require_pool()
        in_flight = sum(b.in_flight for b in (self._inserts, self._finishes, self._attempts))
        gauges = [
            Gauge("jobd_db_pool_connections", "Connections the pool holds open.",
                  pool.get_size()),
            Gauge("jobd_db_pool_connections_max", "Connections the pool may open "
                  "(database.pool_size).", pool.get_max_size()),
            Gauge("jobd_db_pool_connections_idle", "Open connections no call is using.",
                  pool.get_idle_size()),
            Gauge("jobd_db_batches_in_flight", "Batches of new jobs, finishes and webhook "
                  "attempts waiting for a connection or running.", in_flight),
        ]
        by_status, dlq = await self._read(figures.job_counts_and_dlq)
        return BackendMetrics(jobs=by_status, dlq_size=dlq, gauges=gauges)

    # tenants -------------------------------------------------------------------------

    async def create_tenant(self, tenant_id: str, *, rate: float, burst: int,
                            max_concurrency: int | None, now: float) -> NewTenant:
        return await self._write(tenants.create_tenant, tenant_id, rate=rate, burst=burst,
                                 max_concurrency=max_concurrency, now=now)

    async def find_tenant(self, tenant_id: str) -> Tenant | None:
        return await self._read(tenants.find_tenant, tenant_id)

    async def list_tenants(self) -> list[Tenant]:
        return await self._read(tenants.list_tenants)

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
        return self._soon(self._read(tenants.tenant_for_key_hash, key_hash))

    async def webhook_secret(self, tenant_id: str) -> str | None:
        return await self._read(tenants.webhook_secret, tenant_id)

    # jobs: the API and the CLI ---------------------------------------------------------

    def insert_job(self, job: NewJob, *, body_hash: bytes, now: float, idempotency_ttl_s: float,
                   api_key_hash: str | None = None,
                   lease: StartLease | None = None) -> asyncio.Future[IdempotentResult]:
        return self._inserts.submit(jobs.Creation(job, body_hash, now, idempotency_ttl_s,
                                                  api_key_hash, lease))

    def job_state(self, job_id: str, tenant_id: str,
                  ) -> asyncio.Future[tuple[Job, list[Delivery]] | None]:
        return self._soon(self._read(jobs.job_state, job_id, tenant_id))

    async def find_job(self, job_id: str, tenant_id: str | None = None) -> Job | None:
        return await self._read(jobs.find_job, job_id, tenant_id)

    async def cancel_job(self, job_id: str, *, tenant_id: str | None, now: float) -> Job:
        return await self._write(jobs.cancel_job, job_id, tenant_id=tenant_id, now=now)

    async def retry_job(self, job_id: str, *, tenant_id: str | None, now: float) -> Job:
        return await self._write(jobs.retry_job, job_id, tenant_id=tenant_id, now=now)

    async def list_jobs(self, *, tenant_id: str | None = None, status: str | None = None,
                        job_type: str | None = None, limit: int = 50,
                        before_seq: int | None = None) -> list[Job]:
        return await self._read(jobs.list_jobs, tenant_id=tenant_id, status=status,
                                job_type=job_type, limit=limit, before_seq=before_seq)

    # jobs: the scheduler and the workers -----------------------------------------------

    def claim_jobs(self, *, now: float, limit: int, owner: str, lease_s: float,
                   rotation: Rotation) -> asyncio.Future[ClaimRound]:
        """Claims of one rotation run one after another, each from where the previous one
        moved it (claims of different rotations, or other processes, run at once: SKIP
        LOCKED keeps them apart, the tenants' row locks keep max_concurrency exact)."""
        key = id(rotation)
        claim = asyncio.ensure_future(self._claim_after(
            self._claims.get(key), rotation, now=now, limit=limit, owner=owner, lease_s=lease_s))
        self._claims[key] = claim

        def forget(done: asyncio.Future[ClaimRound]) -> None:
            if self._claims.get(key) is done:
                del self._claims[key]
        claim.add_done_callback(forget)
        return claim

    async def _claim_after(self, previous: asyncio.Future[ClaimRound] | None, rotation: Rotation,
                           **kwargs: Any) -> ClaimRound:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own caller's
        round_ = await self._write(scheduling.claim_jobs, after=rotation.after, **kwargs)
        rotation.after = round_.last_tenant
        return round_

    def finish_job(self, job: ClaimedJob, *, owner: str, status: JobStatus, now: float,
                   result_json: str | None = None, error: str | None = None,
                   direct: DirectDelivery | None = None) -> asyncio.Future[bool]:
        """The future says whether the job was finished (its claim was still current); with
        ``direct``, its webhook was then created ``sending``."""
        return self._finishes.submit(scheduling.Finish(job, owner, status, now, result_json,
                                                       error, direct))

    async def retry_job_later(self, job: ClaimedJob, *, owner: str, now: float,
                              next_run_at: float, error: str) -> bool:
        return await self._write(scheduling.retry_job_later, job, owner=owner, now=now,
                                 next_run_at=next_run_at, error=error)

    async def requeue_job(self, job: ClaimedJob, *, owner: str, now: float, reason: str) -> bool:
        return await self._write(scheduling.requeue_job, job, owner=owner, now=now, reason=reason)

    async def extend_leases(self, job_ids: list[str], *, owner: str,
                            expires: float) -> list[str]:
        return await self._write(scheduling.extend_leases, job_ids, owner=owner, expires=expires)

    async def rescue_jobs(self, *, now: float, all_running: bool) -> dict[str, int]:
        return await self._write(scheduling.rescue_jobs, now=now, all_running=all_running)

    # webhook deliveries ---------------------------------------------------------------

    async def claim_deliveries(self, *, now: float, limit: int, lease_s: float,
                               owner: str | None = None) -> list[ClaimedDelivery]:
        return await self._write(deliveries.claim_deliveries, now=now, limit=limit,
                                 lease_s=lease_s, owner=owner)

    async def next_delivery_due(self) -> float | None:
        return await self._read(deliveries.next_delivery_due)

    async def release_deliveries(self, *, now: float, all_sending: bool) -> int:
        return await self._write(deliveries.release_deliveries, now=now, all_sending=all_sending)

    def record_delivery_attempt(self, delivery: ClaimedDelivery, *, now: float,
                                attempted_at: float, status_code: int | None,
                                error: str | None, duration_ms: float,
                                retry_at: float | None) -> asyncio.Future[DeliveryStatus | None]:
        return self._attempts.submit(deliveries.Attempt(delivery, now, attempted_at, status_code,
                                                        error, duration_ms, retry_at))

    async def deliveries_of_job(self, job_id: str) -> list[Delivery]:
        return await self._read(deliveries.deliveries_of_job, job_id)

    async def delivery_attempts(self, delivery_id: str) -> list[DeliveryAttempt]:
        return await self._read(deliveries.delivery_attempts, delivery_id)

    # the dead-letter queue --------------------------------------------------------------

    async def find_delivery(self, delivery_id: str) -> Delivery | None:
        return await self._read(deliveries.find_delivery, delivery_id)

    async def list_dead_deliveries(self, *, tenant_id: str | None = None,
                                   limit: int = 50) -> list[Delivery]:
        return await self._read(deliveries.list_dead_deliveries, tenant_id=tenant_id, limit=limit)

    async def dead_delivery_ids(self, *, tenant_id: str | None = None) -> list[str]:
        return await self._read(deliveries.dead_delivery_ids, tenant_id=tenant_id)

    async def redeliver_dead(self, delivery_ids: list[str], *, now: float) -> list[str]:
        return await self._write(deliveries.redeliver_dead, delivery_ids, now=now)

    async def purge_dead(self, delivery_ids: list[str]) -> list[str]:
        return await self._write(deliveries.purge_dead, delivery_ids)

    # figures and retention ------------------------------------------------------------

    async def stats(self, *, now: float) -> Stats:
        return await self._read(figures.stats, now=now)

    async def count_prunable(self, *, jobs_before: float, deliveries_before: float) -> Prunable:
        return await self._read(figures.count_prunable, jobs_before=jobs_before,
                                deliveries_before=deliveries_before)

    async def prune_jobs(self, *, before: float, batch: int) -> int:
        return await self._write(figures.prune_jobs, before=before, batch=batch)

    async def prune_deliveries(self, *, before: float, batch: int) -> int:
        return await self._write(figures.prune_deliveries, before=before, batch=batch)

    # beside the transitions: the cluster's statements (jobd.store.postgres.cluster) -------

    async def call(self, fn: Transition[R], *args: Any, **kwargs: Any) -> R:
        """``fn(conn, ...)`` on a pooled connection, failures as for every transition."""
        return await self._write(fn, *args, **kwargs)

    def batcher(self, run: RunBatch[T]) -> Batcher[T]:
        """A :class:`Batcher` of calls of one kind over this backend's pool (drain it
        before :meth:`close`)."""
        return Batcher(run, self._connection, self._failed)

    # connections and failures ---------------------------------------------------------

    async def _read(self, fn: Transition[R], *args: Any, **kwargs: Any) -> R:
        async with self._connection(write=False) as conn:
            return await fn(conn, *args, **kwargs)

    async def _write(self, fn: Transition[R], *args: Any, **kwargs: Any) -> R:
        async with self._connection() as conn:
            return await fn(conn, *args, **kwargs)

    @asynccontextmanager
    async def _connection(self, *, write: bool = True) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one call. A database failure becomes StoreUnavailable
        and :meth:`health`'s reason; a call that gets through clears the reason (a failed
        write's reason, such as a full disk, only a write)."""
        pool = self._require_pool()
        connecting = True
        try:
            async with pool.acquire() as conn:
                connecting = False
                try:
                    yield conn
                except GONE:
                    conn.terminate()  # the pool opens a new one in its place
                    raise
        except ITEM_ERRORS as exc:  # an item's own data: the database is fine
            raise store_error(exc, self._url) from None
        except DATABASE_ERRORS as exc:
            raise self._failed(exc, connecting=connecting) from None
        if self._problem is not None and (write or self._problem not in (READ_ONLY,
                                                                        STORAGE_FAILED)):
            log.info("the database at %s answers again", self._config.location)
            self._problem = None

    def _failed(self, exc: BaseException, *, connecting: bool = False) -> StoreUnavailable:
        """``exc`` for the caller; unless it is an item's own error, also the reason
        :meth:`health` gives (any failure to get a connection: unreachable)."""
        error = store_error(exc, self._url, connecting=connecting)
        if not isinstance(exc, ITEM_ERRORS):
            reason = UNREACHABLE if connecting else reason_of(exc)
            if reason != self._problem:
                log.warning("%s (%s)", error.detail, reason)
            self._problem, self._problem_detail = reason, error.detail
        return error

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable(f"the database at {self._config.location} is not open")
        return self._pool

    def _soon(self, call: Awaitable[R]) -> asyncio.Future[R]:
        future = asyncio.ensure_future(call)
        self._reads.add(future)
        future.add_done_callback(self._reads.discard)
        return future
