"""The PostgreSQL schema: migrations under an advisory lock, refusal of a newer schema,
the storage choices, and the same logical columns as the SQLite schema."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobd.config import DatabaseConfig
from jobd.errors import StoreUnavailable
from jobd.store.postgres import connection as pg
from jobd.store.postgres.connection import Migration, connect, migrate, migrations
from jobd.store.sqlite import connection as sqlite_connection

LATEST = migrations()[-1].version
TABLES = {"tenants", "jobs", "deliveries", "delivery_attempts"}
QUEUE_TABLES = ("jobs", "deliveries")

# Tables only one backend has, and why.
PG_ONLY_TABLES = {
    "jobd_schema": "SQLite keeps the schema version in PRAGMA user_version",
    "nodes": "one node runs on a SQLite file (the daemon's lock file)",
    "leader": "one node runs on a SQLite file: it leads",
    "rate_buckets": "one node runs on a SQLite file: its buckets are in its memory",
}
# Columns only the PostgreSQL schema has so far, and why.
PG_ONLY_COLUMNS = {
    ("deliveries", "lease_owner"): "the SQLite schema gains it with the cluster's wiring",
}
# (table, SQLite column) -> PostgreSQL column, where a column must be named differently.
# None so far: the store's Python side reads rows by name on both backends.
RENAMED_COLUMNS: dict[tuple[str, str], str] = {}


@pytest.fixture
async def conn(pg_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(DatabaseConfig(url=pg_database_url))
    yield connection
    await connection.close()


async def catalog(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    """Tables, columns and indexes of the current schema, to compare two states."""
    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable, collation_name "
        "FROM information_schema.columns WHERE table_schema = current_schema() "
        "ORDER BY table_name, ordinal_position")
    indexes = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes "
                               "WHERE schemaname = current_schema() ORDER BY indexname")
    return [tuple(r) for r in columns] + [tuple(r) for r in indexes]


async def applied(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    return [(r["version"], r["name"]) for r in
            await conn.fetch("SELECT version, name FROM jobd_schema ORDER BY version")]


# migrations -------------------------------------------------------------------------


def test_migration_files_are_numbered_without_gaps() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert all(m.name.endswith(".sql") and m.name.startswith(f"{m.version:04d}_") for m in found)


async def test_an_empty_database_migrates_to_the_latest_version(conn: asyncpg.Connection) -> None:
    assert await migrate(conn) == LATEST
    assert await applied(conn) == [(m.version, m.name) for m in migrations()]
    tables = {r[0] for r in await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert tables == TABLES | set(PG_ONLY_TABLES)
    assert await conn.fetchval("SELECT count(*) FROM jobd_schema WHERE applied_at IS NULL") == 0
    assert not conn.is_in_transaction()


async def test_migrating_twice_is_a_no_op(conn: asyncpg.Connection) -> None:
    await migrate(conn)
    before = (await catalog(conn), await applied(conn))
    assert await migrate(conn) == LATEST
    assert (await catalog(conn), await applied(conn)) == before


async def test_migrate_database_connects_migrates_and_disconnects(pg_database_url: str) -> None:
    config = DatabaseConfig(url=pg_database_url)
    assert await pg.migrate_database(config) == LATEST
    assert await pg.migrate_database(config) == LATEST


async def test_two_migrators_at_once_apply_each_migration_once(pg_database_url: str) -> None:
    """Both wait on the advisory lock (held here until both are queued on it); the second
    finds the work done."""
    config = DatabaseConfig(url=pg_database_url)
    holder, first, second = [await connect(config) for _ in range(3)]
    racers: list[asyncio.Task[int]] = []
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", pg.MIGRATION_LOCK_KEY)
            racers = [asyncio.create_task(migrate(c)) for c in (first, second)]
            await wait_for_lock_waiters(holder, 2)
        assert await asyncio.wait_for(asyncio.gather(*racers), 30) == [LATEST, LATEST]
        assert await applied(first) == [(m.version, m.name) for m in migrations()]
    finally:
        for racer in racers:
            racer.cancel()
        await asyncio.gather(*racers, return_exceptions=True)
        for c in (holder, first, second):
            await c.close()


async def test_two_migrators_racing_on_a_new_database(pg_database_url: str) -> None:
    config = DatabaseConfig(url=pg_database_url)
    first, second = await connect(config), await connect(config)
    try:
        assert await asyncio.gather(migrate(first), migrate(second)) == [LATEST, LATEST]
        assert await applied(first) == [(m.version, m.name) for m in migrations()]
    finally:
        await first.close()
        await second.close()


async def wait_for_lock_waiters(conn: asyncpg.Connection, count: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        if waiting >= count:
            return
        assert time.monotonic() < deadline, f"{waiting} of {count} migrators wait on the lock"
        await asyncio.sleep(0.01)


async def test_a_schema_newer_than_this_node_knows_is_refused(pg_database_url: str,
                                                             conn: asyncpg.Connection) -> None:
    await migrate(conn)
    await conn.execute("INSERT INTO jobd_schema (version, name) VALUES ($1, 'from_the_future.sql')",
                       LATEST + 1)
    before = await catalog(conn)
    with pytest.raises(StoreUnavailable, match=rf"version {LATEST + 1}, newer than this jobd "
                                               rf"knows \({LATEST}\)") as caught:
        await migrate(conn, url=pg_database_url)
    assert "postgresql://postgres:***@" in str(caught.value)
    assert await catalog(conn) == before
    with pytest.raises(StoreUnavailable, match="newer than this jobd knows"):
        await pg.migrate_database(DatabaseConfig(url=pg_database_url))


async def test_a_failing_migration_leaves_nothing_of_itself(
        conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = Migration(LATEST + 1, f"{LATEST + 1:04d}_broken.sql",
                       "CREATE TABLE half_done (x int);\nSELECT no_such_column FROM jobs;")
    monkeypatch.setattr(pg, "migrations", lambda: [*migrations(), broken])
    with pytest.raises(asyncpg.UndefinedColumnError):
        await migrate(conn)
    assert await applied(conn) == [(m.version, m.name) for m in migrations()]
    assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    assert not conn.is_in_transaction()


def test_servers_older_than_13_are_refused() -> None:
    with pytest.raises(StoreUnavailable, match=r"runs PostgreSQL 12\.9; jobd needs 13 or newer"):
        pg._require_server_version((12, 9, 0), "db")
    pg._require_server_version((13, 0, 0), "db")
    pg._require_server_version((17, 2, 0), "db")


# what the schema promises -------------------------------------------------------------


async def test_queue_tables_carry_their_vacuum_and_fillfactor_settings(
        conn: asyncpg.Connection) -> None:
    await migrate(conn)
    for table in QUEUE_TABLES:
        options = set(await conn.fetchval("SELECT reloptions FROM pg_class WHERE oid = $1::regclass",
                                          table))
        assert {"fillfactor=85", "autovacuum_vacuum_scale_factor=0.02",
                "autovacuum_vacuum_insert_scale_factor=0.02",
                "autovacuum_analyze_scale_factor=0.02",
                "autovacuum_vacuum_cost_delay=0"} <= options, (table, options)


async def test_identifiers_compare_bytewise_like_sqlite(conn: asyncpg.Connection) -> None:
    """COLLATE "C": the claim rotation and listings order ids as SQLite does, whatever
    the database's locale."""
    await migrate(conn)
    for table, column in (("tenants", "id"), ("jobs", "id"), ("jobs", "tenant_id"),
                          ("deliveries", "id"), ("deliveries", "tenant_id")):
        collation = await conn.fetchval(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2",
            table, column)
        assert collation == "C", (table, column, collation)
    await insert_tenant(conn, "acme")
    await insert_tenant(conn, "Zeta")
    await insert_tenant(conn, "_sys")
    assert [r[0] for r in await conn.fetch("SELECT id FROM tenants ORDER BY id")] == sorted(
        ["acme", "Zeta", "_sys"])


