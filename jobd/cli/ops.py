"""Operator commands: ``jobd stats``, ``jobd top`` (live view), ``jobd prune`` and
``jobd migrate``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from jobd.cli.common import (
    ConfigOpt,
    JsonOpt,
    YesOpt,
    config_from,
    confirm,
    existing_database,
    is_missing,
    list_table,
    load,
    missing_database,
    out,
    print_json,
    with_backend,
)
from jobd.clock import SystemClock, to_rfc3339
from jobd.errors import StoreUnavailable
from jobd.models import JobStatus
from jobd.runtime.pruner import BATCH, job_cutoff
from jobd.store import open_backend
from jobd.store.backend import Backend, Stats

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


FINISHED = ("succeeded", "fatal", "cancelled")
WAITING = ("queued", "retry", "running")


def render_stats(doc: dict[str, Any], max_tenants: int | None = None) -> Group:
    """The figures of ``jobd stats`` in 80 columns. ``jobd top`` passes ``max_tenants`` so
    that a frame fits the terminal's height: one line per tenant, the busiest first (most
    jobs waiting or running), and a last line that counts the others."""
    age = doc["oldestQueuedAgeSeconds"]
    facts = (f"DLQ size: {doc['dlqSize']:,}   oldest queued job waiting: "
             f"{'-' if age is None else f'{age:.1f}s'}")

    recent = list_table(title="jobs finished")
    recent.add_column("", no_wrap=True)
    for status in FINISHED:
        recent.add_column(status, justify="right", no_wrap=True)
    recent.add_column("jobs/s", justify="right", no_wrap=True)
    for label, key, seconds in (("last minute", "finishedLastMinute", 60),
                                ("last hour", "finishedLastHour", 3600)):
        counts = [doc[key].get(s, 0) for s in FINISHED]
        recent.add_row(label, *[f"{n:,}" for n in counts], f"{sum(counts) / seconds:,.1f}")

    by_tenant = sorted(doc["byTenant"].items(),
                       key=lambda item: (-sum(item[1].get(s, 0) for s in WAITING), item[0]))
    shown = by_tenant if max_tenants is None else by_tenant[:max(0, max_tenants)]
    jobs = list_table(title="jobs by status, then by tenant")
    jobs.add_column("tenant", overflow="fold")  # the column that gives way to the counts
    for status in JobStatus:
        jobs.add_column(status.value, justify="right", no_wrap=True)
    jobs.add_row("all", *[f"{n:,}" for n in doc["byStatus"].values()], style="bold")
    for tenant, counts in shown:
        # a live frame has one line per tenant: a long id is cut short there
        name = tenant if max_tenants is None else Text(tenant, no_wrap=True, overflow="ellipsis")
        jobs.add_row(name, *[f"{counts.get(s.value, 0):,}" for s in JobStatus])
    parts: list[Any] = [Text(f"at {doc['at']}"), Text(facts), recent, jobs]
    if len(shown) < len(by_tenant):
        parts.append(Text(f"... and {len(by_tenant) - len(shown)} more tenant(s): jobd stats "
                          "lists them all"))
    return Group(*parts)


TOP_FIXED_LINES = 11  # the lines of a frame besides the tenants' rows, and one to spare


def stats(json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Counts by status and tenant, recent throughput, DLQ size, oldest queued job.

    Example: jobd stats --json
    """
    now = _clock.now()
    doc = stats_doc(with_backend(existing_database(config), lambda b: b.stats(now=now)), now)
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
    cfg = existing_database(config)
    with Live(console=out, auto_refresh=False) as live, contextlib.suppress(KeyboardInterrupt):
        with_backend(cfg, functools.partial(_refresh, live, interval))


async def _refresh(live: Live, interval: float, backend: Backend) -> None:
    """Draw a frame every ``interval`` seconds, until Ctrl-C cancels it."""
    while True:
        now = _clock.now()
        doc = stats_doc(await backend.stats(now=now), now)
        rows = out.size.height - TOP_FIXED_LINES
        live.update(render_stats(doc, max_tenants=rows), refresh=True)
        await asyncio.sleep(interval)


def prune(dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count.")] = False,
          older_than_days: Annotated[float | None, typer.Option(
              "--older-than-days", min=0, help="Default: jobs.retention_days.")] = None,
          yes: YesOpt = False, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Delete finished jobs and delivered webhooks past retention, in small batches.

    A job whose Idempotency-Key is still live (idempotency.ttl_hours) is kept.
    Without --dry-run it asks for confirmation on a terminal; elsewhere it needs --yes.

    Example: jobd prune --dry-run
    """
    cfg = config_from(config)
    days = cfg.jobs.retention_days if older_than_days is None else older_than_days
    now = _clock.now()
    cutoff = now - days * 86_400
    jobs_before = job_cutoff(now, retention_s=days * 86_400,
                             idempotency_ttl_s=cfg.idempotency.ttl_hours * 3600)

    async def run(backend: Backend) -> dict[str, object]:
        due = await backend.count_prunable(jobs_before=jobs_before, deliveries_before=cutoff)
        if dry_run:
            return {"dryRun": True, "jobs": due.jobs, "deliveries": due.deliveries,
                    "cutoff": to_rfc3339(cutoff)}
        confirm(f"Delete {due.jobs:,} finished job(s) and {due.deliveries:,} delivered "
                f"webhook(s) older than {to_rfc3339(cutoff)}?", yes=yes,
                ask=bool(due.jobs or due.deliveries))
        started = time.perf_counter()
        jobs = await _prune_with_progress(backend, jobs_before, due.jobs, show=not json)
        deliveries = await _drain(backend.prune_deliveries, cutoff)
        return {"dryRun": False, "jobs": jobs, "deliveries": deliveries,
                "cutoff": to_rfc3339(cutoff),
                "seconds": round(time.perf_counter() - started, 3)}

    result = with_backend(existing_database(config), run)
    if json:
        print_json(result)
    else:
        out.print(", ".join(f"{k}: {v}" for k, v in result.items()))


async def _prune_with_progress(backend: Backend, before: float, total: int, *,
                               show: bool) -> int:
    progress = Progress(TextColumn("pruning jobs"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=out, disable=not show)
    done = 0
    with progress:
        task = progress.add_task("prune", total=total)
        while n := await backend.prune_jobs(before=before, batch=BATCH):
            done += n
            progress.update(task, completed=done)
    return done


async def _drain(prune: Callable[..., Awaitable[int]], before: float) -> int:
    done = 0
    while n := await prune(before=before, batch=BATCH):
        done += n
    return done


def migrate(create_database: Annotated[bool, typer.Option(
                "--create", help="Start a new SQLite database if the file does not exist.")] = False,
            json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Apply the schema migrations the database lacks and print its schema version.

    jobd serve does the same at its start; run it ahead to upgrade the schema before the
    daemons (a daemon refuses a schema newer than it knows). Safe to run again.

    Example: jobd migrate --config jobd.toml
    """
    source, cfg = load(config)
    if is_missing(cfg) and not create_database:
        raise StoreUnavailable(missing_database(source, cfg, can_create=True))
    version = asyncio.run(open_backend(cfg.database).migrate())
    if json:
        print_json({"database": cfg.database.location, "schemaVersion": version})
    else:
        out.print(f"database {cfg.database.location}: schema version {version}", soft_wrap=True,
                  highlight=False)
