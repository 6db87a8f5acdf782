"""Schema migrations, connection pragmas and the query plans of the hot queries."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobd.store.sqlite.backend import SqliteBackend
from jobd.store.sqlite.connection import connect, migrate, migrations
from jobd.store.sqlite.queries import Q, _multi_row
from tests.conftest import make_config
from tests.store.conftest import Transactions, read, write

SYNCHRONOUS = {"off": 0, "normal": 1, "full": 2, "extra": 3}


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(str(tmp_path / "fresh.db"))
    yield conn
    conn.close()


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def schema(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in conn.execute(
        "SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()]


# migrations -------------------------------------------------------------------------


def test_migration_files_are_numbered_without_gaps() -> None:
    found = migrations()
    assert found, "no migrations found"
    assert [n for n, _, _ in found] == list(range(1, len(found) + 1))
    assert all(name.endswith(".sql") for _, name, _ in found)


def test_fresh_file_migrates_to_the_latest_version(fresh: sqlite3.Connection) -> None:
    assert user_version(fresh) == 0
    assert migrate(fresh) == len(migrations())
    assert user_version(fresh) == len(migrations())
    tables = {r[0] for r in fresh.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"tenants", "jobs", "deliveries", "delivery_attempts"} <= tables
    assert "idempotency_keys" not in tables  # since 0004 a key lives on its job
    assert not fresh.in_transaction


def test_0004_moves_live_idempotency_keys_onto_their_jobs(fresh: sqlite3.Connection) -> None:
    for number, _name, sql in migrations()[:3]:
        fresh.executescript(sql)
        fresh.execute(f"PRAGMA user_version = {number}")
    fresh.execute("INSERT INTO tenants (id, api_key_hash, api_key_prefix, webhook_secret, rate, "
                  "burst, created_at, updated_at) VALUES ('acme', 'h', 'p', 's', 1, 1, 0, 0)")
    for job_id, key in (("job_live", "k1"), ("job_pruned_key", "k2"), ("job_reused", "k3"),
                        ("job_new", "k3")):
        fresh.execute("INSERT INTO jobs (id, tenant_id, type, payload, status, max_attempts, "
                      "run_at, idempotency_key, created_at, updated_at) "
                      "VALUES (?, 'acme', 'noop', '{}', 'queued', 1, 0, ?, 0, 0)", (job_id, key))
    for job_id, key in (("job_live", "k1"), ("job_new", "k3")):
        fresh.execute("INSERT INTO idempotency_keys VALUES ('acme', ?, ?, ?, 201, x'00', 9e9)",
                      (key, f"hash-{key}".encode(), job_id))
    assert migrate(fresh) == len(migrations())
    rows = {r[0]: (r[1], r[2]) for r in fresh.execute(
        "SELECT id, idempotency_key, body_hash FROM jobs")}
    assert rows == {"job_live": ("k1", b"hash-k1"), "job_pruned_key": (None, None),
                    "job_reused": (None, None), "job_new": ("k3", b"hash-k3")}


def test_0006_gives_deliveries_their_history_count_and_keeps_their_budget(
        fresh: sqlite3.Connection) -> None:
    for number, _name, sql in migrations()[:5]:
        fresh.executescript(sql)
        fresh.execute(f"PRAGMA user_version = {number}")
    # (id, attempts in the current budget, rows of history): retried from the DLQ once
    # after 4 attempts and tried once since; never retried; never tried
    for delivery_id, attempts, history in (("msg_retried", 1, 5), ("msg_plain", 3, 3),
                                           ("msg_new", 0, 0)):
        fresh.execute("INSERT INTO deliveries (id, job_id, tenant_id, url, body, status, "
                      "attempts, next_attempt_at, created_at, updated_at) VALUES "
                      "(?, 'job_x', 'acme', 'https://example.com/', x'7b7d', 'pending', ?, 0, 0, 0)",
                      (delivery_id, attempts))
        for n in range(history):
            fresh.execute("INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, "
                          "error, duration_ms) VALUES (?, ?, 500, 'HTTP 500', 1.0)", (delivery_id, n))
    assert migrate(fresh) == len(migrations())
    rows = {r[0]: (r[1], r[2]) for r in fresh.execute(
        "SELECT id, attempts, attempts - budget_base FROM deliveries")}
    # attempts: every attempt made; attempts - budget_base: the current budget, as before
    assert rows == {"msg_retried": (5, 1), "msg_plain": (3, 3), "msg_new": (0, 0)}


def test_migrating_twice_is_a_no_op(fresh: sqlite3.Connection) -> None:
    migrate(fresh)
    before = schema(fresh)
    assert migrate(fresh) == len(migrations())
    assert schema(fresh) == before
    assert user_version(fresh) == len(migrations())


async def test_database_and_store_migrate_on_open(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with Transactions(config.database) as db:
        assert db.read(user_version) == len(migrations())
    store = SqliteBackend(config.database)
    await store.open()
    try:
        assert read(store, user_version) == len(migrations())
    finally:
        await store.close()


def test_concurrent_migrations_once_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    """Processes racing to migrate a new (but already WAL) file all succeed, once each."""
    for round_no in range(10):
        path = str(tmp_path / f"race{round_no}.db")
        connect(path).close()  # creates the file and switches it to WAL; no schema yet
        results, errors = _race(path, threads=4)
        assert errors == []
        assert results == [len(migrations())] * 4
        check = connect(path)
        try:
            assert user_version(check) == len(migrations())
            assert check.execute("SELECT count(*) FROM sqlite_master WHERE name = 'jobs'"
                                 ).fetchone()[0] == 1
        finally:
            check.close()


def test_opening_a_new_file_waits_for_another_connections_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "new.db")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("CREATE TABLE scratch (x)")
        other.execute("BEGIN IMMEDIATE")  # what a second process's migration holds
        timer = threading.Timer(0.2, lambda: other.execute("COMMIT"))
        timer.start()
        try:
            conn = connect(path, busy_timeout_s=5.0)
        finally:
            timer.join()
        try:
            assert migrate(conn) == len(migrations())
        finally:
            conn.close()
    finally:
        other.close()


def test_concurrent_migrations_of_a_brand_new_file(tmp_path: Path) -> None:
    for round_no in range(40):
        path = str(tmp_path / f"new{round_no}.db")
        results, errors = _race(path, threads=4)
        assert errors == []
        assert results == [len(migrations())] * 4


def _race(path: str, *, threads: int) -> tuple[list[int], list[str]]:
    barrier = threading.Barrier(threads)
    results: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait()
            conn = connect(path, busy_timeout_s=5.0)
            try:
                version = migrate(conn)
            finally:
                conn.close()
            with lock:
                results.append(version)
        except Exception as exc:
            with lock:
                errors.append(repr(exc))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    return results, errors


# pragmas ----------------------------------------------------------------------------


def test_journal_mode_is_wal(fresh: sqlite3.Connection) -> None:
    assert fresh.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert fresh.execute("PRAGMA foreign_keys").fetchone()[0] == 1


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_synchronous_matches_config(tmp_path: Path, synchronous: str) -> None:
    config = make_config(tmp_path, database={"synchronous": synchronous})
    expected = SYNCHRONOUS[synchronous]
    with Transactions(config.database) as db:
        assert db.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == expected
        assert db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_store_connections_use_configured_synchronous(tmp_path: Path,
                                                            synchronous: str) -> None:
    config = make_config(tmp_path, database={"synchronous": synchronous})
    store = SqliteBackend(config.database)
    await store.open()
    try:
        def pragma(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA synchronous").fetchone()[0])
        assert read(store, pragma) == SYNCHRONOUS[synchronous]       # reader
        # the writer thread: with full, its syncer fsyncs the WAL apart (test_wal_sync.py)
        assert await write(store, pragma) == SYNCHRONOUS["normal"]
    finally:
        await store.close()


def test_busy_timeout_follows_config(tmp_path: Path) -> None:
    config = make_config(tmp_path, database={"busy_timeout": 1.5})
    with Transactions(config.database) as db:
        assert db.read(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0]) == 1500


# query plans ------------------------------------------------------------------------

PARAMS: dict[str, Any] = {
    "due_jobs_of_tenant_packed": ("acme", 1.0, 10),
    "job_get": ("job_x",),
    "job_get_for_tenant": ("job_x", "acme"),
    "tenant_by_key_hash": ("deadbeef",),
    "jobs_lease_expired": {"now": 1.0},
    "job_holding_key": ("acme", "key-1"),
    "job_finish_running": {"id": "job_x", "status": "succeeded", "result": None, "error": None,
                           "now": 1.0, "attempt": 1, "owner": "w"},
    "claim_plan": {"after": None, "limit": 10, "now": 1.0},
    "prune_jobs_batch": {"cutoff": 1.0, "batch": 500},
    "count_prunable_jobs": {"cutoff": 1.0},
    "jobs_finished_since": (1.0,),
    "job_list": {"tenant_id": None, "status": None, "type": None, "before": 10, "limit": 5},
    "deliveries_due_packed": {"now": 1.0, "limit": 10},
}


def plan(conn: sqlite3.Connection, name: str) -> list[str]:
    rows = conn.execute("EXPLAIN QUERY PLAN " + Q[name], PARAMS[name]).fetchall()
    return [r[3] for r in rows]


@pytest.fixture
def migrated(fresh: sqlite3.Connection) -> sqlite3.Connection:
    migrate(fresh)
    # Give the planner statistics like a busy database's, so plans are the real ones.
    fresh.execute("ANALYZE")
    return fresh


def test_due_jobs_of_tenant_uses_jobs_due(migrated: sqlite3.Connection) -> None:
    steps = plan(migrated, "due_jobs_of_tenant_packed")
    assert any("USING INDEX jobs_due" in s and "tenant_id=?" in s for s in steps), steps
    assert not any(s.startswith("SCAN jobs") for s in steps), steps
    assert not any("TEMP B-TREE" in s for s in steps), steps  # ORDER BY comes from the index


def test_retention_and_stats_find_finished_jobs_through_jobs_finished(
        migrated: sqlite3.Connection) -> None:
    """jobs_finished is partial on ``completed_at IS NOT NULL`` (migration 0005), which
    the queries' comparisons on completed_at imply."""
    for name in ("prune_jobs_batch", "count_prunable_jobs", "jobs_finished_since"):
        steps = plan(migrated, name)
        assert any("USING INDEX jobs_finished" in s and "completed_at" in s for s in steps), (
            name, steps)
        assert not any(s.startswith("SCAN jobs") for s in steps), (name, steps)


