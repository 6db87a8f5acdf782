"""``jobd dlq``: webhook deliveries that failed every attempt (the dead-letter queue).

``retry`` puts dead deliveries back to ``pending`` with a fresh retry budget and
the same id (so receivers see the same ``webhook-id``); the daemon sends them
within its poll interval. ``purge`` deletes them and their attempt history.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
import typer
from rich.json import JSON
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobd.cli.common import (
    ConfigOpt,
    JsonOpt,
    YesOpt,
    confirm,
    existing_database,
    fail,
    fields_table,
    list_table,
    out,
    print_json,
    short_time,
    with_backend,
)
from jobd.clock import SystemClock, to_rfc3339
from jobd.errors import NotFound
from jobd.models import Delivery, DeliveryAttempt, DeliveryStatus
from jobd.store.backend import Backend
from jobd.store.cluster import Signal

app = typer.Typer(help="Inspect, retry and purge webhook deliveries that failed every attempt.\n\n"
                  "Examples: jobd dlq list --tenant acme | jobd dlq retry --all",
                  no_args_is_help=True)

DeliveryArg = Annotated[str | None, typer.Argument(metavar="[ID]", show_default=False,
                                                   help="Delivery id (msg_...).")]
RequiredDeliveryArg = Annotated[str, typer.Argument(metavar="ID", help="Delivery id (msg_...).")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead delivery (of --tenant, if given).")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Only this tenant's deliveries.")]
BATCH = 500  # deliveries per transaction for --all
_clock = SystemClock()


def dead_doc(d: Delivery) -> dict[str, Any]:
    return {
        "deliveryId": d.id, "jobId": d.job_id, "tenantId": d.tenant_id, "url": d.url,
        "status": d.status.value, "attempts": d.attempts, "lastError": d.last_error,
        "lastStatusCode": d.last_status_code, "createdAt": to_rfc3339(d.created_at),
        "deadAt": to_rfc3339(d.dead_at),
    }


def attempt_doc(a: DeliveryAttempt) -> dict[str, Any]:
    return {"at": to_rfc3339(a.attempted_at), "statusCode": a.status_code, "error": a.error,
            "durationMs": round(a.duration_ms, 1)}


def _body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace")


@app.command("list")
def list_(tenant: TenantOpt = None,
          limit: Annotated[int, typer.Option("--limit", min=1, max=10_000,
                                             help="Most deliveries to print.")] = 50,
          json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """List dead deliveries, most recently dead-lettered first.

    Example: jobd dlq list --tenant acme --json
    """
    dead = with_backend(existing_database(config),
                        lambda backend: backend.list_dead_deliveries(tenant_id=tenant, limit=limit))
    if json:
        print_json([dead_doc(d) for d in dead])
        return
    table = list_table(title=f"{len(dead)} dead delivery(ies), most recent first "
                             "(dlq show ID: the job, body and every attempt)")
    table.add_column("delivery / tenant", overflow="fold",
                     min_width=max((len(d.id) for d in dead), default=2))
    table.add_column("tries", no_wrap=True)
    table.add_column("dead since", no_wrap=True)
    table.add_column("url / last error", overflow="fold")
    for d in dead:
        table.add_row(f"{d.id}\n{d.tenant_id}", str(d.attempts), short_time(d.dead_at),
                      f"{d.url}\n{d.last_error or '-'}")
    out.print(table)


@app.command("show")
def show(delivery_id: RequiredDeliveryArg, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Show a delivery, the JSON body it sends and every attempt made.

    Its attempts count every time jobd tried to send it, DLQ retries included; the
    body's "attempts" is the job's count of runs.

    Example: jobd dlq show msg_abc123 --json
    """
    delivery, attempts = with_backend(existing_database(config),
                                      lambda backend: _with_attempts(backend, delivery_id))
    doc = dead_doc(delivery)
    doc.update(nextAttemptAt=to_rfc3339(delivery.next_attempt_at),
               deliveredAt=to_rfc3339(delivery.delivered_at), body=_body(delivery.body),
               history=[attempt_doc(a) for a in attempts])
    if json:
        print_json(doc)
        return
    rows = [(key, value) for key, value in doc.items() if key not in ("body", "history")]
    out.print(fields_table(rows, title=f"delivery {delivery.id}"))
    out.print("body (as sent; its \"attempts\" counts the job's runs, not these sends):")
    out.print(JSON(orjson.dumps(doc["body"]).decode()))
    history = Table("#", "at", "status", "error", "ms", title="attempts to send it")
    for number, a in enumerate(attempts, 1):
        history.add_row(str(number), to_rfc3339(a.attempted_at), str(a.status_code or "-"),
                        a.error or "-", f"{a.duration_ms:.1f}")
    out.print(history)


