"""``jobd jobs``: look at jobs, cancel them, run failed ones again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from jobd.api.views import job_view
from jobd.cli.common import (
    ConfigOpt,
    JsonOpt,
    existing_database,
    fields_table,
    list_table,
    out,
    print_json,
    short_time,
    with_backend,
)
from jobd.clock import SystemClock, to_rfc3339
from jobd.errors import NotFound
from jobd.models import Delivery, DeliveryAttempt, Job, JobStatus
from jobd.store.backend import Backend
from jobd.store.cluster import Signal

app = typer.Typer(help="List, inspect, cancel and retry jobs.\n\n"
                  "Examples: jobd jobs list --status fatal | jobd jobs show job_abc123 --json",
                  no_args_is_help=True)
JobArg = Annotated[str, typer.Argument(help="Job id (job_...).")]
_clock = SystemClock()


def job_doc(job: Job) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(orjson.dumps(job_view(job)))
    doc["tenantId"] = job.tenant_id
    doc["payload"] = orjson.loads(job.payload)
    return doc


def attempt_history(job: Job) -> list[dict[str, Any]]:
    """Every attempt: the failed ones from ``job.errors``, then the one that succeeded
    or is running now. (``attempts`` stays the count, as in ``GET /jobs/{id}``.)"""
    history = [{"attempt": e["attempt"], "at": to_rfc3339(e["at"]), "outcome": "failed",
                "error": e["error"]} for e in orjson.loads(job.errors or "[]")]
    if job.status is JobStatus.SUCCEEDED:
        history.append({"attempt": job.attempts, "at": to_rfc3339(job.completed_at),
                        "outcome": "succeeded", "error": None})
    elif job.status is JobStatus.RUNNING:
        history.append({"attempt": job.attempts, "at": to_rfc3339(job.started_at),
                        "outcome": "running", "error": None})
    return history


def delivery_doc(delivery: Delivery, attempts: list[DeliveryAttempt]) -> dict[str, Any]:
    return {
        "deliveryId": delivery.id, "status": delivery.status.value, "url": delivery.url,
        "attempts": delivery.attempts, "nextAttemptAt": to_rfc3339(delivery.next_attempt_at),
        "lastError": delivery.last_error, "lastStatusCode": delivery.last_status_code,
        "deliveredAt": to_rfc3339(delivery.delivered_at),
        "history": [{"at": to_rfc3339(a.attempted_at), "statusCode": a.status_code,
                     "error": a.error, "durationMs": round(a.duration_ms, 1)} for a in attempts],
    }


@app.command("list")
def list_(tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant.")] = None,
          status: Annotated[JobStatus | None, typer.Option("--status", help="Only this status.")] = None,
          job_type: Annotated[str | None, typer.Option("--type", help="Only this job type.")] = None,
          limit: Annotated[int, typer.Option("--limit", min=1, max=10_000,
                                             help="Most jobs to print.")] = 50,
          json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """List jobs, newest first.

    Example: jobd jobs list --status fatal --limit 20
    """
    jobs = with_backend(existing_database(config), lambda backend: backend.list_jobs(
        tenant_id=tenant, status=status.value if status else None, job_type=job_type,
        limit=limit))
    if json:
        print_json([job_doc(j) for j in jobs])
        return
    table = list_table(title=f"{len(jobs)} job(s), newest first")
    table.add_column("id", no_wrap=True, min_width=max((len(j.id) for j in jobs), default=2))
    table.add_column("tenant", overflow="fold")
    table.add_column("type", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("tries", no_wrap=True)
    table.add_column("due/updated", no_wrap=True)
    for j in jobs:
        when = j.next_run_at if j.status in (JobStatus.QUEUED, JobStatus.RETRY) else j.updated_at
        table.add_row(j.id, j.tenant_id, j.type, j.status.value, f"{j.attempts}/{j.max_attempts}",
                      short_time(when))
    out.print(table)


@app.command("show")
def show(job_id: JobArg, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Show a job: payload, result or last error, every attempt, its webhook deliveries.

    Two counts: the job's attempts are its runs (of maxAttempts); a webhook delivery's
    attempts are the times jobd tried to send it, DLQ retries included (its history).

    Example: jobd jobs show job_abc123 --json
    """
    job, deliveries = with_backend(existing_database(config),
                                   lambda backend: _job_and_deliveries(backend, job_id))
    doc = job_doc(job)
    doc["history"] = attempt_history(job)
    doc["deliveries"] = deliveries
    if json:
        print_json(doc)
        return
    rows = [(key, orjson.dumps(value).decode() if isinstance(value, dict | list) else value)
            for key, value in doc.items() if key not in ("history", "deliveries")]
    out.print(fields_table(rows, title=f"job {job.id}"))
    runs = Table("#", "at", "outcome", "error", title="attempts (runs of the job)")
    for a in doc["history"]:
        runs.add_row(str(a["attempt"]), a["at"] or "-", a["outcome"], a["error"] or "-")
    out.print(runs)
    if deliveries:
        sends = list_table(title="webhook deliveries (tries: attempts to send it)")
        sends.add_column("delivery", overflow="fold", min_width=len(deliveries[0]["deliveryId"]))
        sends.add_column("status", no_wrap=True)
        sends.add_column("tries", no_wrap=True)
        sends.add_column("url / last error", overflow="fold")
        for d in deliveries:
            sends.add_row(d["deliveryId"], d["status"], str(d["attempts"]),
                          f"{d['url']}\n{d['lastError'] or '-'}")
        out.print(sends)


async def _job_and_deliveries(backend: Backend,
                              job_id: str) -> tuple[Job, list[dict[str, Any]]]:
    job = await backend.find_job(job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist")
    return job, [delivery_doc(d, await backend.delivery_attempts(d.id))
                 for d in await backend.deliveries_of_job(job_id)]


Transition = Callable[[Backend], Awaitable[Job]]


def _transition(config: Any, transition: Transition, json: bool, verb: str,
                tell: Signal) -> None:
    job = with_backend(existing_database(config), transition, tell=(tell,))
    if json:
        print_json(job_doc(job))
    elif job.status is JobStatus.RUNNING and job.cancel_requested:
        out.print(f"job {job.id} is running: cancellation requested, the daemon will stop it",
                  soft_wrap=True)
    else:
        out.print(f"job {job.id} {verb}: now {job.status.value}", soft_wrap=True)


@app.command("cancel")
def cancel(job_id: JobArg, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Cancel a job: at once if waiting, cooperatively if running.

    Example: jobd jobs cancel job_abc
    """
    _transition(config, lambda backend: backend.cancel_job(job_id, tenant_id=None,
                                                           now=_clock.now()),
                json, "cancelled", Signal.WEBHOOKS)  # (its webhook, if it had one)


@app.command("retry")
def retry(job_id: JobArg, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Run a fatal or cancelled job again.

    Example: jobd jobs retry job_abc123
    """
    _transition(config, lambda backend: backend.retry_job(job_id, tenant_id=None,
                                                          now=_clock.now()),
                json, "queued again", Signal.JOBS)


