"""The SQLite backend's own tests: its transaction functions run directly on a
connection of the test's own (:class:`Transactions`), its writer driven with any
function (:func:`write`), new jobs and the synchronous ``insert_job`` transaction."""

from __future__ import annotations

import functools
import hashlib
import itertools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobd.config import Config, DatabaseConfig
from jobd.models import IdempotentResult, NewJob, NewTenant
from jobd.store.backend import WriterStats
from jobd.store.sqlite import jobs as store_jobs
from jobd.store.sqlite import tenants as store_tenants
from jobd.store.sqlite.backend import SqliteBackend
from jobd.store.sqlite.connection import connect, migrate, transaction
from tests.conftest import T0

TTL_S = 24 * 3600.0
T = TypeVar("T")

NewJobFactory = Callable[..., NewJob]
Submit = Callable[..., IdempotentResult]


class Transactions:
    """The transaction functions of ``jobd.store.sqlite`` run directly, each in one
    ``BEGIN IMMEDIATE`` ... ``COMMIT`` on a connection of the test's own (as another
    process sees the file); reads without a transaction."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.path = config.path
        self.conn = connect(config.path, synchronous=config.synchronous,
                            busy_timeout_s=config.busy_timeout)
        migrate(self.conn)

    def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with transaction(self.conn):
            return fn(self.conn, *args, **kwargs)

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(self.conn, *args, **kwargs)

    def close(self) -> None:
        """Close, leaving the ``-wal`` and ``-shm`` files: a read-only connection closes
        last (SQLite deletes them when the last one that may write closes)."""
        last = connect(self.path, read_only=True)
        self.conn.close()
        last.close()

    def __enter__(self) -> Transactions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def write(store: SqliteBackend, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(conn, *args, **kwargs)`` in the store's writer's next transaction."""
    assert store.writer is not None
    return await store.writer.call(functools.partial(fn, **kwargs) if kwargs else fn, *args)


def read(store: SqliteBackend, fn: Callable[..., T], *args: Any) -> T:
    """``fn(reader, *args)`` on the store's reader, in the event loop's thread."""
    return store._read(fn, *args)


def writer_stats(store: SqliteBackend) -> WriterStats:
    assert store.writer is not None
    return store.writer.stats.copy()


@pytest.fixture
def db(config: Config) -> Iterator[Transactions]:
    with Transactions(config.database) as transactions:
        yield transactions


@pytest.fixture
def new_tenant(db: Transactions) -> Callable[..., NewTenant]:
    def create(tenant_id: str = "acme", *, rate: float = 1000, burst: int = 1000,
               max_concurrency: int | None = None) -> NewTenant:
        return db.write(store_tenants.create_tenant, tenant_id, rate=rate, burst=burst,
                        max_concurrency=max_concurrency, now=T0)
    return create


def body_hash_of(job: NewJob) -> bytes:
    """Stands in for the API's hash of the parsed request body."""
    return hashlib.sha256(f"{job.type}|{job.payload}|{job.webhook_url}".encode()).digest()


@pytest.fixture
def notes_path(tmp_path: Path) -> Path:
    """A database file with one table, ``notes (n)``, for tests of the writer alone."""
    path = tmp_path / "w.db"
    conn = connect(str(path))
    conn.execute("CREATE TABLE notes (n)")
    conn.close()
    return path


def note(conn: sqlite3.Connection, n: T) -> T:
    """A write for the writer's tests: one row in ``notes``."""
    conn.execute("INSERT INTO notes VALUES (?)", (n,))
    return n


@pytest.fixture
def new_job() -> NewJobFactory:
    keys = itertools.count(1)

    def make(tenant_id: str = "acme", *, key: str | None = None, type: str = "noop",
             payload: str = '{"n": 1}', priority: int = 0, max_attempts: int = 5,
             timeout_seconds: float | None = None, run_at: float = T0,
             webhook_url: str | None = None) -> NewJob:
        return NewJob(tenant_id=tenant_id, type=type, payload=payload, priority=priority,
                      max_attempts=max_attempts, timeout_seconds=timeout_seconds, run_at=run_at,
                      webhook_url=webhook_url, idempotency_key=key or f"key-{next(keys)}")
    return make


@pytest.fixture
def submit(db: Transactions, new_job: NewJobFactory) -> Submit:
    """Insert a job (a NewJob, or keyword arguments for one) in its own transaction."""
    def insert(job: NewJob | None = None, *, now: float = T0, body_hash: bytes | None = None,
               **fields: Any) -> IdempotentResult:
        job = job if job is not None else new_job(**fields)
        return db.write(store_jobs.insert_job, job,
                        body_hash=body_hash if body_hash is not None else body_hash_of(job),
                        now=now, idempotency_ttl_s=TTL_S)
    return insert


@pytest.fixture(scope="module")
def backend_kind() -> str:
    """The SQLite backend's own tests (its writer, WAL, checkpointer, migrations, file
    modes, full disk): SQLite only. What every backend must do is in tests/contract."""
    return "sqlite"
