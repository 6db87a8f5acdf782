"""The PostgreSQL backend alone, without HTTP or handlers: figures printed, not asserted.

    .venv/bin/python bench/pg_store.py [--only insert,drain,steps,million] [--million 1000000]

Starts a throwaway PostgreSQL as the tests do (tests/pg.py: Debian's server binaries, a
temp dir, fsync on; ``JOBD_TEST_PG_URL`` uses a given server instead), a fresh database
per phase, and drives :class:`PostgresBackend` with uvloop (as ``jobd serve`` does):

* insert: ``insert_job`` from ``--callers`` concurrent callers (each awaits its job
  before the next, like an HTTP client on a kept-alive connection), jobs/s;
* drain: ``--jobs`` queued noop jobs claimed (limit ``--claim-limit``) and finished
  (batched), jobs/s from the first claim to the last finish;
* steps: ``--jobs`` queued noop jobs, one claim (``--claim-limit``) then its finishes
  (one batch) at a time, nothing else running: the server's CPU a job for a claim and
  for a finish, read from its backends' /proc/<pid>/schedstat (nanoseconds);
* million: the drain of ``--million`` queued jobs, the rate per ``--window`` seconds,
  and the first minute's rate against the last minute's (autovacuum has to keep up
  with the dead rows of every claim and finish).

Queued jobs for the drains are written by one INSERT ... SELECT (the same rows
``insert_job`` writes), not through the backend, so that setting up a million jobs
takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from pgsql import server, server_cpu_seconds

from jobd.config import DatabaseConfig
from jobd.models import JobStatus, NewJob
from jobd.store.backend import Rotation
from jobd.store.postgres.backend import PostgresBackend
from tests.pg import admin, with_database

TENANT = "bench"
NOW = 1_750_000_000.0
LEASE_S = 300.0


class CpuMeter:
    """CPU seconds used by this process and by the server, between start and per_job."""

    def __init__(self, data: Path | None) -> None:
        self._data = data
        self._began = (0.0, 0.0)

    def start(self) -> CpuMeter:
        self._began = (time.process_time(), server_cpu_seconds(self._data))
        return self

    def per_job(self, jobs: int) -> dict[str, float]:
        """Microseconds of CPU a job took, in this process and in the server."""
        python = (time.process_time() - self._began[0]) / jobs * 1e6
        figures = {"python_cpu_us_per_job": round(python, 1)}
        if self._data is not None:
            figures["server_cpu_us_per_job"] = round((server_cpu_seconds(self._data)
                                                      - self._began[1]) / jobs * 1e6, 1)
        return figures


@contextlib.asynccontextmanager
async def fresh_backend(url: str, name: str, pool_size: int) -> AsyncIterator[PostgresBackend]:
    admin(url, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name} TEMPLATE template0")
    backend = PostgresBackend(DatabaseConfig(url=with_database(url, name), pool_size=pool_size))
    await backend.open(daemon=True)
    await backend.create_tenant(TENANT, rate=1e9, burst=10**9, max_concurrency=None, now=NOW)
    try:
        yield backend
    finally:
        await backend.close()
        admin(url, f"DROP DATABASE IF EXISTS {name}")


async def seed_queued(url: str, n: int) -> float:
    """``n`` queued noop jobs, as insert_job writes them, in one statement."""
    began = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO jobs (id, tenant_id, type, payload, status, priority, attempts, "
            "max_attempts, run_at, next_run_at, idempotency_key, body_hash, created_at, "
            "updated_at) "
            "SELECT 'job_' || lpad(i::text, 22, '0'), $1, 'noop', '{\"n\": ' || i || '}', "
            "'queued', 0, 0, 3, $2, $2, 'k' || i, decode(md5(i::text), 'hex'), $2, $2 "
            "FROM generate_series(1, $3) AS i", TENANT, NOW, n)
        await conn.execute("ANALYZE jobs")
    finally:
        await conn.close()
    return time.perf_counter() - began


# phases -------------------------------------------------------------------------------


async def insert_phase(url: str, args: argparse.Namespace, meter: CpuMeter) -> dict[str, Any]:
    async with fresh_backend(url, "bench_insert", args.pool_size) as backend:
        per_caller = args.inserts // args.callers
        payload = '{"to": "user@example.com", "subject": "hello", "n": 1}'

        async def caller(c: int) -> None:
            for i in range(per_caller):
                job = NewJob(tenant_id=TENANT, type="noop", payload=payload, priority=0,
                             max_attempts=3, timeout_seconds=None, run_at=NOW + 86400,
                             webhook_url=None, idempotency_key=f"c{c}-{i}")
                await backend.insert_job(job, body_hash=b"x" * 32, now=NOW,
                                         idempotency_ttl_s=86400, api_key_hash=None)

        began = time.perf_counter()
        meter.start()
        await asyncio.gather(*(caller(c) for c in range(args.callers)))
        elapsed = time.perf_counter() - began
        batches = backend._inserts.batches
        total = per_caller * args.callers
        return {"inserts_per_s": round(total / elapsed), "jobs": total,
                "callers": args.callers, "jobs_per_batch": round(total / max(batches, 1), 1),
                **meter.per_job(total)}


async def drain(backend: PostgresBackend, *, limit: int, in_flight: int,
                window_s: float | None = None) -> tuple[int, float, list[tuple[float, int]]]:
    """Claim and finish until the queue is empty: (jobs, seconds, [(t, done) per window]).

    One claim at a time (one rotation, as one worker pool), its jobs finished at once (one
    batch) while the next claim runs; at most ``in_flight`` claims' finishes outstanding."""
    rotation = Rotation()
    pending: set[asyncio.Future[Any]] = set()
    done = 0
    began = time.perf_counter()
    marks: list[tuple[float, int]] = []
    next_mark = window_s
    while True:
        round_ = await backend.claim_jobs(now=NOW + 1, limit=limit, owner="bench",
                                          lease_s=LEASE_S, rotation=rotation)
        if round_.jobs:
            finishes = [backend.finish_job(job, owner="bench", status=JobStatus.SUCCEEDED,
                                           now=NOW + 2, result_json="{}")
                        for job in round_.jobs]
            batch = asyncio.ensure_future(asyncio.gather(*finishes))
            pending.add(batch)
            batch.add_done_callback(pending.discard)
            done += len(round_.jobs)
        elif round_.queue_was_empty:
            break
        while len(pending) >= in_flight:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if next_mark is not None and time.perf_counter() - began >= next_mark:
            marks.append((time.perf_counter() - began, done))
            next_mark += window_s or 0
    if pending:
        await asyncio.gather(*pending)
    elapsed = time.perf_counter() - began
    marks.append((elapsed, done))
    return done, elapsed, marks


