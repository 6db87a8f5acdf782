"""The webhook outbox: a delivery row written in the transaction that finishes a job."""

from __future__ import annotations

import sqlite3
from typing import Any

from jobd.credentials import new_delivery_id
from jobd.store import rows
from jobd.store.sqlite.queries import Q


def enqueue_delivery(conn: sqlite3.Connection, finished: Any, now: float) -> str | None:
    """Queue the webhook for a just-finished job row (from a ``RETURNING`` clause)."""
    url = finished["webhook_url"]
    if not url:
        return None
    body = rows.finished_body(finished)
    row = _delivery_row(job_id=finished["id"], tenant_id=finished["tenant_id"], url=url,
                       body=body, now=now)
    conn.execute(Q["delivery_insert"], row)
    return str(row[0])


def _delivery_row(*, job_id: str, tenant_id: str, url: str, body: bytes,
                 now: float) -> tuple[object, ...]:
    """Parameters of ``delivery_insert``: a new delivery, due now."""
    return (new_delivery_id(), job_id, tenant_id, url, body, now, now, now)
