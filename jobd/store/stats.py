"""Read-only figures for operators: counts by status and tenant, recent throughput, DLQ."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from jobd.store.deliveries import count_dead_deliveries
from jobd.store.queries import Q


@dataclass(frozen=True)
class Stats:
    by_status: dict[str, int]
    by_tenant: dict[str, dict[str, int]]
    finished_last_minute: dict[str, int]
    finished_last_hour: dict[str, int]
    dlq_size: int
    oldest_queued_due: float | None
    extra: dict[str, object] = field(default_factory=dict)


def job_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {r["status"]: r["n"] for r in conn.execute(Q["job_counts_by_status"]).fetchall()}


def collect_stats(conn: sqlite3.Connection, *, now: float) -> Stats:
    by_tenant: dict[str, dict[str, int]] = {}
    for r in conn.execute(Q["job_counts_by_tenant_status"]).fetchall():
        by_tenant.setdefault(r["tenant_id"], {})[r["status"]] = r["n"]

    def finished_since(t: float) -> dict[str, int]:
        return {r["status"]: r["n"] for r in conn.execute(Q["jobs_finished_since"], (t,)).fetchall()}

    return Stats(
        by_status=job_counts(conn), by_tenant=by_tenant,
        finished_last_minute=finished_since(now - 60), finished_last_hour=finished_since(now - 3600),
        dlq_size=count_dead_deliveries(conn),
        oldest_queued_due=conn.execute(Q["oldest_waiting_due"]).fetchall()[0][0],
    )
