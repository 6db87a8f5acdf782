"""Fill a jobd database with many jobs, fast, for measuring operator commands.

Run: python bench/seed.py DB_PATH --finished 1000000 --queued 100000 --tenants 3

The file is migrated with jobd's own migrations and the tenants are created with
``jobd.store.sqlite.tenants.create_tenant``; the jobs are then written straight through
sqlite3 with ``executemany`` in large transactions (``synchronous = OFF`` while
seeding: a crash would only lose the benchmark's data). Finished jobs are spread
evenly over the last ``--age-days`` days (so with the default retention of 7 days
about half of them are prunable); ``--fatal`` of them are ``fatal`` with an attempt
history, the rest ``succeeded``. Queued jobs are the newest and due now.
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobd.credentials import new_job_id
from jobd.store.sqlite.connection import connect, migrate
from jobd.store.sqlite.tenants import create_tenant

CHUNK = 100_000  # rows per transaction
INSERT_JOB = """
INSERT INTO jobs (id, tenant_id, type, payload, status, priority, attempts, max_attempts,
                  run_at, next_run_at, result, last_error, errors, idempotency_key,
                  created_at, started_at, completed_at, updated_at)
VALUES (?, ?, ?, ?, ?, 0, ?, 5, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
PAYLOAD = orjson.dumps({"to": "user@example.com", "subject": "Hello", "body": "Welcome!"}).decode()
RESULT = orjson.dumps({"ok": True}).decode()


def job_id() -> str:
    return new_job_id()


def finished_rows(n: int, *, fatal: int, tenants: list[str], start: float, end: float,
                  types: list[str]) -> Iterator[tuple[object, ...]]:
    """``n`` finished jobs, oldest first; every ``n // fatal``-th one is fatal."""
    step = (end - start) / max(n, 1)
    fatal_every = n // fatal if fatal else 0
    for i in range(n):
        created = start + i * step
        completed = created + 0.5
        tenant = tenants[i % len(tenants)]
        if fatal_every and i % fatal_every == fatal_every - 1:
            errors = orjson.dumps([{"attempt": a, "at": created + a * 0.1, "error": "boom"}
                                   for a in range(1, 6)]).decode()
            yield (job_id(), tenant, types[i % len(types)], PAYLOAD, "fatal", 5, created, None,
                   None, "boom", errors, f"k{i}", created, completed - 0.1, completed, completed)
        else:
            yield (job_id(), tenant, types[i % len(types)], PAYLOAD, "succeeded", 1, created, None,
                   RESULT, None, None, f"k{i}", created, completed - 0.1, completed, completed)


def queued_rows(n: int, *, tenants: list[str], now: float,
                types: list[str]) -> Iterator[tuple[object, ...]]:
    for i in range(n):
        created = now - (n - i) * 0.001
        yield (job_id(), tenants[i % len(tenants)], types[i % len(types)], PAYLOAD, "queued", 0,
               created, created, None, None, None, f"q{i}", created, None, None, created)


def write_chunks(conn: sqlite3.Connection, sql: str, rows: Iterator[tuple[object, ...]],
                 label: str) -> int:
    total = 0
    while chunk := list(itertools.islice(rows, CHUNK)):
        conn.execute("BEGIN")
        conn.executemany(sql, chunk)
        conn.execute("COMMIT")
        total += len(chunk)
        print(f"\r{label}: {total:,}", end="", file=sys.stderr, flush=True)
    if total:
        print(file=sys.stderr)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db_path", metavar="DB_PATH")
    parser.add_argument("--finished", type=int, default=1_000_000, help="finished jobs")
    parser.add_argument("--fatal", type=int, default=20, help="how many finished jobs are fatal")
    parser.add_argument("--queued", type=int, default=100_000, help="queued jobs, due now")
    parser.add_argument("--tenants", type=int, default=3, help="tenants t0, t1, ...")
    parser.add_argument("--age-days", type=float, default=14.0,
                        help="finished jobs spread over this many days back")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    now = time.time()
    conn = connect(args.db_path, synchronous="off")
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: the job-id index stays in memory
    migrate(conn)
    tenants = [f"t{i}" for i in range(args.tenants)]
    conn.execute("BEGIN IMMEDIATE")
    for tenant in tenants:
        create_tenant(conn, tenant, rate=1000, burst=1000, max_concurrency=None, now=now)
    conn.execute("COMMIT")
    types = ["noop", "email", "http"]
    n = write_chunks(conn, INSERT_JOB, finished_rows(
        args.finished, fatal=args.fatal, tenants=tenants, start=now - args.age_days * 86_400,
        end=now - 60, types=types), "finished jobs")
    n += write_chunks(conn, INSERT_JOB, queued_rows(args.queued, tenants=tenants, now=now,
                                                    types=types), "queued jobs")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    elapsed = time.perf_counter() - started
    print(f"{n:,} jobs for {len(tenants)} tenant(s) in {elapsed:.1f}s ({n / elapsed:,.0f} jobs/s)"
          f" -> {args.db_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
