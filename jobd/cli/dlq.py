"""``jobd dlq``: webhook deliveries that failed every attempt (the dead-letter queue).

``retry`` puts dead deliveries back to ``pending`` with a fresh retry budget and
the same id (so receivers see the same ``webhook-id``); the daemon sends them
within its poll interval. ``purge`` deletes them and their attempt history.
"""

from __future__ import annotations

from collections.abc import Callable
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
    fail,
    fields_table,
    list_table,
    open_db,
    out,
    print_json,
    short_time,
)
from jobd.clock import SystemClock, to_rfc3339
from jobd.models import Delivery, DeliveryAttempt
from jobd.store.sqlite import deliveries as store_deliveries
from jobd.store.sqlite.database import Database

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
    with open_db(config) as db:
        dead = db.read(store_deliveries.list_dead_deliveries, tenant_id=tenant, limit=limit)
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
    with open_db(config) as db:
        delivery = db.read(store_deliveries.get_delivery, delivery_id)
        attempts = db.read(store_deliveries.attempts_of_delivery, delivery_id)
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


def _selected(db: Database, delivery_id: str | None, all_: bool, tenant: str | None) -> list[str]:
    """The dead deliveries a retry/purge applies to; exit 2 unless exactly one of ID/--all."""
    if delivery_id is not None and all_:
        fail("give either a delivery ID or --all, not both", 2)
    if delivery_id is None and not all_:
        fail("give a delivery ID, or --all for every dead delivery (--tenant narrows it)", 2)
    if delivery_id is not None:
        return [db.read(store_deliveries.get_dead_delivery, delivery_id, tenant).id]
    return db.read(store_deliveries.dead_delivery_ids, tenant_id=tenant)


def _in_batches(db: Database, fn: Callable[..., list[str]], ids: list[str], *, label: str,
                progress: bool, **kwargs: Any) -> list[str]:
    """Apply ``fn`` to ``ids`` in transactions of :data:`BATCH`, with a progress bar if asked."""
    batches = [ids[i:i + BATCH] for i in range(0, len(ids), BATCH)]
    done: list[str] = []
    if not progress:
        for batch in batches:
            done += db.write(fn, batch, **kwargs)
        return done
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=out) as bar:
        task = bar.add_task(label, total=len(ids))
        for batch in batches:
            done += db.write(fn, batch, **kwargs)
            bar.advance(task, len(batch))
    return done


@app.command("retry")
def retry(delivery_id: DeliveryArg = None, all_: AllOpt = False, tenant: TenantOpt = None,
          json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Send dead deliveries again with a fresh retry budget (same id, same body).

    Examples: jobd dlq retry msg_abc123 | jobd dlq retry --all --tenant acme
    """
    with open_db(config) as db:
        ids = _selected(db, delivery_id, all_, tenant)
        retried = _in_batches(db, store_deliveries.redeliver_dead, ids, label="retrying",
                              progress=all_ and not json, now=_clock.now())
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
    with open_db(config) as db:
        ids = _selected(db, delivery_id, all_, tenant)
        if all_:
            whose = f" of tenant {tenant}" if tenant else ""
            confirm(f"Delete {len(ids):,} dead delivery(ies){whose} and their attempt "
                    "history?", yes=yes, ask=bool(ids))
        purged = _in_batches(db, store_deliveries.purge_dead, ids, label="purging",
                             progress=all_ and not json)
    if json:
        print_json({"purged": len(purged), "deliveryIds": purged})
    else:
        out.print(f"{len(purged)} dead delivery(ies) purged")
