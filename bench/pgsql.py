"""PostgreSQL for the benchmarks: a throwaway server, fresh databases, a connection that
synchronous code can use, the server's CPU time, and queued or finished jobs written
straight into a database.

The server is the tests' (tests/pg.py: Debian's server binaries, a temp dir, a free port
on 127.0.0.1, fsync on, settings as initdb left them); ``JOBD_TEST_PG_URL`` uses a given
server instead (a role that may CREATE DATABASE).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from tests.pg import (
    TEST_URL_ENV,
    _run_as_server_user,
    admin,
    find_bin_dir,
    start_server,
    with_database,
)

_TICK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(settings: list[str] | None = None) -> Iterator[tuple[str, Path | None]]:
    """The server's URL and data directory (None: a given server); ``settings``
    (``name=value``) are set with ALTER SYSTEM and the server restarted."""
    given = os.environ.get(TEST_URL_ENV)
    if given:
        yield given, None
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        sys.exit("no PostgreSQL server binaries: apt-get install postgresql, or set "
                 f"{TEST_URL_ENV}")
    started = start_server(bin_dir)
    try:
        if settings:
            admin(started.url, *(f"ALTER SYSTEM SET {name} = '{value}'"
                                 for name, value in (s.split("=", 1) for s in settings)))
            _run_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(started.data), "-w",
                                 "-l", str(started.root / "server.log"), "restart"])
        print(f"PostgreSQL {started.version} on 127.0.0.1:{started.port} (started in "
              f"{started.started_in_s:.2f} s, data in {started.root}), "
              f"settings: {settings or 'as initdb left them'}", file=sys.stderr, flush=True)
        yield started.url, started.data
    finally:
        started.stop()


def server_cpu_seconds(data: Path | None) -> float:
    """CPU seconds the server used so far: the postmaster, its live children, and the
    children it reaped (cutime/cstime). 0 for a given server (not on this machine)."""
    if data is None:
        return 0.0
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICK


@dataclass
class Databases:
    """Fresh databases on one server, one per daemon (or per group of nodes)."""

    url: str                 # the server, as a role that may create databases
    data: Path | None        # its data directory when it runs here

    def __post_init__(self) -> None:
        self._names = itertools.count(1)

    def create(self) -> str:
        name = f"bench_{os.getpid()}_{next(self._names)}"
        admin(self.url, f"CREATE DATABASE {name} TEMPLATE template0")
        return with_database(self.url, name)

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        admin(self.url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def cpu_seconds(self) -> float:
        return server_cpu_seconds(self.data)


class Connection:
    """One asyncpg connection for synchronous code: its own event loop on a thread.
    Statements may use SQLite's ``?`` placeholders (the bench's queries are written once
    for both backends); they become ``$1``, ``$2``, ..."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._conn: asyncpg.Connection = self._run(asyncpg.connect(url, timeout=10))

    def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        numbered = iter(itertools.count(1))
        sql = re.sub(r"\?", lambda _: f"${next(numbered)}", sql)
        return [tuple(r) for r in self._run(self._conn.fetch(sql, *args))]

    def execute(self, sql: str, *args: Any) -> None:
        self._run(self._conn.execute(sql, *args))

    def commit_floor(self, samples: int) -> dict[str, float]:
        """One single-row commit (synchronous_commit on, as the daemon's), one every 5 ms
        as an idle daemon's commits come, and back to back: p50 ms, seen from here."""
        async def measure() -> dict[str, float]:
            await self._conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (x int)")
            figures = {}
            for name, gap_s in (("commit_idle_p50_ms", 0.005), ("commit_busy_p50_ms", 0.0)):
                took = []
                for _ in range(samples):
                    t0 = time.perf_counter()
                    await self._conn.execute("INSERT INTO bench_floor VALUES (1)")
                    took.append((time.perf_counter() - t0) * 1000)
                    if gap_s:
                        await asyncio.sleep(gap_s)
                figures[name] = sorted(took)[len(took) // 2]
            await self._conn.execute("DROP TABLE bench_floor")
            return figures
        return self._run(measure())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._conn.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(600)


SEED_COLUMNS = ("id", "tenant_id", "type", "payload", "status", "priority", "attempts",
                "max_attempts", "run_at", "next_run_at", "created_at", "started_at",
                "completed_at", "updated_at", "result")
SEED_CHUNK = 100_000


def seed_jobs(url: str, tenant_id: str, *, queued: int = 0, finished: int = 0,
              run_at: float | None = None) -> None:
    """The rows harness.seed_jobs writes on SQLite, by COPY (the daemon's schema must be
    in place: ``jobd migrate``), then ANALYZE."""
    from jobd.credentials import new_job_id

    async def seed() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            now = time.time()
            due = now if run_at is None else run_at
            for status, count in (("succeeded", finished), ("queued", queued)):
                for start in range(0, count, SEED_CHUNK):
                    if status == "queued":
                        rows = [(new_job_id(), tenant_id, "noop", '{"n":1}', status, 0, 0, 5, due,
                                 due, now, None, None, now, None)
                                for _ in range(min(SEED_CHUNK, count - start))]
                    else:
                        rows = [(new_job_id(), tenant_id, "noop", '{"n":1}', status, 0, 1, 5,
                                 now - 60, None, now - 60, now - 59, now - 59, now - 59,
                                 '{"ok":true}') for _ in range(min(SEED_CHUNK, count - start))]
                    await conn.copy_records_to_table("jobs", records=rows, columns=SEED_COLUMNS)
            await conn.execute("ANALYZE jobs")
        finally:
            await conn.close()
    asyncio.run(seed())
