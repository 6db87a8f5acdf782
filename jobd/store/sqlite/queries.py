"""Named queries, read once from ``queries.sql`` (``-- name: x`` headers)."""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from jobd.store.named_sql import load_named

Q = load_named("jobd.store.sqlite", "queries.sql")


MAX_ROWS_PER_STATEMENT = 500  # x 14 parameters stays far below SQLite's 32,766


@functools.lru_cache(maxsize=64)
def _multi_row(name: str, rows: int) -> str:
    sql = Q[name]
    start = sql.index("VALUES (") + len("VALUES ")
    depth, end = 0, start
    for end, char in enumerate(sql[start:], start):  # noqa: B007 - end is used below
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            break
    return sql[:start] + ", ".join([sql[start:end + 1]] * rows) + sql[end + 1:]


def run_rows(conn: sqlite3.Connection, name: str, rows: list[tuple[Any, ...]],
             *tail: Any) -> int:
    """Run the query ``name``, written with one ``VALUES (?, ...)`` row, for all ``rows``
    (its ``VALUES`` repeated, up to 500 rows a statement; ``tail`` are the parameters
    after it); return how many rows changed.

    Not ``executemany``: that steps the statement once per row, and every step lets go
    of the GIL and has to win it back from the event loop's thread, so under load the
    writer would wait for the GIL once per row; one statement per 500 rows waits once."""
    changed = 0
    for at in range(0, len(rows), MAX_ROWS_PER_STATEMENT):
        chunk = rows[at:at + MAX_ROWS_PER_STATEMENT]
        params = [value for row in chunk for value in row]
        params.extend(tail)
        changed += conn.execute(_multi_row(name, len(chunk)), params).rowcount
    return changed
