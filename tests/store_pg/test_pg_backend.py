"""What only the PostgreSQL backend has: batches of calls, a database that goes away and
comes back, an item's own database error failing that item alone."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import asyncpg
import pytest

from jobd.config import DatabaseConfig
from jobd.errors import StoreUnavailable
from jobd.models import JobStatus
from jobd.store.backend import Rotation
from jobd.store.postgres.backend import PostgresBackend
from jobd.store.postgres.failures import UNREACHABLE
from tests.conftest import T0
from tests.contract.helpers import HOOK, LEASE_S, new_job, submit, tenant
from tests.pg import admin


async def test_calls_made_in_one_turn_go_out_as_one_batch(backend: PostgresBackend) -> None:
    inserts = backend._inserts
    before = (inserts.batches, inserts.items)
    created = await asyncio.gather(*(submit(backend, webhook_url=HOOK) for _ in range(100)))
    assert (inserts.batches - before[0], inserts.items - before[1]) == (1, 100)
    assert len({c.job_id for c in created}) == 100

    round_ = await backend.claim_jobs(now=T0, limit=100, owner="w", lease_s=LEASE_S,
                                      rotation=Rotation())
    finishes = backend._finishes
    done = await asyncio.gather(*(backend.finish_job(j, owner="w", status=JobStatus.SUCCEEDED,
                                                     now=T0 + 1) for j in round_.jobs))
    assert all(done) and (finishes.batches, finishes.items) == (1, 100)

    deliveries = await backend.claim_deliveries(now=T0 + 2, limit=100, lease_s=LEASE_S)
    recorded = await asyncio.gather(*(backend.record_delivery_attempt(
        d, now=T0 + 3, attempted_at=T0 + 3, status_code=200, error=None, duration_ms=1,
        retry_at=None) for d in deliveries))
    assert len(recorded) == 100 and (backend._attempts.batches, backend._attempts.items) == (1, 100)


async def test_calls_made_while_every_connection_is_busy_join_the_next_batch(
        pg_database_url: str) -> None:
    b = PostgresBackend(DatabaseConfig(url=pg_database_url, pool_size=1))
    await b.open(daemon=True)
    try:
        await tenant(b, "acme")
        first = b.insert_job(new_job(), body_hash=b"h", now=T0, idempotency_ttl_s=60)
        await asyncio.sleep(0)  # the first batch has the only connection now
        later = [b.insert_job(new_job(), body_hash=b"h", now=T0, idempotency_ttl_s=60)
                 for _ in range(20)]
        await asyncio.gather(first, *later)
        assert (b._inserts.batches, b._inserts.items) == (2, 21)
    finally:
        await b.close()


async def test_an_items_own_database_error_fails_that_item_alone(backend: PostgresBackend) -> None:
    """A job for a tenant that does not exist breaks the batch's statement (a foreign key):
    the batch is done again item by item, and only that item fails."""
    outcomes = await asyncio.gather(
        submit(backend), submit(backend, tenant_id="nobody"), submit(backend),
        return_exceptions=True)
    assert isinstance(outcomes[1], StoreUnavailable) and "foreign key" in str(outcomes[1])
    assert not isinstance(outcomes[0], BaseException) and not isinstance(outcomes[2], BaseException)
    assert backend.health() is None  # the database itself is fine


async def test_a_database_that_goes_away_and_comes_back(backend: PostgresBackend,
                                                        pg_url: str,
                                                        pg_database_url: str) -> None:
    name = urlsplit(pg_database_url).path.lstrip("/")
    password = urlsplit(pg_url).password or ""
    admin(pg_url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false",
          f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    try:
        for attempt in range(2):  # the pool's connections were ended, and no new one is let in
            with pytest.raises(StoreUnavailable) as caught:
                await submit(backend)
            assert password not in str(caught.value) and "***" in str(caught.value), attempt
            assert (problem := backend.health()) is not None and problem.code == UNREACHABLE
        with pytest.raises(StoreUnavailable):
            await backend.find_tenant("acme")
    finally:
        admin(pg_url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    assert (await submit(backend)).job_id
    assert backend.health() is None


async def test_opening_an_unreachable_database_fails_without_the_password(
        pg_database_url: str) -> None:
    parts = urlsplit(pg_database_url)
    url = pg_database_url.replace(f":{parts.port}/", ":1/")
    b = PostgresBackend(DatabaseConfig(url=url))
    with pytest.raises(StoreUnavailable, match="cannot connect") as caught:
        await b.open()
    assert (parts.password or "") not in str(caught.value)


async def test_a_statement_past_its_timeout_is_store_unavailable(pg_database_url: str) -> None:
    b = PostgresBackend(DatabaseConfig(url=pg_database_url, pool_size=2, statement_timeout=0.2))
    await b.open(daemon=True)
    holder = await asyncpg.connect(pg_database_url)
    try:
        await tenant(b, "acme")
        await holder.execute("BEGIN; LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StoreUnavailable, match="timeout"):
            await submit(b)
        assert b.health() is not None
        await holder.execute("ROLLBACK")
        assert (await submit(b)).job_id and b.health() is None
    finally:
        await holder.close()
        await b.close()
