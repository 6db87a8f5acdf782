"""``make bench``: jobd's throughput and latency next to the ceiling, printed as a table.

Every scenario starts a fresh daemon on a temp database with synchronous = "full": a
SQLite file, or with ``--backend postgres`` a fresh database on a throwaway PostgreSQL
server (``--backend sqlite,postgres``: both, side by side). Figures are printed, not
asserted. Usage: python bench/run.py [--runs 3] [--only create,drain] [--backend postgres]
[--nodes 1,2,3]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import importlib.util
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgsql
from harness import (
    HERE,
    cpu_seconds,
    daemon,
    free_port,
    group_commit,
    nodes,
    percentile,
    seed_jobs,
    wait_until,
    wrk,
)
from pgsql import Databases

Row = tuple[str, str, str]


def post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def background(script: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / script), str(port)])

    def up() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True
    wait_until(up, 20, script)
    return proc, port


def bench_create(pg: Databases | None, seconds: int, *, run_at: str = "",
                 concurrency: int | None = None) -> dict[str, float]:
    """POST /jobs under wrk; with ``run_at`` in the future the workers stay idle, which
    measures the API alone (the jobs are still committed before each 201). With
    ``concurrency`` the daemon's worker pool has that size instead of the bench's 256
    (the spec's default is 16: those workers fall behind, and the queue grows).

    The hello ceiling runs just before and just after jobd, and the ratio is to their
    mean: this VM's speed drifts within minutes, and a ceiling taken on one side only
    moves the ratio with that drift. On PostgreSQL the server's CPU a request is given
    beside jobd's."""
    before = bench_hello(seconds)
    overrides = {} if concurrency is None else {"workers": {"concurrency": concurrency}}
    with daemon(pg, **overrides) as d:
        tenant = d.create_tenant()
        d.start()
        env = {"JOBD_API_KEY": tenant["apiKey"], "JOBD_TENANT": tenant["tenantId"],
               "JOBD_RUN_AT": run_at}
        assert d.proc is not None
        cpu0, writer0 = cpu_seconds(d.proc.pid), d.writer()
        server0 = pg.cpu_seconds() if pg else 0.0
        jobd = wrk(d.base + "/jobs", script="post_jobs.lua", env=env, seconds=seconds)
        jobd_cpu, writer = cpu_seconds(d.proc.pid) - cpu0, group_commit(writer0, d.writer())
        server_cpu = pg.cpu_seconds() - server0 if pg else 0.0
        created = d.query("SELECT count(*) FROM jobs")[0][0]
        ran = d.query("SELECT count(*) FROM jobs WHERE status = 'succeeded'")[0][0]
    after = bench_hello(seconds)
    hello_rps = (before["rps"] + after["rps"]) / 2
    if pg is not None:
        writer["server_cpu_us_per_req"] = server_cpu / (jobd["rps"] * seconds) * 1e6
    return {"rps": jobd["rps"], "p50_ms": jobd["p50_ms"], "p99_ms": jobd["p99_ms"],
            "non2xx": jobd["non2xx"], "hello_rps": hello_rps,
            "hello_before_rps": before["rps"], "hello_after_rps": after["rps"],
            "ratio": jobd["rps"] / hello_rps,
            "rows": created, "succeeded_meanwhile": ran,
            # CPU time per request (all threads): steadier than req/s on a noisy VM
            "cpu_us_per_req": jobd_cpu / (jobd["rps"] * seconds) * 1e6,
            "hello_cpu_us_per_req": (before["cpu_us_per_req"] + after["cpu_us_per_req"]) / 2,
            **writer}


def bench_hello(seconds: int) -> dict[str, float]:
    """The ceiling: the same wrk load against hello.py (parse the body, answer 201)."""
    proc, port = background("hello.py")
    try:
        cpu0 = cpu_seconds(proc.pid)
        hello = wrk(f"http://127.0.0.1:{port}/jobs", script="post_jobs.lua",
                    env={"JOBD_API_KEY": "x", "JOBD_TENANT": "bench"}, seconds=seconds)
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait()
    return {"rps": hello["rps"], "cpu_us_per_req": cpu / (hello["rps"] * seconds) * 1e6}


def submit(base: str, total: int, *, env: dict[str, str], done: Callable[[], bool],
           ports: list[int] | None = None) -> None:
    """At least ``total`` POST /jobs from wrk (submit_n.lua: 2 threads, 64 connections,
    each thread stops at its share of 201s) while the daemon runs them; returns once
    ``done()``. wrk, not a Python client: the load generator shares the two cores.
    With ``ports`` (several nodes), one thread per node (at least two), each thread's
    connections to its node in turn: every node gets an equal share."""
    threads = max(2, len(ports or []))
    spread = {"JOBD_PORTS": ",".join(map(str, ports))} if ports else {}
    proc = subprocess.Popen(
        ["wrk", f"-t{threads}", "-c64", "-d600s", "-s", str(HERE / "submit_n.lua"), base],
        env={**os.environ, **env, **spread, "JOBD_COUNT": str(total),
             "JOBD_THREADS": str(threads)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(done, 300, "all jobs to finish", interval_s=0.1)
    finally:
        proc.send_signal(signal.SIGINT)  # wrk sleeps out -d otherwise
        _, err = proc.communicate(timeout=30)
    if b"unexpected" in err:
        raise RuntimeError(err.decode(errors="replace"))


def drain_rate(d: Any, queued: int, since: float, timeout_s: float = 300) -> float:
    """Jobs/s from the first start to the last success among the jobs started after ``since``."""
    wait_until(lambda: idle(d) and d.query("SELECT count(*) FROM jobs WHERE status = 'succeeded' "
                                           "AND started_at >= ?", since)[0][0] >= queued,
               timeout_s, "the drain", interval_s=0.2)
    first, last = d.query("SELECT min(started_at), max(completed_at) FROM jobs "
                          "WHERE status = 'succeeded' AND started_at >= ?", since)[0]
    return queued / (last - first)


def idle(d: Any) -> bool:
    """No job waiting or running. On PostgreSQL asked before counting: the count reads
    the whole table, in the server, on the two cores the daemon runs on (on SQLite the
    count runs in this process, as it always did: always True)."""
    return d.backend == "sqlite" or not d.query(
        "SELECT 1 FROM jobs WHERE status IN ('queued', 'running', 'retry') LIMIT 1")


def bench_drain(pg: Databases | None, total: int) -> dict[str, float]:
    """The drain's jobs/s, and the CPU a job took in jobd (its start included) and, on
    PostgreSQL, in the server."""
    with daemon(pg) as d:
        tenant = d.create_tenant()
        seed_jobs(d, tenant["tenantId"], queued=total)
        since = time.time()
        server0 = pg.cpu_seconds() if pg else 0.0
        d.start()
        rate = drain_rate(d, total, since)
        assert d.proc is not None
        cpu = {"jobd_cpu_us_per_job": cpu_seconds(d.proc.pid) / total * 1e6}
        if pg:
            cpu["server_cpu_us_per_job"] = (pg.cpu_seconds() - server0) / total * 1e6
        return {"jobs_per_s": rate, **cpu}


def bench_end_to_end(pg: Databases | None, total: int, *, webhooks: bool) -> dict[str, float]:
    receiver, port = background("receiver.py") if webhooks else (None, 0)
    try:
        with daemon(pg) as d:
            tenant = d.create_tenant()
            d.start()
            hook = f"http://127.0.0.1:{port}/hook" if webhooks else ""
            submit(d.base, total, env={
                "JOBD_API_KEY": tenant["apiKey"], "JOBD_TENANT": tenant["tenantId"],
                "JOBD_WEBHOOK_URL": hook}, done=lambda: idle(d) and d.query(
                    "SELECT count(*) FROM jobs WHERE status = 'succeeded'")[0][0] >= total)
            total = wait_until(lambda: d.query(  # every job created, in flight ones too
                "SELECT count(*) FROM jobs HAVING count(*) = "
                "sum(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END)"),
                60, "the last jobs")[0][0]
            first_created, last_done = d.query(
                "SELECT min(created_at), max(completed_at) FROM jobs")[0]
            result = {"jobs_per_s": total / (last_done - first_created), "jobs": total}
            if webhooks:
                wait_until(lambda: d.query("SELECT count(*) FROM deliveries WHERE status = 'succeeded'"
                                           )[0][0] >= total, 300, "all webhooks", interval_s=0.1)
                first_done, last_sent = d.query(
                    "SELECT min(j.completed_at), max(d.delivered_at) FROM deliveries d "
                    "JOIN jobs j ON j.id = d.job_id")[0]
                result["deliveries_per_s"] = total / (last_sent - first_done)
                result["end_to_end_with_webhooks_per_s"] = total / (last_sent - first_created)
            return result
    finally:
        if receiver:
            receiver.terminate()
            receiver.wait()


def bench_latency(pg: Databases | None, samples: int) -> dict[str, float]:
    receiver, port = background("receiver.py")
    floor: dict[str, float] = {}
    try:
        with daemon(pg, workers={"poll_interval": 5.0}) as d:
            tenant = d.create_tenant()
            d.start()
            headers = {"Authorization": f"Bearer {tenant['apiKey']}",
                       "Content-Type": "application/json"}
            api = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)  # kept alive
            hook = f"http://127.0.0.1:{port}/hook"
            submitted: dict[str, float] = {}
            answered: list[float] = []  # the 201's round trip, for comparison
            writer0 = d.writer()
            for i in range(samples):
                # An http job: its request reaching the receiver is the job's start, seen
                # from outside (the database's started_at is when it was handed a worker).
                body = json.dumps({"tenantId": tenant["tenantId"], "type": "http",
                                   "webhookUrl": hook,
                                   "payload": {"url": f"http://127.0.0.1:{port}/start/{i}"}})
                t0 = time.time()
                api.request("POST", "/jobs", body, {**headers, "Idempotency-Key": f"lat-{i}"})
                job = json.loads(api.getresponse().read())
                answered.append((time.time() - t0) * 1000)
                submitted[job["jobId"]] = t0
                wait_until(lambda jid=job["jobId"]: d.query(
                    "SELECT 1 FROM deliveries WHERE job_id = ? AND status = 'succeeded'", jid),
                    10, "one job", interval_s=0.0005)
            writer = group_commit(writer0, d.writer())
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/arrivals") as resp:
                arrivals = json.loads(resp.read())
            if pg is not None:  # the server's commit, from a connection like the daemon's
                assert d._pg is not None
                floor = d._pg.commit_floor(samples)
    finally:
        receiver.terminate()
        receiver.wait()
    start_ms = [(arrivals[f"start:{i}"] - t0) * 1000
                for i, t0 in enumerate(submitted.values()) if f"start:{i}" in arrivals]
    hook_ms = [(arrivals[job_id] - t0) * 1000 for job_id, t0 in submitted.items() if job_id in arrivals]
    return {"created_p50_ms": percentile(answered, 50),
            "start_p50_ms": percentile(start_ms, 50), "start_p99_ms": percentile(start_ms, 99),
            "webhook_p50_ms": percentile(hook_ms, 50), "webhook_p99_ms": percentile(hook_ms, 99),
            "tx_ms": writer.get("tx_ms", float("nan")),
            "sync_ms": writer.get("sync_ms", float("nan")),
            **(floor if pg is not None else commit_floor(samples))}


def commit_floor(samples: int) -> dict[str, float]:
    """The disk's floor under those latencies: one single-row commit (WAL, synchronous=FULL,
    as the daemon's) on a temp file beside the daemon's, one every 5 ms as an idle
    daemon's commits come, and back to back. A job cannot start before its commit."""
    workdir = Path(tempfile.mkdtemp(prefix="jobd-bench-floor-"))
    conn = sqlite3.connect(workdir / "floor.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (x)")
        figures = {}
        for name, gap_s in (("commit_idle_p50_ms", 0.005), ("commit_busy_p50_ms", 0.0)):
            took = []
            for _ in range(samples):
                t0 = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t VALUES (1)")
                conn.execute("COMMIT")
                took.append((time.perf_counter() - t0) * 1000)
                if gap_s:
                    time.sleep(gap_s)
            figures[name] = percentile(took, 50)
        return figures
    finally:
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)


def bench_scale(pg: Databases | None, finished: int, queued: int,
                seconds: int) -> dict[str, float]:
    with daemon(pg) as d:
        tenant = d.create_tenant()
        seed_jobs(d, tenant["tenantId"], finished=finished, queued=queued)
        since = time.time()
        d.start()
        drain = drain_rate(d, queued, since)
        env = {"JOBD_API_KEY": tenant["apiKey"], "JOBD_TENANT": tenant["tenantId"]}
        create = wrk(d.base + "/jobs", script="post_jobs.lua", env=env, seconds=seconds)
        wait_until(lambda: not d.query("SELECT 1 FROM jobs WHERE status IN ('queued', 'running') "
                                       "LIMIT 1"), 120, "the created jobs to run", interval_s=0.2)
        ids_file = d.dir / "ids.txt"
        ids = d.query("SELECT id FROM jobs ORDER BY random() LIMIT 10000")
        ids_file.write_text("\n".join(r[0] for r in ids) + "\n")
        get = wrk(d.base + "/jobs/x", script="get_jobs.lua",
                  env={**env, "JOBD_IDS_FILE": str(ids_file)}, seconds=seconds)
        return {"drain_jobs_per_s": drain, "create_rps": create["rps"], "get_p50_ms": get["p50_ms"],
                "get_p99_ms": get["p99_ms"], "get_rps": get["rps"], "peak_rss_mb": d.peak_rss_mb()}


def bench_million(pg: Databases | None, total: int, window_s: float = 10.0) -> dict[str, float]:
    """The drain of ``total`` queued noop jobs seeded before the start (dead rows pile
    up as fast as jobs are claimed and finished: vacuum has to keep up): jobs/s overall,
    in the first and the last minute, and per ``window_s`` (printed as they are)."""
    with daemon(pg) as d:
        tenant = d.create_tenant()
        seed_jobs(d, tenant["tenantId"], queued=total)
        since = time.time()
        d.start()
        wait_until(lambda: not d.query("SELECT 1 FROM jobs WHERE status IN "
                                       "('queued', 'running', 'retry') LIMIT 1"),
                   3600, "the drain", interval_s=1.0)
        first, last, done = d.query("SELECT min(started_at), max(completed_at), count(*) "
                                    "FROM jobs WHERE status = 'succeeded' AND started_at >= ?",
                                    since)[0]

        def finished_between(start: float, end: float) -> int:
            return int(d.query("SELECT count(*) FROM jobs WHERE completed_at >= ? "
                               "AND completed_at < ?", start, end)[0][0])
        windows = [finished_between(t, t + window_s) / window_s
                   for t in frange(first, last, window_s)]
        first_minute = finished_between(first, first + 60) / min(60.0, last - first)
        last_minute = finished_between(last - 60, last + 1) / min(60.0, last - first)
        autovacuums = (d.query("SELECT autovacuum_count FROM pg_stat_user_tables "
                               "WHERE relname = 'jobs'")[0][0] if pg else float("nan"))
    print(f"million drain ({d.backend}): {done:,} jobs in {last - first:.0f} s; jobs/s per "
          f"{window_s:g} s: " + " ".join(f"{w:,.0f}" for w in windows), file=sys.stderr)
    return {"jobs_per_s": done / (last - first), "seconds": last - first,
            "first_minute_per_s": first_minute, "last_minute_per_s": last_minute,
            "last_over_first": last_minute / first_minute, "jobs_autovacuums": autovacuums}


def frange(start: float, end: float, step: float) -> list[float]:
    return [start + i * step for i in range(int((end - start) // step) + 1)]


def bench_nodes(pg: Databases, count: int, *, drain_jobs: int, e2e_jobs: int) -> dict[str, float]:
    """``count`` jobd serve processes on one database: the drain of ``drain_jobs``
    queued noop jobs written while they all run (each node finds them at its next poll),
    then ``e2e_jobs`` noop jobs submitted over HTTP, the nodes in turn, while they run.
    ``attempts_per_job``: attempts the nodes counted (their /metrics) per job, 1.0 when no
    job ran twice; ``busiest_share``: the largest node's share of them."""
    with nodes(count, pg) as found:
        tenant = found[0].create_tenant()
        for d in found:
            d.start()
        first = found[0]
        since = time.time()
        seed_jobs(first, tenant["tenantId"], queued=drain_jobs)
        drain = drain_rate(first, drain_jobs, since)
        since = time.time()
        env = {"JOBD_API_KEY": tenant["apiKey"], "JOBD_TENANT": tenant["tenantId"]}
        submit(first.base, e2e_jobs, env=env, ports=[d.port for d in found], done=lambda: (
            idle(first) and first.query("SELECT count(*) FROM jobs WHERE status = 'succeeded' "
                                        "AND created_at >= ?", since)[0][0] >= e2e_jobs))
        total, first_created, last_done = wait_until(lambda: first.query(
            "SELECT count(*), min(created_at), max(completed_at) FROM jobs WHERE created_at >= ? "
            "HAVING count(*) = sum(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END)", since),
            60, "the last jobs")[0]
        attempts = [d.metric("jobd_job_attempts_total") for d in found]
    return {"drain_jobs_per_s": drain, "e2e_jobs_per_s": total / (last_done - first_created),
            "attempts_per_job": sum(attempts) / (drain_jobs + total),
            "busiest_share": max(attempts) / sum(attempts)}


def bench_huey(total: int) -> dict[str, float]:
    """The peer on this machine, now (peer_huey.py): Huey on SQLite, FULL, as a library;
    its consumer with its default of one worker thread."""
    def peer(*args: str) -> dict[str, float]:
        out = subprocess.run([sys.executable, str(HERE / "peer_huey.py"), *args], check=True,
                             capture_output=True, text=True, timeout=900).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))
    return {"enqueue_per_s": peer("enqueue", str(total))["enqueue_per_s"],
            "jobs_per_s": peer("e2e", str(total), "1")["jobs_per_s"]}


Figures = dict[str, list[dict[str, float]]]  # scenario -> one dict a run


def main() -> None:
    args = parse_args()
    figures, peers = run_scenarios(args)
    summary = {backend: {scenario: summarize(runs) for scenario, runs in scenarios.items()}
               for backend, scenarios in figures.items()}
    peer = {scenario: summarize(runs) for scenario, runs in peers.items()}
    add_ratios(summary, peer)
    if args.json:
        print(json.dumps({"backends": summary, "peers": peer}, indent=2))
    else:
        print_table(summary, peer, args.runs)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration")
    parser.add_argument("--backend", default="sqlite",
                        help="sqlite, postgres, or both (sqlite,postgres): each scenario on "
                             "each, alternating which goes first")
    parser.add_argument("--only", default=None,
                        help="scenarios of create,drain,e2e,latency,scale,million (default: "
                             "all but million, none with --nodes); e2e includes the peer, "
                             "Huey, when it is installed")
    parser.add_argument("--nodes", default="",
                        help="node counts, e.g. 1,2,3: drain and end to end with that many "
                             "jobd serve processes on one database (PostgreSQL only)")
    parser.add_argument("--drain-jobs", type=int, default=100_000)
    parser.add_argument("--e2e-jobs", type=int, default=20_000)
    parser.add_argument("--scale-finished", type=int, default=1_000_000)
    parser.add_argument("--million-jobs", type=int, default=1_000_000)
    parser.add_argument("--pg-setting", action="append", metavar="NAME=VALUE",
                        help="a setting of the throwaway PostgreSQL server, e.g. "
                             "shared_buffers=1GB (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.backends = args.backend.split(",")
    if set(args.backends) - {"sqlite", "postgres"}:
        parser.error("--backend: sqlite, postgres or sqlite,postgres")
    args.counts = [int(n) for n in args.nodes.split(",") if n]
    if args.counts and "postgres" not in args.backends:
        parser.error("--nodes needs --backend postgres")
    default = "" if args.counts else "create,drain,e2e,latency,scale"
    args.scenarios = set((args.only if args.only is not None else default).split(",")) - {""}
    return args


def run_scenarios(args: argparse.Namespace) -> tuple[dict[str, Figures], Figures]:
    """Every scenario asked for: each backend's runs, and the peer's."""
    only, backends = args.scenarios, args.backends
    figures: dict[str, Figures] = {backend: {} for backend in backends}
    peers: Figures = {}
    with postgres(backends, args.pg_setting) as pg:
        targets = {"sqlite": None, "postgres": pg}

        def measure(scenario: str, fn: Callable[[Databases | None], dict[str, float]],
                    on: list[str] = backends) -> None:
            """``args.runs`` runs of ``fn`` on each backend, the first backend alternating.
            A run that fails is told on stderr and left out; the others still count."""
            for run in range(args.runs):
                for backend in on if run % 2 == 0 else on[::-1]:
                    result = attempt(f"{scenario} on {backend}",
                                     functools.partial(fn, targets[backend]))
                    if result is not None:
                        figures[backend].setdefault(scenario, []).append(result)

        if "create" in only:
            measure("create", lambda pg: bench_create(pg, args.seconds))
            measure("create_default_pool", lambda pg: bench_create(pg, args.seconds,
                                                                   concurrency=16))
            measure("create_api_only", lambda pg: bench_create(
                pg, args.seconds, run_at="2099-01-01T00:00:00Z"))
        if "drain" in only:
            measure("drain", lambda pg: bench_drain(pg, args.drain_jobs))
        if "e2e" in only:
            measure("e2e", lambda pg: bench_end_to_end(pg, args.e2e_jobs, webhooks=False))
            measure("e2e_webhooks", lambda pg: bench_end_to_end(pg, args.e2e_jobs, webhooks=True))
            peers.update(measure_peer(args))
        if "latency" in only:
            measure("latency", lambda pg: bench_latency(pg, 200))
        if "scale" in only:
            measure("scale", lambda pg: bench_scale(pg, args.scale_finished, args.drain_jobs,
                                                    args.seconds))
        if "million" in only:
            measure("million", lambda pg: bench_million(pg, args.million_jobs))
        for count in args.counts:
            measure(f"nodes_{count}", lambda pg, n=count: bench_nodes(
                pg, n, drain_jobs=args.drain_jobs, e2e_jobs=args.e2e_jobs), on=["postgres"])
    return figures, peers


def measure_peer(args: argparse.Namespace) -> Figures:
    """Huey's runs, when it is installed."""
    if importlib.util.find_spec("huey") is None:
        print("peer_huey skipped: huey is not installed (make bench installs it)",
              file=sys.stderr)
        return {}
    runs = [attempt("peer_huey", lambda: bench_huey(args.e2e_jobs)) for _ in range(args.runs)]
    found = [r for r in runs if r is not None]
    return {"peer_huey": found} if found else {}


def attempt(what: str, fn: Callable[[], dict[str, float]]) -> dict[str, float] | None:
    """``fn()``, or None (told on stderr) when it fails or times out."""
    try:
        return fn()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        print(f"{what}: failed, left out: {exc} {detail}".rstrip(), file=sys.stderr, flush=True)
        return None


@contextlib.contextmanager
def postgres(backends: list[str], settings: list[str] | None) -> Iterator[Databases | None]:
    """A throwaway PostgreSQL server when a backend needs it, else None."""
    if "postgres" not in backends:
        yield None
        return
    with pgsql.server(settings) as (url, data):
        yield Databases(url, data)


Summary = dict[str, dict[str, float]]  # key -> median, min, max


def summarize(runs: list[dict[str, float]]) -> Summary:
    return {key: {"median": statistics.median(r[key] for r in runs),
                  "min": min(r[key] for r in runs), "max": max(r[key] for r in runs)}
            for key in runs[0]}


def add_ratios(summary: dict[str, dict[str, Summary]], peer: dict[str, Summary]) -> None:
    """End to end over Huey's, per backend (medians), and PostgreSQL's create over
    SQLite's of the same run."""
    def ratio(a: float, b: float) -> dict[str, float]:
        return {"median": a / b, "min": float("nan"), "max": float("nan")}
    huey = peer.get("peer_huey", {}).get("jobs_per_s", {}).get("median")
    for scenarios in summary.values():
        if huey and "e2e" in scenarios:
            scenarios["e2e"]["x_huey"] = ratio(scenarios["e2e"]["jobs_per_s"]["median"], huey)
    if "sqlite" in summary and "postgres" in summary:
        for scenario in ("create", "create_default_pool", "create_api_only"):
            if scenario in summary["sqlite"] and scenario in summary["postgres"]:
                summary["postgres"][scenario]["x_sqlite"] = ratio(
                    summary["postgres"][scenario]["rps"]["median"],
                    summary["sqlite"][scenario]["rps"]["median"])


def print_table(summary: dict[str, dict[str, Summary]], peer: dict[str, Summary],
                runs: int) -> None:
    """One row a figure, one column a backend: the median of the runs, [min-max]."""
    backends = list(summary)
    print(f"\njobd benchmark (medians of {runs} run(s) [min-max], synchronous=full, "
          f"loopback)\n")
    print(f"{'scenario':<40}" + "".join(f"{b:>28}" for b in backends))
    print("-" * (40 + 28 * len(backends)))
    rows: dict[str, dict[str, dict[str, float]]] = {}
    scenarios = list(dict.fromkeys(s for by_scenario in summary.values() for s in by_scenario))
    for scenario in scenarios:  # a scenario's rows together, whichever backend has them
        for backend, by_scenario in summary.items():
            for key, value in by_scenario.get(scenario, {}).items():
                rows.setdefault(f"{scenario} {key}", {})[backend] = value
    for name, values in {**rows, **{f"{s} {k}": {backends[0]: v} for s, vs in peer.items()
                                    for k, v in vs.items()}}.items():
        print(f"{name:<40}" + "".join(f"{cell(values.get(b)):>28}" for b in backends))
    print()


def cell(value: dict[str, float] | None) -> str:
    if value is None:
        return ""
    def num(x: float) -> str:
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"
    if math.isnan(value["min"]) or value["min"] == value["max"]:
        return num(value["median"])
    return f"{num(value['median'])} [{num(value['min'])}-{num(value['max'])}]"


if __name__ == "__main__":
    main()
