"""``make bench``: jobd's throughput and latency next to the ceiling, printed as a table.

Every scenario starts a fresh daemon on a temp database with synchronous = "full".
Figures are printed, not asserted. Usage: python bench/run.py [--runs 3] [--only create,drain]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    HERE,
    cpu_seconds,
    daemon,
    free_port,
    group_commit,
    percentile,
    seed_jobs,
    wait_until,
    wrk,
)

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


def bench_create(seconds: int, *, run_at: str = "",
                 concurrency: int | None = None) -> dict[str, float]:
    """POST /jobs under wrk; with ``run_at`` in the future the workers stay idle, which
    measures the API alone (the jobs are still committed before each 201). With
    ``concurrency`` the daemon's worker pool has that size instead of the bench's 256
    (the spec's default is 16: those workers fall behind, and the queue grows).

    The hello ceiling runs just before and just after jobd, and the ratio is to their
    mean: this VM's speed drifts within minutes, and a ceiling taken on one side only
    moves the ratio with that drift."""
    before = bench_hello(seconds)
    overrides = {} if concurrency is None else {"workers": {"concurrency": concurrency}}
    with daemon(**overrides) as d:
        tenant = d.create_tenant()
        d.start()
        env = {"JOBD_API_KEY": tenant["apiKey"], "JOBD_TENANT": tenant["tenantId"],
               "JOBD_RUN_AT": run_at}
        assert d.proc is not None
        cpu0, writer0 = cpu_seconds(d.proc.pid), d.writer()
        jobd = wrk(d.base + "/jobs", script="post_jobs.lua", env=env, seconds=seconds)
        jobd_cpu, writer = cpu_seconds(d.proc.pid) - cpu0, group_commit(writer0, d.writer())
        created = d.query("SELECT count(*) FROM jobs")[0][0]
        ran = d.query("SELECT count(*) FROM jobs WHERE status = 'succeeded'")[0][0]
    after = bench_hello(seconds)
    hello_rps = (before["rps"] + after["rps"]) / 2
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


def submit(base: str, total: int, *, env: dict[str, str], done: Callable[[], bool]) -> None:
    """At least ``total`` POST /jobs from wrk (submit_n.lua: 2 threads, 64 connections,
    each thread stops at its share of 201s) while the daemon runs them; returns once
    ``done()``. wrk, not a Python client: the load generator shares the two cores."""
    proc = subprocess.Popen(
        ["wrk", "-t2", "-c64", "-d600s", "-s", str(HERE / "submit_n.lua"), base],
        env={**os.environ, **env, "JOBD_COUNT": str(total), "JOBD_THREADS": "2"},
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
    wait_until(lambda: d.query("SELECT count(*) FROM jobs WHERE status = 'succeeded' "
                               "AND started_at >= ?", since)[0][0] >= queued,
               timeout_s, "the drain", interval_s=0.2)
    first, last = d.query("SELECT min(started_at), max(completed_at) FROM jobs "
                          "WHERE status = 'succeeded' AND started_at >= ?", since)[0]
    return queued / (last - first)


def bench_drain(total: int) -> dict[str, float]:
    with daemon() as d:
        tenant = d.create_tenant()
        seed_jobs(d.db_path, tenant["tenantId"], queued=total)
        since = time.time()
        d.start()
        return {"jobs_per_s": drain_rate(d, total, since)}


def bench_end_to_end(total: int, *, webhooks: bool) -> dict[str, float]:
    receiver, port = background("receiver.py") if webhooks else (None, 0)
    try:
        with daemon() as d:
            tenant = d.create_tenant()
            d.start()
            hook = f"http://127.0.0.1:{port}/hook" if webhooks else ""
            submit(d.base, total, env={
                "JOBD_API_KEY": tenant["apiKey"], "JOBD_TENANT": tenant["tenantId"],
                "JOBD_WEBHOOK_URL": hook}, done=lambda: d.query(
                    "SELECT count(*) FROM jobs WHERE status = 'succeeded'")[0][0] >= total)
            total = wait_until(lambda: d.query(  # every job created, in flight ones too
                "SELECT count(*) FROM jobs HAVING count(*) = sum(status = 'succeeded')"),
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


def bench_latency(samples: int) -> dict[str, float]:
    receiver, port = background("receiver.py")
    try:
        with daemon(workers={"poll_interval": 5.0}) as d:
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
            "sync_ms": writer.get("sync_ms", float("nan")), **commit_floor(samples)}


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


def bench_scale(finished: int, queued: int, seconds: int) -> dict[str, float]:
    with daemon() as d:
        tenant = d.create_tenant()
        seed_jobs(d.db_path, tenant["tenantId"], finished=finished, queued=queued)
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


def bench_huey(total: int) -> dict[str, float]:
    """The peer on this machine, now (peer_huey.py): Huey on SQLite, FULL, as a library;
    its consumer with its default of one worker thread."""
    def peer(*args: str) -> dict[str, float]:
        out = subprocess.run([sys.executable, str(HERE / "peer_huey.py"), *args], check=True,
                             capture_output=True, text=True, timeout=900).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))
    return {"enqueue_per_s": peer("enqueue", str(total))["enqueue_per_s"],
            "jobs_per_s": peer("e2e", str(total), "1")["jobs_per_s"]}


def median_of(runs: int, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    results = [fn() for _ in range(runs)]
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration")
    parser.add_argument("--only", default="create,drain,e2e,latency,scale",
                        help="scenarios; e2e includes the peer, Huey, when it is installed")
    parser.add_argument("--drain-jobs", type=int, default=100_000)
    parser.add_argument("--e2e-jobs", type=int, default=20_000)
    parser.add_argument("--scale-finished", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    only = set(args.only.split(","))
    figures: dict[str, dict[str, float]] = {}
    if "create" in only:
        figures["create"] = median_of(args.runs, lambda: bench_create(args.seconds))
        figures["create_default_pool"] = median_of(
            args.runs, lambda: bench_create(args.seconds, concurrency=16))
        figures["create_api_only"] = median_of(
            args.runs, lambda: bench_create(args.seconds, run_at="2099-01-01T00:00:00Z"))
    if "drain" in only:
        figures["drain"] = median_of(args.runs, lambda: bench_drain(args.drain_jobs))
    if "e2e" in only:
        figures["e2e"] = median_of(args.runs, lambda: bench_end_to_end(args.e2e_jobs, webhooks=False))
        figures["e2e_webhooks"] = median_of(
            args.runs, lambda: bench_end_to_end(args.e2e_jobs, webhooks=True))
        if importlib.util.find_spec("huey") is None:
            print("peer_huey skipped: huey is not installed (make bench installs it)",
                  file=sys.stderr)
        else:
            figures["peer_huey"] = median_of(args.runs, lambda: bench_huey(args.e2e_jobs))
            figures["e2e"]["x_huey"] = (figures["e2e"]["jobs_per_s"]
                                        / figures["peer_huey"]["jobs_per_s"])
    if "latency" in only:
        figures["latency"] = median_of(args.runs, lambda: bench_latency(200))
    if "scale" in only:
        figures["scale"] = median_of(
            args.runs, lambda: bench_scale(args.scale_finished, args.drain_jobs, args.seconds))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_table(figures, args.runs)


def print_table(figures: dict[str, dict[str, float]], runs: int) -> None:
    print(f"\njobd benchmark (medians of {runs} run(s), synchronous=full, loopback)\n")
    print(f"{'scenario':<34}{'figure':>14}  note")
    print("-" * 80)
    for scenario, values in figures.items():
        for key, value in values.items():
            print(f"{scenario + ' ' + key:<34}{value:>14,.2f}")
    print()


if __name__ == "__main__":
    main()