def test_job_get_uses_the_unique_id_index(migrated: sqlite3.Connection) -> None:
    for name in ("job_get", "job_get_for_tenant", "job_finish_running"):
        steps = plan(migrated, name)
        assert any("SEARCH jobs USING INDEX sqlite_autoindex_jobs_" in s and "(id=?)" in s
                   for s in steps), (name, steps)


def test_batched_finish_and_mark_seek_each_job(migrated: sqlite3.Connection) -> None:
    finish = migrated.execute("EXPLAIN QUERY PLAN " + _multi_row("jobs_finish_running_many", 3),
                              ["job_x", "succeeded", None, None, 1.0, 1] * 3 + ["w"]).fetchall()
    assert any("SEARCH jobs USING INDEX sqlite_autoindex_jobs_" in r[3] and "(id=?)" in r[3]
               for r in finish), finish
    assert not any(r[3].startswith("SCAN jobs") for r in finish), finish
    hooks = migrated.execute("EXPLAIN QUERY PLAN " + _multi_row("deliveries_insert_if_held", 3),
                             ["msg_x", "job_x", "t", "http://h/", b"{}", 1.0, 1, None] * 3 + ["w"]
                             ).fetchall()
    assert any("SEARCH jobs USING INDEX sqlite_autoindex_jobs_" in r[3] and "(id=?)" in r[3]
               for r in hooks), hooks
    assert not any(r[3].startswith("SCAN jobs") for r in hooks), hooks
    mark = migrated.execute("EXPLAIN QUERY PLAN " + Q["jobs_mark_running"], {
        "owner": "w", "expires": 1.0, "now": 1.0, "seqs": "[1, 2]"}).fetchall()
    assert any("SEARCH jobs USING INTEGER PRIMARY KEY" in r[3] for r in mark), mark


