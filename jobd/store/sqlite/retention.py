"""Pruning in small batches, each its own short write transaction (the counts of what
is due are in :mod:`jobd.store.sqlite.stats`)."""

from __future__ import annotations

import sqlite3

import orjson

from jobd.store.sqlite.queries import Q


def prune_jobs_batch(conn: sqlite3.Connection, *, cutoff: float, batch: int) -> int:
    """Delete up to ``batch`` finished jobs completed before ``cutoff``."""
    return conn.execute(Q["prune_jobs_batch"], {"cutoff": cutoff, "batch": batch}).rowcount


def prune_deliveries_batch(conn: sqlite3.Connection, *, cutoff: float, batch: int) -> int:
    """Delete up to ``batch`` delivered webhooks (and their attempts) older than ``cutoff``."""
    ids = [r[0] for r in conn.execute(Q["prune_delivered_batch"],
                                      {"cutoff": cutoff, "batch": batch}).fetchall()]
    if ids:
        conn.execute(Q["delete_delivery_attempts"], (orjson.dumps(ids).decode(),))
    return len(ids)
