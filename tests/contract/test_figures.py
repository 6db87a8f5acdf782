"""Figures (stats, metrics), retention (count and prune) and health."""

from __future__ import annotations

import pytest

from jobd.models import DeliveryStatus, JobStatus
from jobd.store.backend import Backend, Prunable
from tests.conftest import T0
from tests.contract import stored
from tests.contract.helpers import HOOK, claim_one, submit, tenant
from tests.contract.stored import Peek


@pytest.fixture(autouse=True)
async def tenants(backend: Backend) -> None:
    await tenant(backend, "acme")
    await tenant(backend, "globex")


async def some_of_each(backend: Backend) -> None:
    """acme: 2 succeeded (T0+10, T0+3000), 1 fatal (T0+3550), 1 running, 2 queued (due
    T0+5 and T0+9000); globex: 1 retry, 1 cancelled (T0+3590), 1 queued (due T0+7);
    one webhook dead, one delivered."""
    async def finish(tenant_id: str, status: JobStatus, at: float, hook: bool = False) -> None:
        await submit(backend, tenant_id=tenant_id, webhook_url=HOOK if hook else None, now=at,
                     run_at=at)
        job = await claim_one(backend, now=at)
        assert await backend.finish_job(job, owner="w1", status=status, now=at, error=(
            None if status is JobStatus.SUCCEEDED else "boom"))

    await finish("acme", JobStatus.SUCCEEDED, T0 + 10, hook=True)
    await finish("acme", JobStatus.SUCCEEDED, T0 + 3000)
    await finish("acme", JobStatus.FATAL, T0 + 3550, hook=True)
    await submit(backend, tenant_id="globex", run_at=T0 + 3555, now=T0 + 3555)
    retried = await claim_one(backend, now=T0 + 3555)
    assert await backend.retry_job_later(retried, owner="w1", now=T0 + 3555,
                                         next_run_at=T0 + 9999, error="flaky")
    await submit(backend, tenant_id="acme", run_at=T0 + 3560, now=T0 + 3560)
    await claim_one(backend, now=T0 + 3560)  # running
    cancelled = await submit(backend, tenant_id="globex", now=T0 + 3590, run_at=T0 + 9999)
    await backend.cancel_job(cancelled.job_id, tenant_id=None, now=T0 + 3590)
    await submit(backend, tenant_id="acme", run_at=T0 + 9000, now=T0 + 3591)
    await submit(backend, tenant_id="acme", run_at=T0 + 5, now=T0 + 3592)
    await submit(backend, tenant_id="globex", run_at=T0 + 7, now=T0 + 3593)
    ok, bad = await backend.claim_deliveries(now=T0 + 3594, limit=5, lease_s=30)
    assert await backend.record_delivery_attempt(
        ok, now=T0 + 3594, attempted_at=T0 + 3594, status_code=200, error=None, duration_ms=1,
        retry_at=None) is DeliveryStatus.SUCCEEDED
    assert await backend.record_delivery_attempt(
        bad, now=T0 + 3594, attempted_at=T0 + 3594, status_code=500, error="HTTP 500",
        duration_ms=1, retry_at=None) is DeliveryStatus.DEAD


async def test_stats_are_one_consistent_picture(backend: Backend) -> None:
    await some_of_each(backend)
    stats = await backend.stats(now=T0 + 3620)
    assert stats.by_tenant == {
        "acme": {"succeeded": 2, "fatal": 1, "running": 1, "queued": 2},
        "globex": {"retry": 1, "cancelled": 1, "queued": 1},
    }
    assert stats.by_status == {"succeeded": 2, "fatal": 1, "running": 1, "queued": 3,
                               "retry": 1, "cancelled": 1}
    assert stats.finished_last_minute == {"cancelled": 1}  # since T0 + 3560
    # since T0 + 20: not the job that succeeded at T0 + 10
    assert stats.finished_last_hour == {"succeeded": 1, "fatal": 1, "cancelled": 1}
    assert stats.dlq_size == 1
    assert stats.oldest_queued_due == T0 + 5  # queued only: the retry is due later anyway


async def test_stats_of_an_empty_database(backend: Backend) -> None:
    stats = await backend.stats(now=T0)
    assert (stats.by_status, stats.by_tenant, stats.dlq_size, stats.oldest_queued_due) == (
        {}, {}, 0, None)
    assert stats.finished_last_minute == stats.finished_last_hour == {}


async def test_metrics_count_jobs_by_status_and_the_dlq(backend: Backend) -> None:
    await some_of_each(backend)
    metrics = await backend.metrics()
    assert metrics.jobs == (await backend.stats(now=T0)).by_status
    assert metrics.dlq_size == 1
    assert metrics.gauges and all(isinstance(g.value, int | float) and g.name.startswith("jobd_db_")
                                  for g in metrics.gauges)


async def test_health_is_none_while_the_database_works(backend: Backend) -> None:
    await submit(backend)
    assert backend.health() is None


# retention ---------------------------------------------------------------------------


async def test_prune_deletes_old_finished_jobs_and_delivered_webhooks_only(
        backend: Backend, peek: Peek) -> None:
    await some_of_each(backend)
    cutoff = T0 + 3560
    assert await backend.count_prunable(jobs_before=cutoff, deliveries_before=T0 + 4000) == (
        Prunable(jobs=3, deliveries=1))
    jobs_before = await stored.count(peek, "jobs")
    assert await backend.prune_jobs(before=cutoff, batch=2) == 2
    assert await backend.prune_jobs(before=cutoff, batch=2) == 1
    assert await backend.prune_jobs(before=cutoff, batch=2) == 0
    assert await stored.count(peek, "jobs") == jobs_before - 3
    left = {j.status for j in await backend.list_jobs(limit=50)}
    assert left == {JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.RETRY, JobStatus.CANCELLED}
    assert await backend.prune_deliveries(before=T0 + 3594, batch=10) == 0  # not yet
    assert await backend.prune_deliveries(before=T0 + 4000, batch=10) == 1
    assert await stored.count(peek, "deliveries") == 1  # the dead one stays in the DLQ
    assert await stored.count(peek, "delivery_attempts") == 1  # the pruned one's went with it
    assert (await backend.count_prunable(jobs_before=cutoff,
                                         deliveries_before=T0 + 4000)).deliveries == 0