async def drain_phase(url: str, args: argparse.Namespace, meter: CpuMeter) -> dict[str, Any]:
    async with fresh_backend(url, "bench_drain", args.pool_size) as backend:
        seeded_in = await seed_queued(with_database(url, "bench_drain"), args.jobs)
        meter.start()
        done, elapsed, _ = await drain(backend, limit=args.claim_limit, in_flight=args.in_flight)
        assert done == args.jobs, (done, args.jobs)
        return {"drain_jobs_per_s": round(done / elapsed), "jobs": done,
                "claim_limit": args.claim_limit, **meter.per_job(done),
                "seeded_in_s": round(seeded_in, 1)}


async def million_phase(url: str, args: argparse.Namespace, meter: CpuMeter) -> dict[str, Any]:
    async with fresh_backend(url, "bench_million", args.pool_size) as backend:
        seeded_in = await seed_queued(with_database(url, "bench_million"), args.million)
        meter.start()
        done, elapsed, marks = await drain(backend, limit=args.claim_limit,
                                           in_flight=args.in_flight, window_s=args.window)
        assert done == args.million, (done, args.million)
        rates = []
        previous = (0.0, 0)
        for t, n in marks:
            rates.append(round((n - previous[1]) / (t - previous[0])))
            previous = (t, n)
        first = _rate_between(marks, 0, 60)
        last = _rate_between(marks, elapsed - 60, elapsed)
        vacuums = await _vacuum_counts(with_database(url, "bench_million"))
        return {"million_jobs_per_s": round(done / elapsed), "seconds": round(elapsed, 1),
                "first_minute_per_s": round(first), "last_minute_per_s": round(last),
                "last_over_first": round(last / first, 2) if first else None,
                f"per_{args.window:g}s": rates, "autovacuums": vacuums, **meter.per_job(done),
                "seeded_in_s": round(seeded_in, 1)}


