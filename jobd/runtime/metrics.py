"""Prometheus metrics: counters fed by events, gauges read from the store at scrape time."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from jobd.models import ClaimedJob, JobStatus
from jobd.runtime.execution import Failed, Outcome, TimedOut

CONTENT_TYPE = CONTENT_TYPE_LATEST
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_created = Counter("jobd_jobs_created_total", "Jobs created through the API.",
                                    ["tenant", "type"], registry=r)
        self.jobs_finished = Counter("jobd_jobs_finished_total",
                                     "Jobs that reached a final status.",
                                     ["tenant", "type", "status"], registry=r)
        self.attempts = Counter("jobd_job_attempts_total", "Job attempts run.",
                                ["type"], registry=r)
        self.failures = Counter("jobd_job_failures_total", "Job attempts that failed or timed out.",
                                ["type", "reason"], registry=r)
        self.duration = Histogram("jobd_job_duration_seconds", "Time one attempt ran.",
                                  ["type"], buckets=DURATION_BUCKETS, registry=r)
        self.queue_wait = Histogram("jobd_job_queue_wait_seconds",
                                    "Time from a job being due to its attempt starting.",
                                    ["type"], buckets=DURATION_BUCKETS, registry=r)
        self.deliveries = Counter("jobd_webhook_deliveries_total", "Webhook delivery attempts.",
                                  ["outcome"], registry=r)
        self.delivery_duration = Histogram("jobd_webhook_delivery_duration_seconds",
                                           "Time one webhook delivery attempt took.",
                                           buckets=DURATION_BUCKETS, registry=r)
        self.rate_limited = Counter("jobd_rate_limited_requests_total",
                                    "POST /jobs requests refused with 429.", ["tenant"], registry=r)
        self.jobs_by_status = Gauge("jobd_jobs", "Jobs in the database by status.", ["status"],
                                    registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.dlq_size = Gauge("jobd_dlq_size", "Webhook deliveries in the dead-letter queue.",
                              registry=r)

    # event hooks ---------------------------------------------------------------------
    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: labels() takes a lock and builds a key."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def job_created(self, tenant: str, job_type: str) -> None:
        self._child(self.jobs_created, tenant, job_type).inc()

    def attempt_recorded(self, job: ClaimedJob, outcome: Outcome, status: JobStatus | None,
                         duration_s: float) -> None:
        self._child(self.attempts, job.type).inc()
        if job.due_at:
            self._child(self.queue_wait, job.type).observe(max(0.0, job.claimed_at - job.due_at))
        self._child(self.duration, job.type).observe(duration_s)
        if isinstance(outcome, TimedOut):
            self.failures.labels(job.type, "timeout").inc()
        elif isinstance(outcome, Failed):
            self.failures.labels(job.type, "permanent" if outcome.permanent else "error").inc()
        if status is not None and status in (JobStatus.SUCCEEDED, JobStatus.FATAL,
                                             JobStatus.CANCELLED):
            self._child(self.jobs_finished, job.tenant_id, job.type, status.value).inc()

    def delivery_attempted(self, outcome: str, duration_s: float) -> None:
        self._child(self.deliveries, outcome).inc()
        self.delivery_duration.observe(duration_s)

    # scrape ----------------------------------------------------------------------------
    def render(self, counts: dict[str, Any]) -> bytes:
        for status in JobStatus:
            self.jobs_by_status.labels(status.value).set(counts.get("jobs", {}).get(status.value, 0))
        self.dlq_size.set(counts.get("dlq", 0))
        return generate_latest(self.registry)
