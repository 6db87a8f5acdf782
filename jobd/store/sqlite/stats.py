"""Read-only figures for operators: counts by status and tenant, recent throughput, DLQ.

Counting reads indexes only (see ``job_counts_*`` in queries.sql), so it stays
cheap with millions of finished jobs: ``jobd top`` and ``GET /metrics`` run it often.
"""

from __future__ import annotations

import sqlite3

from jobd.models import JobStatus
from jobd.store.backend import Prunable, Stats
from jobd.store.sqlite.connection import transaction
from jobd.store.sqlite.deliveries import count_dead_deliveries
from jobd.store.sqlite.queries import Q

_INDEXED = ("job_counts_waiting", "job_counts_running", "job_counts_failed")


def _counts_by_tenant(conn: sqlite3.Connection) -> tuple[dict[str, dict[str, int]], float | None]:
    """``{tenant: {status: n}}`` (statuses with no jobs left out) and the earliest due
    time of a queued job. Call inside one read transaction."""
    by_tenant: dict[str, dict[str, int]] = {}
    oldest: float | None = None
    for name in _INDEXED:
        for r in conn.execute(Q[name]).fetchall():
            by_tenant.setdefault(r["tenant_id"], {})[r["status"]] = r["n"]
            if r["status"] == JobStatus.QUEUED and r["oldest_due"] is not None:
                oldest = r["oldest_due"] if oldest is None else min(oldest, r["oldest_due"])
    for r in conn.execute(Q["job_totals_by_tenant"]).fetchall():
        counts = by_tenant.setdefault(r["tenant_id"], {})
        succeeded = r["n"] - sum(counts.values())
        if succeeded > 0:
            counts[JobStatus.SUCCEEDED.value] = succeeded
    return by_tenant, oldest


def _total(by_tenant: dict[str, dict[str, int]]) -> dict[str, int]:
    by_status: dict[str, int] = {}
    for counts in by_tenant.values():
        for status, n in counts.items():
            by_status[status] = by_status.get(status, 0) + n
    return by_status


def job_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Jobs by status (statuses with no jobs left out)."""
    return job_counts_and_dlq(conn)[0]


def job_counts_and_dlq(conn: sqlite3.Connection) -> tuple[dict[str, int], int]:
    """Jobs by status (statuses with none left out) and the DLQ's size, for /metrics."""
    with transaction(conn, "BEGIN"):  # one snapshot: the counts agree
        by_tenant, _ = _counts_by_tenant(conn)
        return _total(by_tenant), count_dead_deliveries(conn)


def collect_stats(conn: sqlite3.Connection, *, now: float) -> Stats:
    def finished_since(t: float) -> dict[str, int]:
        return {r["status"]: r["n"] for r in conn.execute(Q["jobs_finished_since"], (t,)).fetchall()}

    with transaction(conn, "BEGIN"):  # one snapshot: the counts agree
        by_tenant, oldest = _counts_by_tenant(conn)
        return Stats(
            by_status=_total(by_tenant), by_tenant=by_tenant,
            finished_last_minute=finished_since(now - 60),
            finished_last_hour=finished_since(now - 3600),
            dlq_size=count_dead_deliveries(conn), oldest_queued_due=oldest,
        )


def count_prunable(conn: sqlite3.Connection, *, jobs_before: float,
                   deliveries_before: float) -> Prunable:
    """What retention would delete now: finished jobs completed before ``jobs_before``,
    delivered webhooks before ``deliveries_before`` (one snapshot)."""
    with transaction(conn, "BEGIN"):
        return Prunable(
            jobs=int(conn.execute(Q["count_prunable_jobs"], {"cutoff": jobs_before}).fetchone()[0]),
            deliveries=int(conn.execute(Q["count_prunable_deliveries"],
                                        {"cutoff": deliveries_before}).fetchone()[0]))
