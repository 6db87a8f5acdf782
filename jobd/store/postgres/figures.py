"""Figures for operators and /metrics, and retention.

Counts read partial indexes where they can (see ``job_counts`` in queries.sql), each set
of them in one REPEATABLE READ snapshot, so they agree with each other.
"""

from __future__ import annotations

import asyncpg

from jobd.models import JobStatus
from jobd.store.backend import Prunable, Stats
from jobd.store.postgres.queries import Q, changed

ByTenant = dict[str, dict[str, int]]


async def stats(conn: asyncpg.Connection, *, now: float) -> Stats:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        by_tenant, oldest = await _counts_by_tenant(conn)
        return Stats(by_status=_total(by_tenant), by_tenant=by_tenant,
                     finished_last_minute=await _finished_since(conn, now - 60),
                     finished_last_hour=await _finished_since(conn, now - 3600),
                     dlq_size=await conn.fetchval(Q["deliveries_dead_count"]),
                     oldest_queued_due=oldest)


async def job_counts_and_dlq(conn: asyncpg.Connection) -> tuple[dict[str, int], int]:
    """Jobs by status (statuses with none left out) and the DLQ's size."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        by_tenant, _ = await _counts_by_tenant(conn)
        return _total(by_tenant), await conn.fetchval(Q["deliveries_dead_count"])


async def _counts_by_tenant(conn: asyncpg.Connection) -> tuple[ByTenant, float | None]:
    """``{tenant: {status: n}}`` and the earliest due time of a queued job."""
    by_tenant: ByTenant = {}
    oldest: float | None = None
    for r in await conn.fetch(Q["job_counts"]):
        by_tenant.setdefault(r["tenant_id"], {})[r["status"]] = r["n"]
        if r["status"] == JobStatus.QUEUED and r["oldest_due"] is not None:
            oldest = r["oldest_due"] if oldest is None else min(oldest, r["oldest_due"])
    for r in await conn.fetch(Q["job_totals_by_tenant"]):
        counts = by_tenant.setdefault(r["tenant_id"], {})
        succeeded = r["n"] - sum(counts.values())
        if succeeded > 0:
            counts[JobStatus.SUCCEEDED.value] = succeeded
    return by_tenant, oldest


def _total(by_tenant: ByTenant) -> dict[str, int]:
    by_status: dict[str, int] = {}
    for counts in by_tenant.values():
        for status, n in counts.items():
            by_status[status] = by_status.get(status, 0) + n
    return by_status


async def _finished_since(conn: asyncpg.Connection, since: float) -> dict[str, int]:
    return {r["status"]: r["n"] for r in await conn.fetch(Q["jobs_finished_since"], since)}


# retention -----------------------------------------------------------------------------


async def count_prunable(conn: asyncpg.Connection, *, jobs_before: float,
                         deliveries_before: float) -> Prunable:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return Prunable(jobs=await conn.fetchval(Q["jobs_prunable"], jobs_before),
                        deliveries=await conn.fetchval(Q["deliveries_prunable"], deliveries_before))


async def prune_jobs(conn: asyncpg.Connection, *, before: float, batch: int) -> int:
    return changed(await conn.execute(Q["jobs_prune"], before, batch))


async def prune_deliveries(conn: asyncpg.Connection, *, before: float, batch: int) -> int:
    pruned: int = await conn.fetchval(Q["deliveries_prune"], before, batch)
    return pruned