def test_tenant_by_key_hash_uses_an_index(migrated: sqlite3.Connection) -> None:
    steps = plan(migrated, "tenant_by_key_hash")
    assert any(s.startswith("SEARCH tenants USING") and "api_key_hash=?" in s
               for s in steps), steps
    assert not any(s.startswith("SCAN tenants") for s in steps), steps


def test_jobs_lease_expired_uses_jobs_running(migrated: sqlite3.Connection) -> None:
    steps = plan(migrated, "jobs_lease_expired")
    assert any("USING INDEX jobs_running" in s and "lease_expires_at<?" in s for s in steps), steps
    assert not any(s.startswith("SCAN jobs") for s in steps), steps


def test_the_holder_of_a_key_is_found_through_its_unique_index(
        migrated: sqlite3.Connection) -> None:
    steps = plan(migrated, "job_holding_key")
    assert any("SEARCH jobs USING INDEX jobs_idempotency (tenant_id=? AND idempotency_key=?)"
               in s for s in steps), steps


def test_the_dispatchers_claim_uses_the_due_index(migrated: sqlite3.Connection) -> None:
    assert "deliveries_due" in " ".join(plan(migrated, "deliveries_due_packed"))


def test_claim_plan_seeks_the_due_index(migrated: sqlite3.Connection) -> None:
    steps = plan(migrated, "claim_plan")
    assert any("SEARCH jobs USING INDEX jobs_due (tenant_id>?)" in s for s in steps), steps
    # the first tenant's due jobs, best first, from the index (no sort)
    assert any("SEARCH jobs USING INDEX jobs_due (tenant_id=?)" in s for s in steps), steps
    assert not any("TEMP B-TREE FOR ORDER BY" in s for s in steps), steps
    # running jobs are counted from jobs_running, never from a tenant's whole history
    assert "SCAN jobs USING INDEX jobs_running" in steps, steps
    assert not any("jobs_tenant_seq" in s for s in steps), steps
    assert not any(s.startswith("SCAN jobs") and "jobs_running" not in s for s in steps), steps


