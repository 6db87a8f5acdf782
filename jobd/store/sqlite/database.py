"""Synchronous access for the CLI: one connection, every write in ``BEGIN IMMEDIATE``."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from jobd.config import DatabaseConfig
from jobd.errors import StoreUnavailable
from jobd.store.sqlite.connection import connect, migrate

T = TypeVar("T")


class Database:
    def __init__(self, config: DatabaseConfig) -> None:
        self._conn = connect(config.path, synchronous=config.synchronous,
                             busy_timeout_s=config.busy_timeout)
        self.path = config.path
        try:
            migrate(self._conn)
        except sqlite3.Error as exc:
            self._conn.close()
            raise _unavailable(exc, config.path) from None

    def close(self) -> None:
        """Close, leaving the ``-wal`` and ``-shm`` files in place: SQLite deletes them when
        the last connection that may write closes, and a daemon started later on a full
        disk could not create the ``-shm`` again. So a read-only connection closes last."""
        last = None
        if self.path != ":memory:":
            with contextlib.suppress(StoreUnavailable):
                last = connect(self.path, read_only=True)
        self._conn.close()
        if last is not None:
            last.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc, self.path) from None
        try:
            result = fn(self._conn, *args, **kwargs)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return result

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(self._conn, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc, self.path) from None


def _unavailable(exc: sqlite3.Error, path: str) -> StoreUnavailable:
    if "locked" in str(exc) or "busy" in str(exc):
        return StoreUnavailable(
            f"database {path} stayed locked past the busy timeout; another process holds a "
            "long write. Try again, or raise database.busy_timeout")
    return StoreUnavailable(f"database {path}: {exc}")
