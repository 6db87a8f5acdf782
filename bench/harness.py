"""Pieces the benchmarks share: a daemon in a temp dir, a tenant, wrk, a webhook receiver."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pgsql
from pgsql import Connection, Databases
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
JOBD = [sys.executable, "-m", "jobd.cli.main"]


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval_s)


class Daemon:
    """``jobd serve`` on a temp database with synchronous=full: a SQLite file in
    ``workdir``, or the PostgreSQL database ``database_url`` (which several daemons, the
    nodes, may share; ``env`` adds to each one's environment). Its config file and log in
    ``workdir`` are ``name``.toml and ``name``.log."""

    def __init__(self, workdir: Path, *, database_url: str | None = None, name: str = "jobd",
                 env: dict[str, str] | None = None, **overrides: dict[str, Any]) -> None:
        self.dir = workdir
        self.port = free_port()
        self.db_path = workdir / "jobd.db"
        self.database_url = database_url
        self.backend = "sqlite" if database_url is None else "postgres"
        self.env = env or {}
        self._pg: Connection | None = None
        database: dict[str, Any] = ({"path": str(self.db_path)} if database_url is None
                                    else {"url": database_url})
        sections: dict[str, dict[str, Any]] = {
            "server": {"host": "127.0.0.1", "port": self.port, "max_body_bytes": 262144},
            "database": {**database, "synchronous": "full"},
            "workers": {"concurrency": 256, "poll_interval": 0.5},
            "rate_limit": {"rate": 10_000_000, "burst": 10_000_000},
            "webhooks": {"allow_private_networks": True, "concurrency": 128},
            "logging": {"level": "warning"},
        }
        for section, values in overrides.items():
            sections.setdefault(section, {}).update(values)
        self.config = workdir / f"{name}.toml"
        self.log = workdir / f"{name}.log"
        self.config.write_text("".join(
            f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
            for section, values in sections.items()))
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> Any:
        out = subprocess.run([*JOBD, *args, "--config", str(self.config), "--json"],
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    def create_tenant(self, tenant_id: str = "bench") -> dict[str, str]:
        return dict(self.cli("tenants", "create", tenant_id, "--rate", "10000000",
                             "--burst", "10000000"))

    def start(self) -> Daemon:
        log = self.log.open("ab")
        self.proc = subprocess.Popen([*JOBD, "serve", "--config", str(self.config)],
                                     stdout=log, stderr=log, env={**os.environ, **self.env})
        wait_until(self._healthy, 30, "jobd to start")
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._pg is not None:
            self._pg.close()
            self._pg = None

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else float("nan")

    def writer(self) -> tuple[float, float, float, float, float]:
        """The writer's totals so far, from /metrics: committed transactions, the writes
        they carried, their seconds (BEGIN to COMMIT), and the WAL's fsyncs (made by the
        writer's syncer thread) and their seconds. All 0 on PostgreSQL (no writer)."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        found = {(s.name, s.labels.get("outcome")): s.value
                 for family in text_string_to_metric_families(text) for s in family.samples}
        if ("jobd_db_transactions_total", "committed") not in found:
            return (0.0, 0.0, 0.0, 0.0, 0.0)
        return (found[("jobd_db_transactions_total", "committed")],
                found[("jobd_db_writes_total", None)],
                found[("jobd_db_transaction_seconds_sum", None)],
                found.get(("jobd_db_wal_syncs_total", None), 0.0),
                found.get(("jobd_db_wal_sync_seconds_total", None), 0.0))

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (every label) on /metrics."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=30) as resp:
            text = resp.read().decode()
        return sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples if s.name == name)

    def query(self, sql: str, *args: Any) -> list[Any]:
        """Rows of ``sql`` (``?`` placeholders, SQL both databases speak)."""
        if self.database_url is not None:
            if self._pg is None:  # kept open: a PostgreSQL connection costs milliseconds
                self._pg = Connection(self.database_url)
            return self._pg.fetch(sql, *args)
        conn = sqlite3.connect(self.db_path, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


def group_commit(before: tuple[float, ...], after: tuple[float, ...]) -> dict[str, float]:
    """What the writer did between two :meth:`Daemon.writer` readings: writes a
    transaction (the group size), the mean transaction's milliseconds, and the mean
    fsync's milliseconds with how many transactions one fsync covered."""
    transactions, syncs = after[0] - before[0], after[3] - before[3]
    if not transactions:
        return {}
    figures = {"writes_per_tx": (after[1] - before[1]) / transactions,
               "tx_ms": (after[2] - before[2]) / transactions * 1000}
    if syncs:
        figures.update(sync_ms=(after[4] - before[4]) / syncs * 1000,
                       tx_per_sync=transactions / syncs)
    return figures


@contextmanager
def daemon(pg: Databases | None = None, **overrides: dict[str, Any]) -> Iterator[Daemon]:
    """A daemon (not started) on a fresh SQLite file, or with ``pg`` a fresh PostgreSQL
    database; both removed afterwards."""
    with nodes(1, pg, **overrides) as found:
        yield found[0]


@contextmanager
def nodes(count: int, pg: Databases | None, **overrides: dict[str, Any]) -> Iterator[list[Daemon]]:
    """``count`` daemons (not started) on one fresh database, each on its own port with
    its own node name (``JOBD_CLUSTER_NODE_NAME``: bench-1, bench-2, ...). More than one
    needs PostgreSQL."""
    if count > 1 and pg is None:
        raise ValueError("several nodes need PostgreSQL")
    workdir = Path(tempfile.mkdtemp(prefix="jobd-bench-"))
    url = pg.create() if pg is not None else None
    found: list[Daemon] = []
    try:
        for i in range(1, count + 1):
            found.append(Daemon(workdir, database_url=url, name="jobd" if count == 1 else f"jobd-{i}",
                                env={"JOBD_CLUSTER_NODE_NAME": f"bench-{i}"}, **overrides))
        yield found
    finally:
        for d in found:
            d.stop()
        if pg is not None and url is not None:
            pg.drop(url)
        shutil.rmtree(workdir, ignore_errors=True)


def wrk(url: str, *, script: str, env: dict[str, str], seconds: int = 10,
        connections: int = 64, threads: int = 2) -> dict[str, float]:
    """Run wrk with --latency; return req/s and p50/p99 in ms."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
           "-s", str(HERE / script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env},
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": _latency(out, "50%"), "p99_ms": _latency(out, "99%"),
            "non2xx": float(re.search(r"Non-2xx or 3xx responses: (\d+)", out).group(1))
            if "Non-2xx" in out else 0.0}


def _latency(out: str, pct: str) -> float:
    match = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)\b", out)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


class Receiver:
    """A webhook receiver on 127.0.0.1 that records arrival times by job id."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                job_id = json.loads(body)["jobId"]
                with receiver.lock:
                    receiver.arrivals.setdefault(job_id, time.time())
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def seed_jobs(d: Daemon, tenant_id: str, *, queued: int = 0, finished: int = 0,
              run_at: float | None = None) -> None:
    """Insert jobs straight into the daemon's database (on SQLite it must not be running;
    on PostgreSQL its schema must be in place)."""
    if d.database_url is not None:
        pgsql.seed_jobs(d.database_url, tenant_id, queued=queued, finished=finished,
                        run_at=run_at)
    else:
        _seed_sqlite(d.db_path, tenant_id, queued=queued, finished=finished, run_at=run_at)


def _seed_sqlite(db_path: Path, tenant_id: str, *, queued: int, finished: int,
                 run_at: float | None) -> None:
    from jobd.credentials import new_job_id
    from jobd.store.sqlite.connection import connect, migrate

    conn = connect(str(db_path), synchronous="off")
    migrate(conn)
    now = time.time()
    due = now if run_at is None else run_at
    sql = ("INSERT INTO jobs (id, tenant_id, type, payload, status, priority, attempts, max_attempts,"
           " run_at, next_run_at, created_at, started_at, completed_at, updated_at, result)"
           " VALUES (?, ?, 'noop', '{\"n\":1}', ?, 0, ?, 5, ?, ?, ?, ?, ?, ?, ?)")
    batch = 50_000
    for status, count in (("succeeded", finished), ("queued", queued)):
        for start in range(0, count, batch):
            rows = []
            for _ in range(min(batch, count - start)):
                if status == "queued":
                    rows.append((new_job_id(), tenant_id, status, 0, due, due, now, None, None, now,
                                 None))
                else:
                    rows.append((new_job_id(), tenant_id, status, 1, now - 60, None, now - 60,
                                 now - 59, now - 59, now - 59, '{"ok":true}'))
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
    conn.close()