def test_job_list_pages_by_seq(migrated: sqlite3.Connection) -> None:
    steps = plan(migrated, "job_list")
    assert any("INTEGER PRIMARY KEY (rowid<?)" in s for s in steps), steps
    assert not any("TEMP B-TREE" in s for s in steps), steps


def test_batched_insert_checks_each_key_with_a_unique_index_seek(
        migrated: sqlite3.Connection) -> None:
    row = ["job_x", "acme", "noop", "{}", 0, 3, None, 1.0, 1.0, None, "k", b"h", 1.0, 1.0, "hash",
           None, None]
    steps = [r[3] for r in migrated.execute(
        "EXPLAIN QUERY PLAN " + _multi_row("jobs_insert_if_key_live", 2), row * 2).fetchall()]
    assert any(s.startswith("SEARCH t USING INDEX sqlite_autoindex_tenants_") for s in steps), steps
    assert not any(s.startswith("SCAN t") for s in steps), steps


def test_direct_dispatch_reads_seek_by_key(migrated: sqlite3.Connection) -> None:
    secret = migrated.execute("EXPLAIN QUERY PLAN " + Q["tenant_webhook_secret"], ["t"]).fetchall()
    assert any(r[3].startswith("SEARCH tenants USING INDEX sqlite_autoindex_tenants_")
               for r in secret), secret
    finished = migrated.execute("EXPLAIN QUERY PLAN " + Q["jobs_outcomes"],
                                ['["job_x"]']).fetchall()
    assert any("SEARCH jobs USING INDEX sqlite_autoindex_jobs_" in r[3]
               for r in finished), finished
    assert not any(r[3].startswith("SCAN jobs") for r in finished), finished
