"""The store's boundary: every transition the daemon, the API and the CLI make, named.

Two backends implement :class:`Backend`: SQLite (``jobd.store.sqlite``: one file, one
group-commit writer thread) and PostgreSQL (``jobd.store.postgres``: a connection pool).
:func:`jobd.store.open_backend` picks one from the configuration. Nothing outside
``jobd/store/`` knows which one runs, holds SQL text or a database connection.

Conventions every backend keeps:

* Times are Unix seconds (floats) passed in by the caller (``now``); no query reads the
  database's own clock, so tests step time without sleeping.
* A transition is one transaction. A method returns only after its commit is durable
  (``database.synchronous``): nothing acts on a write before that.
* The transitions on the hot paths return an :class:`asyncio.Future` (a caller may add
  a callback instead of awaiting it in a task); the others are coroutines. A backend may
  batch calls made in the same turn of the event loop into one statement or one
  transaction, as long as each call keeps its own outcome.
* Finishing writes are fenced: they name the attempt and the lease owner (jobs) or the
  lease's expiry (deliveries), so a worker whose claim was taken away changes nothing.
* A state change and the work it causes commit together: a job's final status and its
  webhook delivery (the outbox) are one transaction.
* Refusals raise :class:`jobd.errors.JobdError` subclasses (``NotFound``,
  ``InvalidState``, ``IdempotencyConflict``, ``Unauthorized``, ``AlreadyExists``); a
  database that cannot be reached or written raises ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass, field
from typing import Protocol

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

# records of the transitions ------------------------------------------------------------

@dataclass(slots=True)
class Rotation:
    """Where one worker pool's round-robin across tenants goes on from. A claim reads it
    and moves it on when it commits, so claims in flight at once continue each other's
    rotation instead of starting from the same tenant."""

    after: str | None = None


@dataclass(slots=True)
class ClaimRound:
    jobs: list[ClaimedJob]
    last_tenant: str | None  # where the next round's rotation starts after
    queue_was_empty: bool = False  # no job was queued or waiting for a retry, due or not


@dataclass(slots=True)
class DirectDelivery:
    """A finished job's webhook that the dispatcher sends as soon as the finish commits:
    it is created ``sending`` under this lease, so it needs no claim of its own."""

    id: str
    body: bytes
    lease_expires_at: float


@dataclass(slots=True)
class ClaimedDelivery:
    """A delivery the dispatcher now holds (``sending``): what it needs to sign and send it.

    ``lease_expires_at`` is also the fencing token: only the claim that is still current
    may record an outcome."""

    id: str
    job_id: str
    tenant_id: str
    url: str
    body: bytes
    secret: str | None  # the tenant's webhook secret (None: the tenant is gone)
    attempts: int  # attempts already made in the current retry budget
    lease_expires_at: float


@dataclass(frozen=True)
class Stats:
    by_status: dict[str, int]
    by_tenant: dict[str, dict[str, int]]
    finished_last_minute: dict[str, int]
    finished_last_hour: dict[str, int]
    dlq_size: int
    oldest_queued_due: float | None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Prunable:
    jobs: int
    deliveries: int


@dataclass(frozen=True, slots=True)
class Unhealthy:
    """Why the database cannot take writes now (``health``): what ``/healthz`` answers."""

    code: str    # e.g. writes_failing, storage_failed, database_unreachable
    title: str
    detail: str


TRANSACTION_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(slots=True)
class WriterStats:
    """What SQLite's group-commit writer did since it started (``jobd_db_transactions``
    and the other writer figures of /metrics). Only the writer's threads change these; a
    reader (the /metrics scrape) takes a :meth:`copy`, which may miss the transaction
    that is being counted at that moment, nothing more."""

    transactions: int = 0  # group transactions run (a batch each)
    failed: int = 0        # of those, the ones the database failed: all their writes got a 503
    units: int = 0         # writes they carried: a new job, a claim, an outcome ...
    seconds: float = 0.0   # their time, BEGIN to the end of COMMIT (or the one statement of
                           # a batch that runs alone); the fsync too, unless the syncer does it
    by_bucket: list[int] = field(  # transactions by time: <= each TRANSACTION_BUCKETS_S, above
        default_factory=lambda: [0] * (len(TRANSACTION_BUCKETS_S) + 1))
    syncs: int = 0              # fsyncs of the WAL by the syncer (changed by its thread only)
    sync_seconds: float = 0.0

    def count(self, units: int, seconds: float, *, failed: bool) -> None:
        self.transactions += 1
        self.failed += failed
        self.units += units
        self.seconds += seconds
        self.by_bucket[bisect.bisect_left(TRANSACTION_BUCKETS_S, seconds)] += 1

    def copy(self) -> WriterStats:
        return WriterStats(self.transactions, self.failed, self.units, self.seconds,
                           list(self.by_bucket), self.syncs, self.sync_seconds)


@dataclass(frozen=True, slots=True)
class Gauge:
    """One sample of a gauge only some backend has (the pool's connections, the file's
    size), for /metrics."""

    name: str
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()  # (label, value) pairs


@dataclass(slots=True)
class BackendMetrics:
    """What ``GET /metrics`` reads from the store at scrape time."""

    jobs: dict[str, int]           # jobs by status (statuses with none left out)
    dlq_size: int
    gauges: list[Gauge] = field(default_factory=list)  # the backend's own
    writer: WriterStats | None = None  # SQLite: its writer's figures


# the protocol --------------------------------------------------------------------------

class Backend(Protocol):
    """Named transitions over one database. See the module docstring for the rules."""

    name: str  # "sqlite" or "postgres"

    # lifecycle ---------------------------------------------------------------------
    async def open(self, *, daemon: bool = False) -> None:
        """Connect and migrate. ``daemon``: this process runs jobs (it may hold what a
        daemon needs: a lock file, background threads); the CLI opens without it."""

    async def close(self, timeout_s: float | None = None) -> None:
        """Answer every call made so far, then close. With ``timeout_s``, stop waiting for
        them after that long (a write held up elsewhere): what was not answered was not
        written, and the process's exit ends the rest."""

    async def migrate(self) -> int:
        """Apply the migrations this jobd has and the database lacks; return the schema
        version. A schema newer than this jobd knows is refused (``StoreUnavailable``):
        an older node must not write to tables it does not understand. ``open`` does it."""

    def health(self) -> Unhealthy | None:
        """None while writes can succeed; otherwise why not, for /healthz."""

    async def metrics(self) -> BackendMetrics: ...

    # tenants -------------------------------------------------------------------------
    async def create_tenant(self, tenant_id: str, *, rate: float, burst: int,
                            max_concurrency: int | None, now: float) -> NewTenant: ...

    async def find_tenant(self, tenant_id: str) -> Tenant | None: ...

    async def list_tenants(self) -> list[Tenant]: ...

    async def update_tenant_limits(self, tenant_id: str, *, rate: float | None,
                                   burst: int | None, max_concurrency: int | None,
                                   clear_max_concurrency: bool, now: float) -> Tenant: ...

    async def set_tenant_disabled(self, tenant_id: str, *, disabled: bool,
                                  now: float) -> Tenant: ...

    async def rotate_api_key(self, tenant_id: str, *, now: float) -> NewTenant: ...

    def tenant_for_key_hash(self, key_hash: str) -> asyncio.Future[Tenant | None]:
        """The tenant holding this API key hash (disabled ones too: the caller decides)."""

    async def webhook_secret(self, tenant_id: str) -> str | None: ...

    # jobs: the API and the CLI ---------------------------------------------------------
    def insert_job(self, job: NewJob, *, body_hash: bytes, now: float, idempotency_ttl_s: float,
                   api_key_hash: str | None = None,
                   lease: StartLease | None = None) -> asyncio.Future[IdempotentResult]:
        """Create a job, or replay its Idempotency-Key (same ``body_hash``), or raise
        ``IdempotencyConflict`` (another body). A key older than ``idempotency_ttl_s`` is
        taken over by the new job. With ``api_key_hash`` the key is checked again in the
        transaction (``Unauthorized`` if it was rotated or its tenant disabled). With a
        ``lease`` the job may be created already running, held by the lease's owner
        (the result then says ``started``); a backend may always create it queued."""

    def job_state(self, job_id: str, tenant_id: str,
                  ) -> asyncio.Future[tuple[Job, list[Delivery]] | None]:
        """``GET /jobs/{id}``: the tenant's job and its webhook deliveries, newest last
        (None: no such job for this tenant)."""

    async def find_job(self, job_id: str, tenant_id: str | None = None) -> Job | None: ...

    async def cancel_job(self, job_id: str, *, tenant_id: str | None, now: float) -> Job:
        """A waiting job is cancelled at once (its webhook queued with it); a running one
        is asked to stop (``cancel_requested``). NotFound / InvalidState otherwise."""

    async def retry_job(self, job_id: str, *, tenant_id: str | None, now: float) -> Job:
        """A fatal or cancelled job is queued again with at least one more attempt."""

    async def list_jobs(self, *, tenant_id: str | None = None, status: str | None = None,
                        job_type: str | None = None, limit: int = 50,
                        before_seq: int | None = None) -> list[Job]:
        """Newest first; page with ``before_seq`` (the last row's ``seq``)."""

    # jobs: the scheduler and the workers -----------------------------------------------
    def claim_jobs(self, *, now: float, limit: int, owner: str, lease_s: float,
                   rotation: Rotation) -> asyncio.Future[ClaimRound]:
        """Claim up to ``limit`` due jobs for ``owner``: every waiting tenant's best job
        (highest priority, then earliest due) before any tenant's second, starting after
        ``rotation.after``, within each tenant's ``max_concurrency``. Moves ``rotation``."""

    def finish_job(self, job: ClaimedJob, *, owner: str, status: JobStatus, now: float,
                   result_json: str | None = None, error: str | None = None,
                   direct: DirectDelivery | None = None) -> asyncio.Future[bool]:
        """Move a running job to a final status and queue its webhook, fenced. With
        ``direct`` its delivery is created ``sending`` under that lease: the future says
        whether it was (False when the claim was no longer current: nothing written)."""

    async def retry_job_later(self, job: ClaimedJob, *, owner: str, now: float,
                              next_run_at: float, error: str) -> bool:
        """A failed attempt with attempts left: ``retry`` at ``next_run_at``; fenced."""

    async def requeue_job(self, job: ClaimedJob, *, owner: str, now: float, reason: str) -> bool:
        """Put a job back without judging it (shutdown): it runs again as soon as possible."""

    async def extend_leases(self, job_ids: list[str], *, owner: str,
                            expires: float) -> list[str]:
        """Heartbeat for the owner's running jobs; returns those whose cancel was asked."""

    async def rescue_jobs(self, *, now: float, all_running: bool) -> dict[str, int]:
        """Running jobs nobody holds (lease expired; ``all_running``: every one, at the
        start of the only daemon) go back to ``retry``, or ``fatal`` if that was their
        last attempt (queueing its webhook). Returns ``{"retry": n, "fatal": m}``."""

    # webhook deliveries ---------------------------------------------------------------
    async def claim_deliveries(self, *, now: float, limit: int, lease_s: float,
                               owner: str | None = None) -> list[ClaimedDelivery]:
        """Move up to ``limit`` due ``pending`` deliveries to ``sending``, earliest first,
        held by ``owner`` (a node's lease owner name, where nodes share the database: a
        dead node's sends are then put back by name; a backend of one node may ignore it)."""

    async def next_delivery_due(self) -> float | None: ...

    async def release_deliveries(self, *, now: float, all_sending: bool) -> int:
        """``sending`` deliveries whose lease ran out (``all_sending``: every one) go back
        to ``pending``, due now, without counting an attempt."""

    def record_delivery_attempt(self, delivery: ClaimedDelivery, *, now: float,
                                attempted_at: float, status_code: int | None,
                                error: str | None, duration_ms: float,
                                retry_at: float | None) -> asyncio.Future[DeliveryStatus | None]:
        """Record one attempt and the delivery's new state: ``succeeded`` (``error`` is
        None), ``pending`` again at ``retry_at``, or ``dead`` (the DLQ). None when the
        claim was no longer current (the attempt is recorded all the same)."""

    async def deliveries_of_job(self, job_id: str) -> list[Delivery]: ...

    async def delivery_attempts(self, delivery_id: str) -> list[DeliveryAttempt]: ...

    # the dead-letter queue --------------------------------------------------------------
    async def find_delivery(self, delivery_id: str) -> Delivery | None: ...

    async def list_dead_deliveries(self, *, tenant_id: str | None = None,
                                   limit: int = 50) -> list[Delivery]:
        """Most recently dead-lettered first."""

    async def dead_delivery_ids(self, *, tenant_id: str | None = None) -> list[str]: ...

    async def redeliver_dead(self, delivery_ids: list[str], *, now: float) -> list[str]:
        """``dead`` -> ``pending`` now, with a fresh retry budget and the same id; returns
        the ids moved (those no longer dead are skipped)."""

    async def purge_dead(self, delivery_ids: list[str]) -> list[str]:
        """Delete dead deliveries and their attempts; returns the ids deleted."""

    # figures and retention ------------------------------------------------------------
    async def stats(self, *, now: float) -> Stats:
        """One consistent snapshot: counts by status and tenant, finished in the last
        minute and hour, DLQ size, the earliest due time of a queued job."""

    async def count_prunable(self, *, jobs_before: float, deliveries_before: float) -> Prunable: ...

    async def prune_jobs(self, *, before: float, batch: int) -> int:
        """Delete up to ``batch`` finished jobs completed before ``before``."""

    async def prune_deliveries(self, *, before: float, batch: int) -> int:
        """Delete up to ``batch`` delivered webhooks (with their attempts) before ``before``."""