def _rate_between(marks: list[tuple[float, int]], start: float, end: float) -> float:
    """Jobs/s between two times, from the cumulative marks (interpolated)."""
    def done_at(t: float) -> float:
        previous = (0.0, 0)
        for mt, n in marks:
            if mt >= t:
                span = mt - previous[0]
                return previous[1] + (n - previous[1]) * ((t - previous[0]) / span if span else 1)
            previous = (mt, n)
        return float(marks[-1][1])
    start = max(0.0, start)
    return (done_at(end) - done_at(start)) / (end - start) if end > start else 0.0


async def _vacuum_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        found = await conn.fetch("SELECT relname, autovacuum_count, autoanalyze_count "
                                 "FROM pg_stat_user_tables WHERE relname IN ('jobs', 'deliveries')")
        return {f"{r['relname']}_autovacuum": r["autovacuum_count"] for r in found}
    finally:
        await conn.close()


async def steps_phase(url: str, args: argparse.Namespace, meter: CpuMeter) -> dict[str, Any]:
    async with fresh_backend(url, "bench_steps", args.pool_size) as backend:
        database = with_database(url, "bench_steps")
        await seed_queued(database, args.jobs)
        conn = await asyncpg.connect(database)
        try:
            pids = [r[0] for r in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'jobd'")]
        finally:
            await conn.close()

        def server_s() -> float:
            return sum(int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
                       for pid in pids) / 1e9
        rotation, claimed, finished, done = Rotation(), 0.0, 0.0, 0
        while True:
            began = server_s()
            round_ = await backend.claim_jobs(now=NOW + 1, limit=args.claim_limit, owner="bench",
                                              lease_s=LEASE_S, rotation=rotation)
            claimed += server_s() - began
            if not round_.jobs:
                break
            began = server_s()
            await asyncio.gather(*(backend.finish_job(job, owner="bench",
                                                      status=JobStatus.SUCCEEDED, now=NOW + 2,
                                                      result_json="{}")
                                   for job in round_.jobs))
            finished += server_s() - began
            done += len(round_.jobs)
        return {"claim_server_cpu_us_per_job": round(claimed / done * 1e6, 1),
                "finish_server_cpu_us_per_job": round(finished / done * 1e6, 1), "jobs": done}


PHASES = {"insert": insert_phase, "drain": drain_phase, "steps": steps_phase,
          "million": million_phase}


async def main(args: argparse.Namespace) -> None:
    with server(args.server_setting) as (url, data):
        for name in args.only.split(","):
            began = time.perf_counter()
            figures = await PHASES[name](url, args, CpuMeter(data))
            print(f"{name}: {figures}  ({time.perf_counter() - began:.0f} s)", flush=True)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="insert,drain,steps,million")
    p.add_argument("--pool-size", type=int, default=10)
    p.add_argument("--callers", type=int, default=64)
    p.add_argument("--inserts", type=int, default=100_000)
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--million", type=int, default=1_000_000)
    p.add_argument("--claim-limit", type=int, default=256)
    p.add_argument("--in-flight", type=int, default=8,
                   help="claims whose finishes may be outstanding at once")
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--server-setting", action="append", metavar="NAME=VALUE",
                   help="e.g. shared_buffers=1GB (repeatable; ALTER SYSTEM, then a restart)")
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse()
    try:
        import uvloop
        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(main(arguments))
