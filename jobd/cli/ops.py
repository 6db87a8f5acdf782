"""Operator commands: ``jobd stats``, ``jobd top`` (live view) and ``jobd prune``."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobd.cli.common import ConfigOpt, JsonOpt, config_from, open_db, out, print_json
from jobd.clock import SystemClock, to_rfc3339
from jobd.models import JobStatus
from jobd.store import retention
from jobd.store.database import Database
from jobd.store.stats import Stats, collect_stats

_clock = SystemClock()


def stats_doc(stats: Stats, now: float) -> dict[str, Any]:
    oldest = stats.oldest_queued_due
    return {
        "byStatus": {s.value: stats.by_status.get(s.value, 0) for s in JobStatus},
        "byTenant": stats.by_tenant,
        "finishedLastMinute": stats.finished_last_minute,
        "finishedLastHour": stats.finished_last_hour,
        "dlqSize": stats.dlq_size,
        "oldestQueuedAgeSeconds": None if oldest is None else round(max(0.0, now - oldest), 3),
        "at": to_rfc3339(now),
    }


def render_stats(doc: dict[str, Any], throughput: float | None = None) -> Group:
    statuses = Table("status", "jobs", title="jobs by status")
    for status, n in doc["byStatus"].items():
        statuses.add_row(status, f"{n:,}")
    tenants = Table("tenant", *[s.value for s in JobStatus], title="jobs by tenant")
    for tenant, counts in sorted(doc["byTenant"].items()):
        tenants.add_row(tenant, *[f"{counts.get(s.value, 0):,}" for s in JobStatus])
    recent = Table("window", "succeeded", "fatal", "cancelled", title="finished")
    for label, key in (("last minute", "finishedLastMinute"), ("last hour", "finishedLastHour")):
        counts = doc[key]
        recent.add_row(label, *[f"{counts.get(s, 0):,}" for s in ("succeeded", "fatal", "cancelled")])
    age = doc["oldestQueuedAgeSeconds"]
    lines = [f"DLQ size: {doc['dlqSize']:,}",
             f"oldest queued job waiting: {'-' if age is None else f'{age:.1f}s'}"]
    if throughput is not None:
        lines.append(f"throughput (last minute): {throughput:,.1f} jobs/s")
    return Group(statuses, tenants, recent, Panel("\n".join(lines), title=doc["at"]))


def stats(json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Counts by status and tenant, recent throughput, DLQ size, oldest queued job.

    Example: jobd stats --json
    """
    with open_db(config) as db:
        now = _clock.now()
        doc = stats_doc(db.read(collect_stats, now=now), now)
    if json:
        print_json(doc)
    else:
        out.print(render_stats(doc))


def top(interval: Annotated[float, typer.Option("--interval", min=0.1,
                                                help="Seconds between refreshes.")] = 1.0,
        config: ConfigOpt = None) -> None:
    """A live view of the figures of `jobd stats`, refreshing; Ctrl-C to leave.

    Example: jobd top --interval 2
    """
    with open_db(config) as db, Live(console=out, auto_refresh=False) as live:
        try:
            while True:
                now = _clock.now()
                doc = stats_doc(db.read(collect_stats, now=now), now)
                done = sum(doc["finishedLastMinute"].values())
                live.update(render_stats(doc, throughput=done / 60), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


def prune(dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count.")] = False,
          older_than_days: Annotated[float | None, typer.Option(
              "--older-than-days", min=0, help="Default: jobs.retention_days.")] = None,
          json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Delete finished jobs and delivered webhooks past retention, in small batches.

    A job whose Idempotency-Key is still live (idempotency.ttl_hours) is kept.

    Example: jobd prune --dry-run
    """
    cfg = config_from(config)
    days = cfg.jobs.retention_days if older_than_days is None else older_than_days
    now = _clock.now()
    cutoff = now - days * 86_400
    jobs_before = retention.job_cutoff(now, retention_s=days * 86_400,
                                       idempotency_ttl_s=cfg.idempotency.ttl_hours * 3600)
    with Database(cfg.database, must_exist=True) as db:
        total = db.read(retention.count_prunable_jobs, cutoff=jobs_before)
        result: dict[str, object]
        if dry_run:
            result = {"dryRun": True, "jobs": total,
                      "deliveries": db.read(retention.count_prunable_deliveries, cutoff=cutoff),
                      "cutoff": to_rfc3339(cutoff)}
        else:
            started = time.perf_counter()
            jobs = _prune_with_progress(db, jobs_before, total, show=not json)
            deliveries = _drain(db, retention.prune_deliveries_batch, cutoff=cutoff)
            elapsed = time.perf_counter() - started
            result = {"dryRun": False, "jobs": jobs, "deliveries": deliveries,
                      "cutoff": to_rfc3339(cutoff), "seconds": round(elapsed, 3)}
    if json:
        print_json(result)
    else:
        out.print(", ".join(f"{k}: {v}" for k, v in result.items()))


def _prune_with_progress(db: Database, cutoff: float, total: int, *, show: bool) -> int:
    progress = Progress(TextColumn("pruning jobs"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=out, disable=not show)
    done = 0
    with progress:
        task = progress.add_task("prune", total=total)
        while True:
            n = db.write(retention.prune_jobs_batch, cutoff=cutoff)
            if n == 0:
                return done
            done += n
            progress.update(task, completed=done)


def _drain(db: Database, fn: Any, **kwargs: Any) -> int:
    done = 0
    while n := db.write(fn, **kwargs):
        done += n
    return done
