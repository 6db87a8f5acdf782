"""The PostgreSQL backend's named statements, read once from ``queries.sql``."""

from __future__ import annotations

from jobd.store.named_sql import load_named

Q = load_named("jobd.store.postgres", "queries.sql")


def changed(status: str) -> int:
    """The row count of a command status (``"UPDATE 3"`` -> 3)."""
    return int(status.rsplit(" ", 1)[-1])
