"""Metrics kept as plain counts and rendered as Prometheus text at scrape time."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from jobd.models import ClaimedJob, JobStatus
from jobd.runtime.execution import Failed, Succeeded, TimedOut
from jobd.runtime.metrics import Metrics
from jobd.store.backend import BackendMetrics, Gauge, WriterStats


def samples(metrics: Metrics, store: BackendMetrics | None = None) -> dict[tuple, float]:
    text = metrics.render(store).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def claimed(job_type: str = "noop", *, due_at: float = 100.0) -> ClaimedJob:
    return ClaimedJob(id="job_x", tenant_id="acme", type=job_type, payload="{}", attempt=1,
                      max_attempts=3, timeout_seconds=None, webhook_url=None, due_at=due_at,
                      claimed_at=due_at + 0.02)


def test_attempts_failures_and_final_statuses_are_counted() -> None:
    m = Metrics()
    m.attempt_recorded(claimed(), Succeeded("{}"), JobStatus.SUCCEEDED, 0.003)
    m.attempt_recorded(claimed(), Failed("boom"), JobStatus.RETRY, 0.2)
    m.attempt_recorded(claimed(), TimedOut("slow"), JobStatus.FATAL, 2.0)
    m.attempt_recorded(claimed("email"), Failed("no", permanent=True), JobStatus.FATAL, 0.01)
    s = samples(m)
    assert s[("jobd_job_attempts_total", (("type", "noop"),))] == 3
    assert s[("jobd_job_failures_total", (("reason", "error"), ("type", "noop")))] == 1
    assert s[("jobd_job_failures_total", (("reason", "timeout"), ("type", "noop")))] == 1
    assert s[("jobd_job_failures_total", (("reason", "permanent"), ("type", "email")))] == 1
    finished = {k[1]: v for k, v in s.items() if k[0] == "jobd_jobs_finished_total"}
    assert finished == {
        (("status", "succeeded"), ("tenant", "acme"), ("type", "noop")): 1,
        (("status", "fatal"), ("tenant", "acme"), ("type", "noop")): 1,
        (("status", "fatal"), ("tenant", "acme"), ("type", "email")): 1,
    }  # a retry is not final


def test_histogram_buckets_are_cumulative_upper_bounds() -> None:
    m = Metrics()
    for seconds in (0.001, 0.003, 0.2, 400.0):
        m.attempt_recorded(claimed(), Succeeded("{}"), JobStatus.SUCCEEDED, seconds)
    s = samples(m)

    def bucket(le: str) -> float:
        return s[("jobd_job_duration_seconds_bucket", (("le", le), ("type", "noop")))]
    assert bucket("0.001") == 1          # le is inclusive
    assert bucket("0.005") == 2
    assert bucket("0.1") == 2
    assert bucket("0.5") == 3
    assert bucket("300.0") == 3
    assert bucket("+Inf") == 4
    assert s[("jobd_job_duration_seconds_count", (("type", "noop"),))] == 4
    assert abs(s[("jobd_job_duration_seconds_sum", (("type", "noop"),))] - 400.204) < 1e-9
    assert s[("jobd_job_queue_wait_seconds_count", (("type", "noop"),))] == 4


def test_api_webhook_and_store_figures() -> None:
    m = Metrics()
    m.job_created("acme", "noop")
    m.job_created("acme", "noop")
    m.request_rate_limited("acme")
    m.delivery_attempted("succeeded", 0.02)
    m.delivery_attempted("failed", 0.5)
    s = samples(m, BackendMetrics(jobs={"queued": 3, "running": 1}, dlq_size=2))
    assert s[("jobd_jobs_created_total", (("tenant", "acme"), ("type", "noop")))] == 2
    assert s[("jobd_rate_limited_requests_total", (("tenant", "acme"),))] == 1
    assert s[("jobd_webhook_deliveries_total", (("outcome", "failed"),))] == 1
    assert s[("jobd_webhook_delivery_duration_seconds_count", ())] == 2
    assert s[("jobd_jobs", (("status", "queued"),))] == 3
    assert s[("jobd_jobs", (("status", "fatal"),))] == 0
    assert s[("jobd_dlq_size", ())] == 2


def test_database_writer_figures() -> None:
    writer = WriterStats()
    writer.count(40, 0.002, failed=False)
    writer.count(10, 0.004, failed=False)
    writer.count(5, 2.0, failed=True)
    s = samples(Metrics(), BackendMetrics(jobs={}, dlq_size=0, writer=writer,
                                          gauges=file_sizes(main=8192, wal=4096)))
    assert s[("jobd_db_transactions_total", (("outcome", "committed"),))] == 2
    assert s[("jobd_db_transactions_total", (("outcome", "error"),))] == 1
    assert s[("jobd_db_writes_total", ())] == 55
    assert s[("jobd_db_transaction_seconds_bucket", (("le", "0.001"),))] == 0
    assert s[("jobd_db_transaction_seconds_bucket", (("le", "0.0025"),))] == 1
    assert s[("jobd_db_transaction_seconds_bucket", (("le", "0.005"),))] == 2
    assert s[("jobd_db_transaction_seconds_bucket", (("le", "1.0"),))] == 2
    assert s[("jobd_db_transaction_seconds_bucket", (("le", "+Inf"),))] == 3
    assert s[("jobd_db_transaction_seconds_count", ())] == 3
    assert abs(s[("jobd_db_transaction_seconds_sum", ())] - 2.006) < 1e-9
    assert s[("jobd_db_bytes", (("file", "main"),))] == 8192
    assert s[("jobd_db_bytes", (("file", "wal"),))] == 4096


def file_sizes(**sizes: int) -> list[Gauge]:
    return [Gauge("jobd_db_bytes", "Size of the database files.", size, (("file", name),))
            for name, size in sizes.items()]


def test_database_figures_are_left_out_when_the_store_gives_none() -> None:
    assert not [k for k in samples(Metrics()) if k[0].startswith("jobd_db_")]


def test_a_backends_own_gauges_are_one_family_each() -> None:
    pool = [Gauge("jobd_db_pool_connections", "Connections the pool holds open.", 3),
            Gauge("jobd_db_pool_connections_max", "Connections the pool may open.", 10)]
    text = Metrics().render(BackendMetrics(jobs={}, dlq_size=0, gauges=pool)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["jobd_db_pool_connections"].type == "gauge"
    assert [s.value for s in families["jobd_db_pool_connections"].samples] == [3]
    assert [s.value for s in families["jobd_db_pool_connections_max"].samples] == [10]


def test_the_readme_lists_every_metric_and_only_those() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("- `GET /metrics` (Prometheus text)"):]
    section = section[:section.index("\n- ")]  # that bullet only
    documented = set(re.findall(r"`(jobd_[a-z_]+)", section))

    m = Metrics()  # every family present
    m.job_created("acme", "noop")
    m.attempt_recorded(claimed(), Failed("boom"), JobStatus.FATAL, 0.1)
    m.delivery_attempted("succeeded", 0.02)
    m.request_rate_limited("acme")
    # what the SQLite backend gives (the families the README lists)
    text = m.render(BackendMetrics(jobs={}, dlq_size=0, writer=WriterStats(),
                                   gauges=file_sizes(main=1)))
    emitted = {family.name + ("_total" if family.type == "counter" else "")
               for family in text_string_to_metric_families(text.decode())}
    assert documented == emitted
