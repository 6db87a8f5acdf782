"""Webhook delivery reads and transitions: the dispatcher's claim and outcome, and the DLQ.

Each function runs inside a transaction the caller opened (the writer's).
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from typing import Any

import orjson

from jobd.errors import NotFound
from jobd.models import Delivery, DeliveryAttempt, DeliveryStatus
from jobd.store import rows
from jobd.store.backend import ClaimedDelivery
from jobd.store.outcomes import Outcome, all_else_each, run_now
from jobd.store.sqlite.connection import OneByOne
from jobd.store.sqlite.failures import ITEM_ERRORS
from jobd.store.sqlite.queries import Q, run_rows


def deliveries_of_job(conn: sqlite3.Connection, job_id: str) -> list[Delivery]:
    return [rows.delivery(r) for r in conn.execute(Q["deliveries_of_job"], (job_id,)).fetchall()]


def attempts_of_delivery(conn: sqlite3.Connection, delivery_id: str) -> list[DeliveryAttempt]:
    return [rows.attempt(r) for r in conn.execute(Q["delivery_attempts_of"], (delivery_id,)).fetchall()]


# dispatcher --------------------------------------------------------------------------

def claim_due_deliveries(conn: sqlite3.Connection, *, now: float, limit: int,
                         lease_s: float) -> list[ClaimedDelivery]:
    """Move up to ``limit`` due ``pending`` deliveries to ``sending``, earliest due first."""
    if limit <= 0:
        return []
    found = orjson.loads(conn.execute(Q["deliveries_due_packed"],
                                      {"now": now, "limit": limit}).fetchone()[0])
    if not found:
        return []
    expires = now + lease_s
    conn.execute(Q["deliveries_mark_sending"], {
        "seqs": orjson.dumps([r[0] for r in found]), "lease_expires_at": expires, "now": now})
    return [ClaimedDelivery(id=r[1], job_id=r[2], tenant_id=r[3], url=r[4],
                            body=r[5].encode("utf-8"), secret=r[7], attempts=r[6],
                            lease_expires_at=expires)
            for r in found]


def next_delivery_due_time(conn: sqlite3.Connection) -> float | None:
    found = conn.execute(Q["delivery_next_due_time"]).fetchall()
    return found[0][0] if found else None


def release_sending_deliveries(conn: sqlite3.Connection, *, now: float, all_sending: bool) -> int:
    """Put ``sending`` deliveries back to ``pending`` (due now) without counting an attempt.

    At startup ``all_sending`` takes every one (their process died mid-request);
    while running, only those whose lease ran out. The receiver may have got the
    request already: it de-duplicates on ``webhook-id``.
    """
    query = Q["deliveries_release_all_sending"] if all_sending else Q["deliveries_release_expired"]
    return conn.execute(query, {"now": now}).rowcount


def record_delivery_attempt(conn: sqlite3.Connection, delivery: ClaimedDelivery, *, now: float,
                            attempted_at: float, status_code: int | None, error: str | None,
                            duration_ms: float, retry_at: float | None) -> DeliveryStatus | None:
    """Record one attempt and the delivery's new state in one transaction.

    ``error is None`` means it was delivered (``succeeded``); otherwise it is
    ``pending`` again at ``retry_at``, or ``dead`` (the DLQ) when ``retry_at`` is
    None. Returns the new status, or None when the claim was no longer current
    (the attempt is still recorded).
    """
    conn.execute(Q["delivery_attempt_insert"],
                 (delivery.id, attempted_at, status_code, error, duration_ms))
    params: dict[str, Any] = {"id": delivery.id, "now": now, "status_code": status_code,
                              "error": error, "lease_expires_at": delivery.lease_expires_at}
    if error is None:
        query, status = Q["delivery_succeeded"], DeliveryStatus.SUCCEEDED
    elif retry_at is not None:
        query, status = Q["delivery_retry_later"], DeliveryStatus.PENDING
        params["next_attempt_at"] = retry_at
    else:
        query, status = Q["delivery_dead_letter"], DeliveryStatus.DEAD
    return status if conn.execute(query, params).rowcount == 1 else None


@dataclass(slots=True)
class AttemptRecord:
    """The arguments of :func:`record_delivery_attempt`, for a group of them."""

    delivery: ClaimedDelivery
    now: float
    attempted_at: float
    status_code: int | None
    error: str | None
    duration_ms: float
    retry_at: float | None


def record_delivery_attempts(conn: sqlite3.Connection,
                             items: list[AttemptRecord]) -> list[Outcome]:
    """:func:`record_delivery_attempt` for many deliveries, one outcome each. When all
    of them were delivered and still hold their claims (the common case), that is two
    statements; otherwise each is recorded on its own."""
    with OneByOne(conn, functools.partial(_record_one, conn)) as each:
        return run_now(all_else_each(items, functools.partial(_record_all, conn), each,
                                     item_errors=ITEM_ERRORS))


def _record_all(conn: sqlite3.Connection, items: list[AttemptRecord]) -> list[Outcome | None]:
    """Two statements for attempts that all delivered; nothing (all None) otherwise, or
    when any of them no longer holds its claim."""
    if any(i.error is not None for i in items):
        return [None] * len(items)
    conn.execute("SAVEPOINT record_attempts")
    run_rows(conn, "delivery_attempt_insert", [
        (i.delivery.id, i.attempted_at, i.status_code, None, i.duration_ms) for i in items])
    updated = run_rows(conn, "deliveries_succeeded_many", [
        (i.delivery.id, i.status_code, i.now, i.delivery.lease_expires_at) for i in items])
    if updated == len(items):
        conn.execute("RELEASE record_attempts")
        return [(True, DeliveryStatus.SUCCEEDED)] * len(items)
    conn.execute("ROLLBACK TO record_attempts")
    conn.execute("RELEASE record_attempts")
    return [None] * len(items)


def _record_one(conn: sqlite3.Connection, i: AttemptRecord) -> DeliveryStatus | None:
    return record_delivery_attempt(conn, i.delivery, now=i.now, attempted_at=i.attempted_at,
                                   status_code=i.status_code, error=i.error,
                                   duration_ms=i.duration_ms, retry_at=i.retry_at)


# dead-letter queue ---------------------------------------------------------------------

def find_delivery(conn: sqlite3.Connection, delivery_id: str) -> Delivery | None:
    found = conn.execute(Q["delivery_get"], (delivery_id,)).fetchall()
    return rows.delivery(found[0]) if found else None


def get_delivery(conn: sqlite3.Connection, delivery_id: str) -> Delivery:
    delivery = find_delivery(conn, delivery_id)
    if delivery is None:
        raise NotFound(f"delivery {delivery_id!r} does not exist")
    return delivery


def list_dead_deliveries(conn: sqlite3.Connection, *, tenant_id: str | None = None,
                         limit: int = 50) -> list[Delivery]:
    """Dead deliveries, most recently dead-lettered first."""
    found = conn.execute(Q["deliveries_dead_list"], {"tenant_id": tenant_id, "limit": limit})
    return [rows.delivery(r) for r in found.fetchall()]


def dead_delivery_ids(conn: sqlite3.Connection, *, tenant_id: str | None = None) -> list[str]:
    return [r["id"] for r in conn.execute(Q["deliveries_dead_ids"], {"tenant_id": tenant_id})]


def count_dead_deliveries(conn: sqlite3.Connection) -> int:
    return int(conn.execute(Q["deliveries_dead_count"]).fetchall()[0][0])


def redeliver_dead(conn: sqlite3.Connection, delivery_ids: list[str], *, now: float) -> list[str]:
    """DLQ retry: ``dead`` → ``pending`` now, with a fresh retry budget and the same id.

    Ids that are not (or no longer) dead are skipped; returns those moved, in the order
    given.
    """
    if not delivery_ids:
        return []
    found = conn.execute(Q["delivery_redeliver_dead"],
                         {"ids": orjson.dumps(delivery_ids).decode(), "now": now}).fetchall()
    return _in_order(delivery_ids, {r["id"] for r in found})


def purge_dead(conn: sqlite3.Connection, delivery_ids: list[str]) -> list[str]:
    """Delete dead deliveries and their attempts; returns the ids deleted, in the order
    given."""
    if not delivery_ids:
        return []
    ids = {"ids": orjson.dumps(delivery_ids).decode()}
    conn.execute(Q["delivery_attempts_purge_dead"], ids)
    return _in_order(delivery_ids,
                     {r["id"] for r in conn.execute(Q["delivery_purge_dead"], ids).fetchall()})


def _in_order(given: list[str], done: set[str]) -> list[str]:
    """The ids of ``done`` in the order ``given``, each once."""
    return [i for i in dict.fromkeys(given) if i in done]
