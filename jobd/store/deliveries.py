"""Webhook delivery reads and transitions."""

from __future__ import annotations

import sqlite3
from typing import Any

from jobd.models import Delivery, DeliveryAttempt, DeliveryStatus
from jobd.store.queries import Q


def row_to_delivery(row: Any) -> Delivery:
    return Delivery(
        id=row["id"], job_id=row["job_id"], tenant_id=row["tenant_id"], url=row["url"],
        body=row["body"], status=DeliveryStatus(row["status"]), attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"], last_error=row["last_error"],
        last_status_code=row["last_status_code"], created_at=row["created_at"],
        updated_at=row["updated_at"], delivered_at=row["delivered_at"], dead_at=row["dead_at"],
    )


def deliveries_of_job(conn: sqlite3.Connection, job_id: str) -> list[Delivery]:
    return [row_to_delivery(r) for r in conn.execute(Q["deliveries_of_job"], (job_id,)).fetchall()]


def attempts_of_delivery(conn: sqlite3.Connection, delivery_id: str) -> list[DeliveryAttempt]:
    return [DeliveryAttempt(delivery_id=r["delivery_id"], attempted_at=r["attempted_at"],
                            status_code=r["status_code"], error=r["error"],
                            duration_ms=r["duration_ms"])
            for r in conn.execute(Q["delivery_attempts_of"], (delivery_id,)).fetchall()]
