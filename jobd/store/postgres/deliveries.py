"""Webhook delivery transitions and reads: the dispatcher's claim and outcomes, and the DLQ.

An outcome is fenced by the claim's lease expiry (``lease_expires_at``, a float that
round-trips exactly): only the claim that is still current moves the delivery.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import asyncpg

from jobd.models import Delivery, DeliveryAttempt, DeliveryStatus
from jobd.store import rows
from jobd.store.backend import ClaimedDelivery
from jobd.store.outcomes import Outcome, all_else_each
from jobd.store.postgres.failures import ITEM_ERRORS, TRANSIENT_ERRORS
from jobd.store.postgres.queries import Q, changed, storable


async def claim_deliveries(conn: asyncpg.Connection, *, now: float, limit: int,
                           lease_s: float, owner: str | None = None) -> list[ClaimedDelivery]:
    """Up to ``limit`` due ``pending`` deliveries become ``sending`` for ``owner``,
    earliest first."""
    if limit <= 0:
        return []
    expires = now + lease_s
    found = sorted(await conn.fetch(Q["deliveries_claim"], now, limit, expires, owner),
                   key=lambda r: (r["due"], r["seq"]))
    return [ClaimedDelivery(id=r["id"], job_id=r["job_id"], tenant_id=r["tenant_id"],
                            url=r["url"], body=r["body"], secret=r["secret"],
                            attempts=r["attempts"], lease_expires_at=expires)
            for r in found]


async def next_delivery_due(conn: asyncpg.Connection) -> float | None:
    due: float | None = await conn.fetchval(Q["delivery_next_due_time"])
    return due


async def release_deliveries(conn: asyncpg.Connection, *, now: float, all_sending: bool) -> int:
    return changed(await conn.execute(Q["deliveries_release"], now, all_sending))


@dataclass(slots=True)
class Attempt:
    """One ``record_delivery_attempt`` call waiting for its batch."""

    delivery: ClaimedDelivery
    now: float
    attempted_at: float
    status_code: int | None
    error: str | None
    duration_ms: float
    retry_at: float | None

    @property
    def status(self) -> DeliveryStatus:
        """Delivered without an error; else pending again at ``retry_at``; else dead."""
        if self.error is None:
            return DeliveryStatus.SUCCEEDED
        return DeliveryStatus.PENDING if self.retry_at is not None else DeliveryStatus.DEAD


async def record_attempts(conn: asyncpg.Connection, items: list[Attempt]) -> list[Outcome]:
    """Record many attempts, one statement (``deliveries_record``); each outcome is the
    delivery's new status, or None when its claim was no longer current."""
    return await all_else_each(items, functools.partial(_record_all, conn),
                               functools.partial(_record_one, conn), item_errors=ITEM_ERRORS,
                               retry_errors=TRANSIENT_ERRORS)


async def _record_all(conn: asyncpg.Connection, items: list[Attempt]) -> list[Outcome | None]:
    statuses = [a.status for a in items]
    moved = {r[0] for r in await conn.fetch(Q["deliveries_record"],
                                            _attempt_rows(items, statuses))}
    outcomes: list[Outcome | None] = []
    for a, status in zip(items, statuses, strict=True):
        outcomes.append((True, status if a.delivery.id in moved else None))
        moved.discard(a.delivery.id)
    return outcomes


async def _record_one(conn: asyncpg.Connection, item: Attempt) -> Any:
    [outcome] = await _record_all(conn, [item])
    assert outcome is not None
    return outcome[1]


def _attempt_rows(items: list[Attempt],
                  statuses: list[DeliveryStatus]) -> list[tuple[Any, ...]]:
    """The rows of ``deliveries_record`` (a ``deliveries_record_row`` each), in order."""
    return [(a.delivery.id, a.attempted_at, a.status_code, storable(a.error), a.duration_ms,
             a.now, a.delivery.lease_expires_at, s.value,
             a.retry_at if s is DeliveryStatus.PENDING else None)
            for a, s in zip(items, statuses, strict=True)]


async def deliveries_of_job(conn: asyncpg.Connection, job_id: str) -> list[Delivery]:
    return [rows.delivery(r) for r in await conn.fetch(Q["deliveries_of_job"], job_id)]


async def delivery_attempts(conn: asyncpg.Connection, delivery_id: str) -> list[DeliveryAttempt]:
    return [rows.attempt(r) for r in await conn.fetch(Q["delivery_attempts_of"], delivery_id)]


# the dead-letter queue -----------------------------------------------------------------


async def find_delivery(conn: asyncpg.Connection, delivery_id: str) -> Delivery | None:
    row = await conn.fetchrow(Q["delivery_get"], delivery_id)
    return rows.delivery(row) if row else None


async def list_dead_deliveries(conn: asyncpg.Connection, *, tenant_id: str | None = None,
                               limit: int = 50) -> list[Delivery]:
    return [rows.delivery(r) for r in await conn.fetch(Q["deliveries_dead_list"], tenant_id, limit)]


async def dead_delivery_ids(conn: asyncpg.Connection, *, tenant_id: str | None = None) -> list[str]:
    return [r[0] for r in await conn.fetch(Q["deliveries_dead_ids"], tenant_id)]


async def redeliver_dead(conn: asyncpg.Connection, delivery_ids: list[str], *,
                         now: float) -> list[str]:
    """``dead`` -> ``pending`` now, attempts back to 0, same id; the ids moved, in the
    order given."""
    if not delivery_ids:
        return []
    moved = {r[0] for r in await conn.fetch(Q["deliveries_redeliver_dead"], delivery_ids, now)}
    return [i for i in dict.fromkeys(delivery_ids) if i in moved]


async def purge_dead(conn: asyncpg.Connection, delivery_ids: list[str]) -> list[str]:
    """Delete dead deliveries and their attempts; the ids deleted, in the order given."""
    if not delivery_ids:
        return []
    purged = {r[0] for r in await conn.fetch(Q["deliveries_purge_dead"], delivery_ids)}
    return [i for i in dict.fromkeys(delivery_ids) if i in purged]