async def _with_attempts(backend: Backend,
                         delivery_id: str) -> tuple[Delivery, list[DeliveryAttempt]]:
    delivery = await backend.find_delivery(delivery_id)
    if delivery is None:
        raise NotFound(f"delivery {delivery_id!r} does not exist")
    return delivery, await backend.delivery_attempts(delivery_id)


def _check_selection(delivery_id: str | None, all_: bool) -> None:
    """Exit 2 unless exactly one of ID and --all was given."""
    if delivery_id is not None and all_:
        fail("give either a delivery ID or --all, not both", 2)
    if delivery_id is None and not all_:
        fail("give a delivery ID, or --all for every dead delivery (--tenant narrows it)", 2)


async def _selected(backend: Backend, delivery_id: str | None, tenant: str | None) -> list[str]:
    """The dead deliveries a retry/purge applies to: the one given (NotFound unless it is
    in the DLQ, of ``tenant`` if given), else every one (of ``tenant``)."""
    if delivery_id is None:
        return await backend.dead_delivery_ids(tenant_id=tenant)
    delivery = await backend.find_delivery(delivery_id)
    if delivery is None:
        raise NotFound(f"delivery {delivery_id!r} does not exist")
    if tenant is not None and delivery.tenant_id != tenant:
        raise NotFound(f"delivery {delivery_id!r} does not belong to tenant {tenant!r}")
    if delivery.status is not DeliveryStatus.DEAD:
        raise NotFound(f"delivery {delivery_id!r} is not in the DLQ (it is {delivery.status.value})")
    return [delivery.id]


async def _in_batches(apply: Callable[[list[str]], Awaitable[list[str]]], ids: list[str], *,
                      label: str, progress: bool) -> list[str]:
    """``apply`` to ``ids`` in transactions of :data:`BATCH`, with a progress bar if asked."""
    batches = [ids[i:i + BATCH] for i in range(0, len(ids), BATCH)]
    done: list[str] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=out, disable=not progress) as bar:
        task = bar.add_task(label, total=len(ids))
        for batch in batches:
            done += await apply(batch)
            bar.advance(task, len(batch))
    return done


@app.command("retry")
def retry(delivery_id: DeliveryArg = None, all_: AllOpt = False, tenant: TenantOpt = None,
          json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Send dead deliveries again with a fresh retry budget (same id, same body).

    Examples: jobd dlq retry msg_abc123 | jobd dlq retry --all --tenant acme
    """
    _check_selection(delivery_id, all_)
    now = _clock.now()

    async def run(backend: Backend) -> list[str]:
        ids = await _selected(backend, delivery_id, tenant)
        return await _in_batches(lambda batch: backend.redeliver_dead(batch, now=now), ids,
                                 label="retrying", progress=all_ and not json)

    retried = with_backend(existing_database(config), run, tell=(Signal.WEBHOOKS,))
    if json:
        print_json({"retried": len(retried), "deliveryIds": retried})
    elif delivery_id is not None:
        out.print(f"delivery {delivery_id} queued again; the daemon sends it within its poll "
                  "interval")
    else:
        out.print(f"{len(retried)} dead delivery(ies) queued again")


@app.command("purge")
def purge(delivery_id: DeliveryArg = None, all_: AllOpt = False, tenant: TenantOpt = None,
          yes: YesOpt = False, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Delete dead deliveries and their attempt history.

    --all asks for confirmation on a terminal; elsewhere it needs --yes.

    Examples: jobd dlq purge msg_abc123 | jobd dlq purge --all --tenant acme --yes
    """
    _check_selection(delivery_id, all_)

    async def run(backend: Backend) -> list[str]:
        ids = await _selected(backend, delivery_id, tenant)
        if all_:
            whose = f" of tenant {tenant}" if tenant else ""
            confirm(f"Delete {len(ids):,} dead delivery(ies){whose} and their attempt "
                    "history?", yes=yes, ask=bool(ids))
        return await _in_batches(backend.purge_dead, ids, label="purging",
                                 progress=all_ and not json)

    purged = with_backend(existing_database(config), run)
    if json:
        print_json({"purged": len(purged), "deliveryIds": purged})
    else:
        out.print(f"{len(purged)} dead delivery(ies) purged")
