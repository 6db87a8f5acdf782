"""Pruning in small batches, each its own short write transaction."""

from __future__ import annotations

import sqlite3

import orjson

from jobd.store.sqlite.queries import Q

BATCH = 500


def count_prunable_jobs(conn: sqlite3.Connection, *, cutoff: float) -> int:
    return int(conn.execute(Q["count_prunable_jobs"], {"cutoff": cutoff}).fetchall()[0][0])


def count_prunable_deliveries(conn: sqlite3.Connection, *, cutoff: float) -> int:
    return int(conn.execute(Q["count_prunable_deliveries"], {"cutoff": cutoff}).fetchall()[0][0])


def job_cutoff(now: float, *, retention_s: float, idempotency_ttl_s: float) -> float:
    """Finished jobs completed before this go. A job holds its Idempotency-Key, so it is
    kept at least as long as the key is live, even with a retention shorter than that."""
    return now - max(retention_s, idempotency_ttl_s)


def prune_jobs_batch(conn: sqlite3.Connection, *, cutoff: float, batch: int = BATCH) -> int:
    """Delete up to ``batch`` finished jobs completed before ``cutoff``."""
    return conn.execute(Q["prune_jobs_batch"], {"cutoff": cutoff, "batch": batch}).rowcount


def prune_deliveries_batch(conn: sqlite3.Connection, *, cutoff: float, batch: int = BATCH) -> int:
    """Delete up to ``batch`` delivered webhooks (and their attempts) older than ``cutoff``."""
    ids = [r[0] for r in conn.execute(Q["prune_delivered_batch"],
                                      {"cutoff": cutoff, "batch": batch}).fetchall()]
    if ids:
        conn.execute(Q["delete_delivery_attempts"], (orjson.dumps(ids).decode(),))
    return len(ids)
