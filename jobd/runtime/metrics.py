"""Prometheus metrics: counters fed by events, gauges read from the store at scrape time.

Events only add to plain dicts on the event loop's thread: no lock, and no prometheus
object per event (``prometheus_client``'s ``inc`` and ``observe`` cost more than the
rest of a noop job's bookkeeping). The families are built from those dicts when
``/metrics`` is scraped, with the store's figures of that moment
(:class:`~jobd.store.backend.BackendMetrics`: jobs by status, the DLQ, and what only
one backend has, such as SQLite's writer and file sizes or PostgreSQL's pool).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from jobd.models import ClaimedJob, JobStatus
from jobd.runtime.execution import Failed, Outcome, TimedOut
from jobd.store.backend import TRANSACTION_BUCKETS_S, BackendMetrics

CONTENT_TYPE = CONTENT_TYPE_LATEST
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)
_FINAL = (JobStatus.SUCCEEDED, JobStatus.FATAL, JobStatus.CANCELLED)

Labels = tuple[str, ...]


class _Histogram:
    """Bucket counts per label values; ``le`` buckets are summed up at scrape time."""

    def __init__(self) -> None:
        self.counts: defaultdict[Labels, list[int]] = defaultdict(
            lambda: [0] * (len(DURATION_BUCKETS) + 1))
        self.sums: defaultdict[Labels, float] = defaultdict(float)

    def observe(self, labels: Labels, value: float) -> None:
        self.counts[labels][bisect.bisect_left(DURATION_BUCKETS, value)] += 1
        self.sums[labels] += value

    def family(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        return _histogram(name, doc, label_names, DURATION_BUCKETS, [
            (labels, counts, self.sums[labels]) for labels, counts in list(self.counts.items())])


def _histogram(name: str, doc: str, label_names: list[str], bounds: Sequence[float],
               series: Iterable[tuple[Labels, list[int], float]]) -> HistogramMetricFamily:
    """A histogram family from per-bucket counts (one more than ``bounds``: the last is
    above them all), summed up into Prometheus' cumulative ``le`` buckets."""
    family = HistogramMetricFamily(name, doc, labels=label_names)
    for labels, counts, total in series:
        running, buckets = 0, []
        for bound, n in zip((*map(str, map(float, bounds)), "+Inf"), counts, strict=True):
            running += n
            buckets.append((bound, running))
        family.add_metric(list(labels), buckets, total)
    return family


