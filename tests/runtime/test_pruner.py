"""Retention in the background: the Pruner against a real SQLite file and a FakeClock."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import sqlite3
from typing import Any

import pytest

from jobd.clock import FakeClock
from jobd.config import Config
from jobd.models import JobStatus, NewJob
from jobd.runtime.pruner import Pruner
from jobd.store.sqlite import jobs as store_jobs
from jobd.store.sqlite import retention, scheduling
from jobd.store.sqlite.database import Database
from jobd.store.sqlite.store import Store
from tests.conftest import T0, make_config

DAY = 86_400.0
KEY_TTL_S = 3600.0
_keys = itertools.count(1)


def _insert(conn: sqlite3.Connection, n: int, *, at: float, run_at: float | None = None,
            tenant: str = "acme") -> list[str]:
    ids = []
    for _ in range(n):
        key = f"key-{next(_keys)}"
        job = NewJob(tenant_id=tenant, type="noop", payload="{}", priority=0, max_attempts=1,
                     timeout_seconds=None, run_at=at if run_at is None else run_at,
                     webhook_url=None, idempotency_key=key)
        ids.append(store_jobs.insert_job(conn, job, body_hash=hashlib.sha256(key.encode()).digest(),
                                         now=at, idempotency_ttl_s=KEY_TTL_S).job_id)
    return ids


def _finished(conn: sqlite3.Connection, n: int, *, at: float,
              status: JobStatus = JobStatus.SUCCEEDED) -> list[str]:
    """``n`` jobs created and finished at ``at`` (nothing else may be due then)."""
    ids = _insert(conn, n, at=at)
    claimed = scheduling.claim_due_jobs(conn, now=at, limit=n, owner="w", lease_s=60).jobs
    assert sorted(j.id for j in claimed) == sorted(ids)
    for job in claimed:
        assert scheduling.finish_job(conn, job, owner="w", status=status, now=at,
                                     error=None if status is JobStatus.SUCCEEDED else "boom")
    return ids


def _job_ids(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT id FROM jobs")}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def writes(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every store write the pruner makes: (function name, result)."""
    seen: list[tuple[str, Any]] = []
    write = store.write

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        result = await write(fn, *args, **kwargs)
        seen.append((fn.__name__, result))
        return result

    monkeypatch.setattr(store, "write", spy)
    return seen


async def test_run_once_deletes_in_small_batches_only_what_is_past_retention(
        db: Database, new_tenant: Any, store: Store, clock: FakeClock, config: Config,
        writes: list[tuple[str, Any]]) -> None:
    assert config.jobs.retention_days == 7
    new_tenant("acme")
    old = T0 - 10 * DAY
    many = db.write(_finished, retention.BATCH * 2 + 203, at=old)
    failed = db.write(_finished, 3, at=old + 1, status=JobStatus.FATAL)
    recent = db.write(_finished, 2, at=T0 - DAY)
    [running] = db.write(_insert, 1, at=old + 2)
    db.write(scheduling.claim_due_jobs, now=old + 2, limit=1, owner="w", lease_s=60)
    [waiting] = db.write(_insert, 1, at=old + 3, run_at=T0 + 3600)
    [fresh] = db.write(_insert, 1, at=T0)

    pruner = Pruner(store=store, clock=clock, config=config)
    counts = await pruner.run_once()

    assert counts == {"jobs": len(many) + len(failed), "deliveries": 0}
    assert db.read(_job_ids) == {*recent, running, waiting, fresh}
    job_batches = [n for name, n in writes if name == "prune_jobs_batch"]
    assert job_batches == [retention.BATCH, retention.BATCH, 203 + len(failed), 0]

    assert await pruner.run_once() == {"jobs": 0, "deliveries": 0}


async def test_a_job_is_kept_while_its_idempotency_key_is_live(
        db: Database, new_tenant: Any, store: Store, clock: FakeClock, tmp_path: Any) -> None:
    """A retention shorter than the key's life must not let a retried request run twice."""
    config = make_config(tmp_path, jobs={"retention_days": 0.01}, idempotency={"ttl_hours": 2})
    new_tenant("acme")
    done = db.write(_finished, 3, at=T0)
    pruner = Pruner(store=store, clock=clock, config=config)
    clock.advance(3600)                   # past retention (864 s), the keys live 2 h
    assert (await pruner.run_once())["jobs"] == 0
    assert db.read(_job_ids) == set(done)
    clock.advance(3601)
    assert (await pruner.run_once())["jobs"] == 3


async def test_jobs_become_prunable_as_the_clock_moves(db: Database, new_tenant: Any,
                                                       store: Store, clock: FakeClock,
                                                       config: Config) -> None:
    new_tenant("acme")
    done = db.write(_finished, 4, at=T0)
    pruner = Pruner(store=store, clock=clock, config=config)
    assert (await pruner.run_once())["jobs"] == 0

    clock.advance(7 * DAY - 1)
    assert (await pruner.run_once())["jobs"] == 0
    assert db.read(_job_ids) == set(done)

    clock.advance(2)
    assert await pruner.run_once() == {"jobs": 4, "deliveries": 0}
    assert db.read(_job_ids) == set()


async def test_run_prunes_in_the_background_until_stopped(db: Database, new_tenant: Any,
                                                          store: Store, clock: FakeClock,
                                                          config: Config) -> None:
    new_tenant("acme")
    db.write(_finished, 3, at=T0 - 8 * DAY)
    pruner = Pruner(store=store, clock=clock, config=config, interval_s=0.01)
    task = asyncio.create_task(pruner.run())
    try:
        async with asyncio.timeout(5):
            while db.read(_job_ids):
                await asyncio.sleep(0.01)
        db.write(_finished, 2, at=T0 - 9 * DAY)  # a later round takes these too
        async with asyncio.timeout(5):
            while db.read(_job_ids):
                await asyncio.sleep(0.01)
    finally:
        pruner.stop()
        async with asyncio.timeout(5):
            await task
