"""The batched statements' cached plans: a finish and a webhook attempt are not planned
to read the running jobs (or sending deliveries) through their partial index.

asyncpg prepares every statement once per connection, and after five runs PostgreSQL
may keep a generic plan, made without knowing how many rows come. With statistics taken
while nothing ran, such a plan read the running jobs from jobs_running and then every
row of the batch again for each of them: quadratic in the batch. The rows' ids lead to
the jobs instead (through jobs_id_key, or for a small table a hash of a scan)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from jobd.config import DatabaseConfig
from jobd.models import JobStatus
from jobd.store.postgres.backend import PostgresBackend
from jobd.store.postgres.queries import Q
from tests.conftest import T0
from tests.contract.helpers import HOOK, claim, submit, tenant

QUEUED = 2000
WEBHOOKS = 3000


@pytest.fixture
async def conn(pg_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A database with queued jobs, pending webhooks, and statistics that say nothing runs
    or sends."""
    backend = PostgresBackend(DatabaseConfig(url=pg_database_url, pool_size=2))
    await backend.open(daemon=True)
    try:
        await tenant(backend, "acme")
        await asyncio.gather(*(submit(backend, key=f"w{k}", webhook_url=HOOK)
                               for k in range(WEBHOOKS)))
        claimed = await claim(backend, limit=WEBHOOKS)
        await asyncio.gather(*(backend.finish_job(job, owner="w1", status=JobStatus.SUCCEEDED,
                                                  now=T0, result_json="{}")
                               for job in claimed.jobs))
        await asyncio.gather(*(submit(backend, key=f"k{k}") for k in range(QUEUED)))
    finally:
        await backend.close()
    connection = await asyncpg.connect(pg_database_url)
    await connection.execute("ANALYZE")
    yield connection
    await connection.close()


async def generic_plan(conn: asyncpg.Connection, name: str) -> str:
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE p AS {Q[name]}")
    rows = await conn.fetch("EXPLAIN EXECUTE p(NULL)")  # its one parameter: the rows
    return "\n".join(r[0] for r in rows)


async def test_a_finish_is_not_planned_through_the_running_jobs(conn: asyncpg.Connection) -> None:
    plan = await generic_plan(conn, "jobs_finish")
    assert "jobs_running" not in plan, plan


async def test_a_webhook_attempt_is_not_planned_through_the_sending_deliveries(
        conn: asyncpg.Connection) -> None:
    plan = await generic_plan(conn, "deliveries_record")
    assert "deliveries_sending" not in plan, plan
