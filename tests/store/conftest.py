"""Factories for store tests: new jobs and the synchronous ``insert_job`` transaction."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobd.models import IdempotentResult, NewJob
from jobd.store.sqlite import jobs as store_jobs
from jobd.store.sqlite.connection import connect
from jobd.store.sqlite.database import Database
from tests.conftest import T0

TTL_S = 24 * 3600.0
T = TypeVar("T")

NewJobFactory = Callable[..., NewJob]
Submit = Callable[..., IdempotentResult]


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
def submit(db: Database, new_job: NewJobFactory) -> Submit:
    """Insert a job (a NewJob, or keyword arguments for one) in its own transaction."""
    def insert(job: NewJob | None = None, *, now: float = T0, body_hash: bytes | None = None,
               **fields: Any) -> IdempotentResult:
        job = job if job is not None else new_job(**fields)
        return db.write(store_jobs.insert_job, job,
                        body_hash=body_hash if body_hash is not None else body_hash_of(job),
                        now=now, idempotency_ttl_s=TTL_S)
    return insert
