"""Hostile receivers cannot stall the daemon: while one tenant's webhooks and http jobs
hit peers that answer endlessly (tests/peers.py, in a process of its own), another
tenant's POST /jobs stays fast, the attempts fail at once with a clear error, and the
daemon's memory stays flat. Both webhook clients (``webhooks.fast_client``)."""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import sqlite_only
from tests.peers import REFUSED_HEADS
from tests.support import Client, cli_json, wait_for

ROOT = Path(__file__).resolve().parents[2]
WINDOW_S = 4.0
TIMEOUT_S = 3  # what each attempt would hold the loop for, unbounded
P99_LIMIT_S = 0.2
RSS_GROWTH_LIMIT_MB = 64
PLAYS = [*REFUSED_HEADS, "/chunk-ext", "/trailer", "/big-body", "/drip"]


@pytest.fixture
def hostile() -> Iterator[str]:
    with subprocess.Popen([sys.executable, "-m", "tests.peers"], cwd=ROOT,
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
        proc.kill()
        proc.wait(10)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def post_job(conn: http.client.HTTPConnection, client: Client, key: str) -> float:
    """One POST /jobs on a kept-alive connection; its round trip in seconds."""
    body = json.dumps({"tenantId": client.tenant_id, "type": "noop", "payload": {}})
    started = time.perf_counter()
    conn.request("POST", "/jobs", body=body, headers={
        **client.auth, "Idempotency-Key": key, "Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    elapsed = time.perf_counter() - started
    assert resp.status == 201, resp.status
    return elapsed


class Attacker(threading.Thread):
    """Submits, all through the window, jobs whose webhook or http target is hostile."""

    def __init__(self, client: Client, hostile: str) -> None:
        super().__init__(daemon=True)
        self.client, self.hostile = client, hostile
        self.stop = threading.Event()
        self.webhooks: dict[str, str] = {}  # job id -> play
        self.http_jobs: dict[str, str] = {}

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            play = PLAYS[n % len(PLAYS)]
            url = self.hostile + play
            status, _, body = self.client.submit("noop", key=f"w{n}", webhookUrl=url)
            assert status == 201, body
            self.webhooks[body["jobId"]] = play
            status, _, body = self.client.submit(
                "http", {"url": url, "method": "GET", "timeoutSeconds": TIMEOUT_S}, key=f"h{n}",
                maxAttempts=1)
            assert status == 201, body
            self.http_jobs[body["jobId"]] = play
            n += 1
            self.stop.wait(0.05)


@sqlite_only("the bounds under test are the HTTP clients', the same on either backend; "
             "a timing test run once")
@pytest.mark.parametrize("fast_client", [True, False], ids=["fast", "aiohttp"])
def test_hostile_receivers_do_not_slow_other_tenants(make_env, hostile, fast_client) -> None:
    env = make_env(webhooks={"timeout": TIMEOUT_S, "fast_client": fast_client,
                             "retry_delays": [0.1, 0.1, 0.1]})
    env.daemon.start()
    creds = cli_json(env.config, "tenants", "create", "other")
    other = Client(env.daemon.base, creds["tenantId"], creds["apiKey"])
    assert env.daemon.proc is not None
    pid = env.daemon.proc.pid
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    for i in range(50):  # warm up
        post_job(conn, other, f"warm{i}")
    rss_before = rss_mb(pid)

    attacker = Attacker(env.client, hostile)
    attacker.start()
    latencies: list[float] = []
    deadline = time.monotonic() + WINDOW_S
    try:
        while time.monotonic() < deadline:
            latencies.append(post_job(conn, other, f"k{len(latencies)}"))
    finally:
        attacker.stop.set()
        attacker.join(10)
        conn.close()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    summary = (f"{len(latencies)} requests, p50 {statistics.median(latencies) * 1000:.1f} ms, "
               f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert p99 < P99_LIMIT_S, summary
    assert len(attacker.webhooks) > 20, "the hostile load did not run"

    def attempted(job: dict[str, Any]) -> bool:
        return bool(job.get("webhook")) and job["webhook"]["attempts"] >= 1

    for job_id, play in attacker.webhooks.items():
        if play in REFUSED_HEADS:
            job = wait_for(lambda job_id=job_id: (lambda j: j if attempted(j) else None)(
                env.client.job(job_id)), what=f"a delivery attempt for {play}")
            assert job["webhook"]["lastError"] == f"AnswerRefused: {REFUSED_HEADS[play]}"
    for job_id, play in attacker.http_jobs.items():
        if play in REFUSED_HEADS:
            job = env.client.wait_status(job_id, "fatal")
            assert REFUSED_HEADS[play] in job["lastError"], job["lastError"]
    growth = rss_mb(pid) - rss_before
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS grew {growth:.0f} MB"
    assert "Traceback" not in env.daemon.log()
