"""Opening the database file and migrating its schema.

Used by the daemon's writer thread and readers and by the CLI alike, so every
process applies the same pragmas and the same migrations.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import IO, Generic, TypeVar

from jobd.errors import StoreUnavailable
from jobd.store.sqlite.failures import is_storage_error

T = TypeVar("T")
R = TypeVar("R")
MIGRATIONS_PACKAGE = "jobd.store.sqlite.migrations"


FILE_MODE = 0o600  # the database holds every tenant's webhook secret


def connect(path: str, *, synchronous: str = "full", busy_timeout_s: float = 5.0,
            read_only: bool = False) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with autocommit (explicit ``BEGIN`` only); a missing file
    is created (the CLI checks first that it exists: jobd/cli/common.py), with mode 0600,
    and SQLite gives its ``-wal`` and ``-shm`` files the same."""
    try:
        if path != ":memory:" and not read_only:
            create_private(path)
        target = f"{Path(path).absolute().as_uri()}?mode=ro" if read_only else path
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                               cached_statements=256, uri=read_only)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if not read_only:
            _enable_wal(conn, busy_timeout_s)
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys = ON")
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"cannot open database {path}: {exc}") from None
    conn.row_factory = sqlite3.Row
    return conn


def create_private(path: str) -> None:
    """Create ``path``, empty, readable by its owner only, unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
    finally:
        os.close(fd)


def others_can_read(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o077)
    except FileNotFoundError:
        return False


@contextmanager
def transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """``begin`` ... ``COMMIT`` around the block (``ROLLBACK`` if it raises), unless the
    connection is in a transaction already: then the block is part of that one."""
    if conn.in_transaction:
        yield
        return
    conn.execute(begin)
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def savepoint(conn: sqlite3.Connection) -> Iterator[None]:
    """The block in a savepoint of its own: if it raises, only its writes are undone and
    the transaction goes on (unless the database failed: then the whole transaction
    fails, and its caller rolls it back)."""
    conn.execute("SAVEPOINT unit")
    try:
        yield
    except BaseException as exc:
        if not is_storage_error(exc):
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
        raise
    conn.execute("RELEASE unit")


class OneByOne(Generic[T, R]):
    """``fn(item)`` for the items a batch's one statement left (the ``each`` of
    :func:`jobd.store.outcomes.all_else_each`): each in a savepoint of its own, all in one
    transaction, begun at the first item when the caller had none (the writer runs a
    batch that holds only new jobs outside a transaction) and committed at the end of
    the ``with`` block."""

    def __init__(self, conn: sqlite3.Connection, fn: Callable[[T], R]) -> None:
        self._conn = conn
        self._fn = fn
        self._began = False

    def __call__(self, item: T) -> R:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")
            self._began = True
        with savepoint(self._conn):
            return self._fn(item)

    def __enter__(self) -> OneByOne[T, R]:
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        if self._began and self._conn.in_transaction:
            self._conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def hold_daemon_lock(path: str) -> IO[bytes]:
    """An exclusive lock on ``<path>.lock`` for as long as the returned file is open."""
    if path == ":memory:":
        return open(os.devnull, "rb")
    create_private(f"{path}.lock")
    lock_file = open(f"{path}.lock", "a+b")  # noqa: SIM115 - closed by the caller
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise StoreUnavailable(f"another jobd serve is already running on {path}") from None
    return lock_file


def _enable_wal(conn: sqlite3.Connection, busy_timeout_s: float) -> None:
    """Switch a new file to WAL. SQLite refuses the switch at once (without waiting
    for busy_timeout) while another connection holds a lock, so retry until then."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration, in order."""
    found = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(conn: sqlite3.Connection, *, path: str = "") -> int:
    """Apply pending migrations in one transaction each; return the schema version. A
    database whose schema is newer than this jobd knows is refused (StoreUnavailable):
    an older jobd must not write to tables it does not understand."""
    known = migrations()
    latest = known[-1][0] if known else 0
    version = conn.execute("PRAGMA user_version").fetchall()[0][0]
    if version > latest:
        raise StoreUnavailable(f"the schema of database {path or 'here'} is at version "
                               f"{version}, newer than this jobd knows ({latest}): "
                               "upgrade jobd")
    for number, _name, sql in known:
        if number <= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchall()[0][0]
            if number > current:
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = number
    return int(version)


def _statements(sql: str) -> list[str]:
    parts, buf = [], []
    for line in sql.splitlines():
        buf.append(line)
        if sqlite3.complete_statement("\n".join(buf)):
            parts.append("\n".join(buf))
            buf = []
    return parts