async def test_one_job_per_idempotency_key_and_released_keys_do_not_collide(
        conn: asyncpg.Connection) -> None:
    await migrate(conn)
    await insert_tenant(conn, "acme")
    inserted = [await insert_job(conn, f"job_{n}", key) for n, key in
                enumerate(["k1", "k1", None, None])]
    assert inserted == ["job_0", None, "job_2", "job_3"]


async def test_times_payloads_and_bodies_come_back_exactly(conn: asyncpg.Connection) -> None:
    """A float is its own fencing token (``lease_expires_at = $n``), and the JSON and bytes
    jobd hands back are the ones it stored."""
    await migrate(conn)
    await insert_tenant(conn, "acme")
    lease = 1_750_000_123.123_456_7  # more digits than timestamptz's microseconds keep
    payload = '{"b": 1,  "a": [1.50, "\\u00e9"], "b": 2}'  # order, spacing, duplicate kept
    body = b'{"jobId":"job_x"}\x00\xff'
    await conn.execute(
        "INSERT INTO deliveries (id, job_id, tenant_id, url, body, status, lease_expires_at, "
        "created_at, updated_at) VALUES ('msg_x', 'job_x', 'acme', 'http://h/', $1, 'sending', "
        "$2, 0, 0)", body, lease)
    fenced = await conn.fetchval("UPDATE deliveries SET status = 'succeeded' "
                                 "WHERE id = 'msg_x' AND lease_expires_at = $1 RETURNING body",
                                 lease)
    assert fenced == body
    await insert_job(conn, "job_x", "k", payload=payload)
    assert await conn.fetchval("SELECT payload FROM jobs WHERE id = 'job_x'") == payload