def _counter(name: str, doc: str, label_names: list[str],
             values: dict[Labels, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=label_names)
    for labels, value in list(values.items()):
        family.add_metric(list(labels), value)
    return family


class Metrics(Collector):
    def __init__(self) -> None:
        self.jobs_created: defaultdict[Labels, int] = defaultdict(int)
        self.jobs_finished: defaultdict[Labels, int] = defaultdict(int)
        self.attempts: defaultdict[Labels, int] = defaultdict(int)
        self.failures: defaultdict[Labels, int] = defaultdict(int)
        self.deliveries: defaultdict[Labels, int] = defaultdict(int)
        self.rate_limited: defaultdict[Labels, int] = defaultdict(int)
        self.duration = _Histogram()
        self.queue_wait = _Histogram()
        self.delivery_duration = _Histogram()
        self._store = BackendMetrics(jobs={}, dlq_size=0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # event hooks ---------------------------------------------------------------------
    def job_created(self, tenant: str, job_type: str) -> None:
        self.jobs_created[(tenant, job_type)] += 1

    def request_rate_limited(self, tenant: str) -> None:
        self.rate_limited[(tenant,)] += 1

    def attempt_recorded(self, job: ClaimedJob, outcome: Outcome, status: JobStatus | None,
                         duration_s: float) -> None:
        by_type = (job.type,)
        self.attempts[by_type] += 1
        if job.due_at:
            self.queue_wait.observe(by_type, max(0.0, job.claimed_at - job.due_at))
        self.duration.observe(by_type, duration_s)
        if isinstance(outcome, TimedOut):
            self.failures[(job.type, "timeout")] += 1
        elif isinstance(outcome, Failed):
            self.failures[(job.type, "permanent" if outcome.permanent else "error")] += 1
        if status in _FINAL:
            assert status is not None
            self.jobs_finished[(job.tenant_id, job.type, status.value)] += 1

    def delivery_attempted(self, outcome: str, duration_s: float) -> None:
        self.deliveries[(outcome,)] += 1
        self.delivery_duration.observe((), duration_s)

    # scrape ----------------------------------------------------------------------------
    def render(self, store: BackendMetrics | None = None) -> bytes:
        """The text exposition, with the store's figures (none: zero jobs, no DLQ)."""
        self._store = store or BackendMetrics(jobs={}, dlq_size=0)
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        yield _counter("jobd_jobs_created", "Jobs created through the API.",
                       ["tenant", "type"], self.jobs_created)
        yield _counter("jobd_jobs_finished", "Jobs that reached a final status.",
                       ["tenant", "type", "status"], self.jobs_finished)
        yield _counter("jobd_job_attempts", "Job attempts run.", ["type"], self.attempts)
        yield _counter("jobd_job_failures", "Job attempts that failed or timed out.",
                       ["type", "reason"], self.failures)
        yield self.duration.family("jobd_job_duration_seconds", "Time one attempt ran.", ["type"])
        yield self.queue_wait.family("jobd_job_queue_wait_seconds",
                                     "Time from a job being due to its attempt starting.",
                                     ["type"])
        yield _counter("jobd_webhook_deliveries", "Webhook delivery attempts.", ["outcome"],
                       self.deliveries)
        yield self.delivery_duration.family("jobd_webhook_delivery_duration_seconds",
                                            "Time one webhook delivery attempt took.", [])
        yield _counter("jobd_rate_limited_requests", "POST /jobs requests refused with 429.",
                       ["tenant"], self.rate_limited)
        by_status = GaugeMetricFamily("jobd_jobs", "Jobs in the database by status.",
                                      labels=["status"])
        for status in JobStatus:
            by_status.add_metric([status.value], self._store.jobs.get(status.value, 0))
        yield by_status
        yield GaugeMetricFamily("jobd_dlq_size", "Webhook deliveries in the dead-letter queue.",
                                value=self._store.dlq_size)
        yield from self._writer()
        yield from self._gauges()

    def _writer(self) -> Iterator[Metric]:
        writer = self._store.writer
        if writer is None:
            return
        transactions = CounterMetricFamily(
            "jobd_db_transactions", "Group transactions of the database writer; error: "
            "the database failed one and every write in it.", labels=["outcome"])
        transactions.add_metric(["committed"], writer.transactions - writer.failed)
        transactions.add_metric(["error"], writer.failed)
        yield transactions
        yield CounterMetricFamily("jobd_db_writes", "Writes those transactions carried "
                                  "(new jobs, claims, outcomes ...).", value=writer.units)
        yield _histogram("jobd_db_transaction_seconds", "Time of one group transaction, "
                         "BEGIN to COMMIT (with synchronous = full, the fsync is counted "
                         "apart: jobd_db_wal_syncs).", [], TRANSACTION_BUCKETS_S,
                         [((), writer.by_bucket, writer.seconds)])
        yield CounterMetricFamily("jobd_db_wal_syncs", "fsyncs of the write-ahead log, "
                                  "each making every transaction committed before it "
                                  "durable (synchronous = full).", value=writer.syncs)
        yield CounterMetricFamily("jobd_db_wal_sync_seconds", "Time those fsyncs took.",
                                  value=writer.sync_seconds)

    def _gauges(self) -> Iterator[Metric]:
        """The backend's own gauges, one family per name (in the order first given)."""
        families: dict[str, GaugeMetricFamily] = {}
        for gauge in self._store.gauges:
            family = families.get(gauge.name)
            if family is None:
                family = families[gauge.name] = GaugeMetricFamily(
                    gauge.name, gauge.help, labels=[name for name, _ in gauge.labels])
            family.add_metric([value for _, value in gauge.labels], gauge.value)
        yield from families.values()
