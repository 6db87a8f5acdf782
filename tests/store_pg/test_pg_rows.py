"""The batches' rows travel as one array of a row type (migration 0004): every value
arrives exactly, and a string the database cannot store does not fail its batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from jobd.models import JobStatus
from jobd.store.postgres.backend import PostgresBackend
from tests.conftest import T0
from tests.contract.helpers import HOOK, claim, new_job

AWKWARD = 'a "quoted", {braced} \\ back\\slash\nnew line\ttab é 😀 \x01 NULL'
PAYLOAD = '{"text": "' + AWKWARD.replace("\\", "\\\\").replace('"', '\\"').replace(
    "\n", "\\n").replace("\t", "\\t").replace("\x01", "\\u0001") + '",  "n": 1.50}'
RUN_AT = T0 + 0.123_456_789_012_3
TIMEOUT_S = 0.1 + 0.2  # 0.30000000000000004
BODY_HASH = bytes(range(256))[::8]


@pytest.fixture
async def conn(pg_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_database_url)
    yield connection
    await connection.close()


async def test_a_batch_keeps_every_value_exactly(backend: PostgresBackend,
                                                 conn: asyncpg.Connection) -> None:
    job = new_job(key=AWKWARD, payload=PAYLOAD, priority=-7, max_attempts=2,
                  timeout_seconds=TIMEOUT_S, run_at=RUN_AT, webhook_url=HOOK)
    created = await backend.insert_job(job, body_hash=BODY_HASH, now=RUN_AT,
                                       idempotency_ttl_s=86400)
    row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", created.job_id)
    assert (row["payload"], row["idempotency_key"], row["body_hash"]) == (PAYLOAD, AWKWARD,
                                                                          BODY_HASH)
    assert (row["run_at"], row["created_at"], row["timeout_seconds"]) == (RUN_AT, RUN_AT,
                                                                          TIMEOUT_S)
    assert (row["priority"], row["max_attempts"]) == (-7, 2)

    [running] = (await claim(backend, now=RUN_AT)).jobs
    finished_at = RUN_AT + 1 / 3
    assert await backend.finish_job(running, owner="w1", status=JobStatus.FATAL,
                                    now=finished_at, result_json=PAYLOAD, error=AWKWARD)
    row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", created.job_id)
    assert (row["result"], row["last_error"], row["completed_at"]) == (PAYLOAD, AWKWARD,
                                                                       finished_at)
    body = await conn.fetchval("SELECT body FROM deliveries WHERE job_id = $1", created.job_id)
    assert AWKWARD.encode() in body.replace(b"\\n", b"\n").replace(b"\\t", b"\t").replace(
        b'\\"', b'"').replace(b"\\\\", b"\\").replace(b"\\u0001", b"\x01")


async def test_a_string_the_database_cannot_store_does_not_fail_its_batch(
        backend: PostgresBackend, conn: asyncpg.Connection) -> None:
    """A lone surrogate (not Unicode, so neither UTF-8 nor storable) in one job's error is
    stored as U+FFFD; the job finished beside it in the same batch is finished too."""
    for key in ("a", "b"):
        await backend.insert_job(new_job(key=key), body_hash=b"h", now=T0,
                                 idempotency_ttl_s=86400)
    first, second = (await claim(backend)).jobs
    done = await asyncio.gather(
        backend.finish_job(first, owner="w1", status=JobStatus.FATAL, now=T0,
                           error="bad \ud800 byte"),
        backend.finish_job(second, owner="w1", status=JobStatus.SUCCEEDED, now=T0,
                           result_json="{}"))
    assert done == [True, True]
    stored = {r["id"]: (r["status"], r["last_error"]) for r in await conn.fetch(
        "SELECT id, status, last_error FROM jobs")}
    assert stored == {first.id: ("fatal", "bad \ufffd byte"), second.id: ("succeeded", None)}