async def insert_tenant(conn: asyncpg.Connection, tenant_id: str) -> None:
    await conn.execute(
        "INSERT INTO tenants (id, api_key_hash, api_key_prefix, webhook_secret, rate, burst, "
        "created_at, updated_at) VALUES ($1, 'hash-' || $1, 'p', 's', 1, 1, 0, 0)", tenant_id)


async def insert_job(conn: asyncpg.Connection, job_id: str, key: str | None, *,
                     payload: str = "{}") -> str | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO jobs (id, tenant_id, type, payload, status, max_attempts, run_at, "
        "next_run_at, idempotency_key, created_at, updated_at) "
        "VALUES ($1, 'acme', 'noop', $3, 'queued', 1, 0, 0, $2, 0, 0) "
        "ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING id", job_id, key, payload)


# both backends ------------------------------------------------------------------------


def sqlite_columns(path: Path) -> dict[str, dict[str, bool]]:
    """{table: {column: NOT NULL}} after every SQLite migration."""
    conn = sqlite_connection.connect(str(path))
    try:
        sqlite_connection.migrate(conn)
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {table: {row[1]: bool(row[3] or row[5])  # notnull, or the INTEGER PRIMARY KEY
                        for row in conn.execute(f"PRAGMA table_info({table})")}
                for table in tables}
    finally:
        conn.close()


async def pg_columns(conn: asyncpg.Connection) -> dict[str, dict[str, bool]]:
    found: dict[str, dict[str, bool]] = {}
    for row in await conn.fetch(
            "SELECT c.table_name, c.column_name, c.is_nullable FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"):
        found.setdefault(row["table_name"], {})[row["column_name"]] = row["is_nullable"] == "NO"
    return found


async def test_both_backends_have_the_same_logical_columns(tmp_path: Path,
                                                           conn: asyncpg.Connection) -> None:
    """Same tables, same column names, same NOT NULLs: rows read from either backend
    build the same models."""
    await migrate(conn)
    lite = sqlite_columns(tmp_path / "columns.db")
    post = await pg_columns(conn)
    for table in PG_ONLY_TABLES:
        post.pop(table)
    renamed = {table: {RENAMED_COLUMNS.get((table, column), column): not_null
                       for column, not_null in columns.items()}
               for table, columns in lite.items()}
    for table, column in PG_ONLY_COLUMNS:
        post[table].pop(column)
    assert set(renamed) == set(post) == TABLES
    for table in sorted(TABLES):
        assert renamed[table] == post[table], table
