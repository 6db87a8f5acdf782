"""What a failed database call means: a refusal of one item, or a database jobd cannot use.

Every driver or server error that reaches the backend's boundary becomes
:class:`StoreUnavailable` (as every ``sqlite3.Error`` does on SQLite), with the database
named by its URL without the password, and a short reason for ``/healthz``. Refusals
that are jobd's own (``NotFound``, ``IdempotencyConflict`` ...) pass through untouched.
"""

from __future__ import annotations

import asyncio

import asyncpg

from jobd.errors import StoreUnavailable
from jobd.store.postgres.connection import unavailable

UNREACHABLE = "database_unreachable"
READ_ONLY = "database_read_only"
STORAGE_FAILED = "storage_failed"
OVERLOADED = "database_overloaded"

# The server cannot take connections or ended ours (class 08 and 57P0x: shutdown, crash,
# starting up), the network failed, or the driver lost track of the connection's state
# (InternalClientError, seen on a connection the server ended while it sat in the pool):
# nothing more on this connection can succeed.
GONE = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError,
        asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
        asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
        asyncpg.TooManyConnectionsError)

# Errors one item's data can cause (a constraint, a bad value): a batch that meets one is
# done again item by item, so that only that item fails.
ITEM_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)

# A statement the server rolled back for another transaction's sake: done again, it
# succeeds (two batches that lock the same rows in different orders, for instance).
TRANSIENT_ERRORS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

DATABASE_ERRORS = (asyncpg.PostgresError, *GONE)


def reason_of(exc: BaseException) -> str:
    """The /healthz reason for a failure."""
    if isinstance(exc, GONE):
        return UNREACHABLE
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return READ_ONLY  # e.g. the URL now points at a standby
    if isinstance(exc, (asyncpg.InsufficientResourcesError, asyncpg.PostgresSystemError)):
        return STORAGE_FAILED  # disk full, out of memory, an I/O error
    return OVERLOADED  # timeouts, lock waits, serialization ...


def store_error(exc: BaseException, url: str, *, connecting: bool = False) -> StoreUnavailable:
    """``exc`` as StoreUnavailable, without the password."""
    doing = "cannot reach" if connecting or isinstance(exc, GONE) else "error from"
    return unavailable(exc, url, doing=doing)
