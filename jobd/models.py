"""Records and state machines shared by the store, the runtime, the API and the CLI.

Job states::

    queued ──claim──▶ running ──ok──────────────▶ succeeded
      ▲                 │  ├──fail, attempts left─▶ retry ──due──▶ running
      │                 │  └──fail, no attempts───▶ fatal
      └──shutdown/crash─┘
    queued/retry/running ──cancel──▶ cancelled
    fatal/cancelled ──jobs retry──▶ queued

Delivery states: pending ──claim──▶ sending ──2xx──▶ succeeded
                                     └──fail──▶ pending (next delay) | dead
                 dead ──dlq retry──▶ pending

Records made once per job or request (``ClaimedJob``, ``NewJob``, ...) are
``slots`` dataclasses but not ``frozen``: a frozen dataclass's ``__init__`` sets
each field through ``object.__setattr__``, several times slower than a plain
``__init__``. Treat them as read-only all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRY = "retry"
    SUCCEEDED = "succeeded"
    FATAL = "fatal"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FATAL, JobStatus.CANCELLED})

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RETRY: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.RETRY, JobStatus.FATAL,
                                  JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FATAL: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
}


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    api_key_prefix: str
    webhook_secret: str
    rate: float
    burst: int
    max_concurrency: int | None
    disabled: bool
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class NewTenant:
    """What ``tenants create`` and ``rotate-key`` hand back: shown once."""

    tenant: Tenant
    api_key: str


@dataclass(slots=True)
class Job:
    id: str
    tenant_id: str
    type: str
    payload: str  # JSON text
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    timeout_seconds: float | None
    run_at: float
    next_run_at: float | None
    cancel_requested: bool
    result: str | None  # JSON text
    last_error: str | None
    webhook_url: str | None
    created_at: float
    started_at: float | None
    completed_at: float | None
    updated_at: float
    seq: int = 0
    errors: str | None = None  # JSON list of failed attempts: {attempt, at, error}


@dataclass(slots=True)
class ClaimedJob:
    """A job a worker now holds: enough to run it and to fence its outcome."""

    id: str
    tenant_id: str
    type: str
    payload: str
    attempt: int
    max_attempts: int
    timeout_seconds: float | None
    due_at: float = 0.0      # when it became runnable (for queue-wait figures)
    claimed_at: float = 0.0
    webhook_url: str | None = None


@dataclass(slots=True)
class NewJob:
    tenant_id: str
    type: str
    payload: str
    priority: int
    max_attempts: int
    timeout_seconds: float | None
    run_at: float
    webhook_url: str | None
    idempotency_key: str


@dataclass(slots=True)
class IdempotentResult:
    """What a ``POST /jobs`` created or replayed: the job's id and creation time (the API
    renders the 201 from them); ``replayed`` when it was not created now."""

    job_id: str
    created_at: float
    replayed: bool
    started: bool = False  # created already running, under a StartLease


@dataclass(frozen=True, slots=True)
class StartLease:
    """A worker slot held for a job being created: the job is inserted already running,
    held by ``owner`` until ``expires_at``, and its worker starts once it is committed."""

    owner: str
    expires_at: float


@dataclass(slots=True)
class Delivery:
    id: str
    job_id: str
    tenant_id: str
    url: str
    body: bytes
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    last_status_code: int | None
    created_at: float
    updated_at: float
    delivered_at: float | None
    dead_at: float | None


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    delivery_id: str
    attempted_at: float
    status_code: int | None
    error: str | None
    duration_ms: float

