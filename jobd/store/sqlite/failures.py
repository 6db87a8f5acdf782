"""What a failed SQLite call means: an item's own error, or a database jobd cannot use now.

Every ``sqlite3.Error`` that reaches the backend's boundary becomes
:class:`~jobd.errors.StoreUnavailable` (as every driver error does on PostgreSQL), so
nothing outside ``jobd/store/`` meets a ``sqlite3`` exception.
"""

from __future__ import annotations

import sqlite3

from jobd.errors import StoreUnavailable

# Errors one item's data can cause (a constraint): a batch's statement that meets one is
# done again item by item, so that only that item fails.
ITEM_ERRORS = (sqlite3.IntegrityError,)

# SQLite's primary result codes for a database that cannot be written now but may be
# later: BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL. The others
# (CORRUPT, NOTADB, a misuse) do not go away by waiting.
_STORAGE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def is_storage_error(exc: BaseException) -> bool:
    """The database cannot be used now (locked, a full disk, I/O), through no fault of
    what was asked of it: :class:`StoreUnavailable`, or SQLite's error saying so."""
    if isinstance(exc, StoreUnavailable):
        return True
    return isinstance(exc, sqlite3.Error) and (
        (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF) in _STORAGE_CODES


def unavailable(exc: BaseException, doing: str = "database write failed") -> StoreUnavailable:
    """``exc`` as the error a caller gets; a lock held elsewhere also says what to do."""
    text = " ".join(str(exc).split())
    if "locked" in text or "busy" in text:
        text += (" (another process held its write lock past database.busy_timeout; "
                 "try again, or raise database.busy_timeout)")
    return StoreUnavailable(f"{doing}: {text}")


def as_store_error(exc: BaseException) -> BaseException:
    """An item's failure as its caller sees it: a ``sqlite3`` error becomes
    StoreUnavailable; jobd's own refusals (and anything else) pass unchanged."""
    if isinstance(exc, sqlite3.Error):
        return unavailable(exc, "database error")
    return exc
