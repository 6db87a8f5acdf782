"""``make soak``: ``kill -9`` cycles against a real ``jobd serve`` under load, then a count.

Clients submit jobs over HTTP without pause, each with its own Idempotency-Key and a
webhook to a counting receiver in this process: mostly ``noop`` jobs, and ``http`` jobs
that POST to the same receiver, which counts their executions. The daemon is killed with
SIGKILL at random moments and started again at once; a submission that got no 201 (the
connection broke, or nothing listened) is sent again with the same key and body until
one comes. When the time is up the queue is left to drain, the daemon is stopped with
SIGTERM, and the database and the receiver's counts are compared:

- acknowledged: keys answered 201; lost: acknowledged jobs missing, an ``http`` job
  succeeded without its request arriving, or a finished job's webhook never received
  and not dead;
- duplicated: two job rows for one key, a job run more often than its attempts, two
  deliveries for one job (a redelivery of the same ``webhook-id`` after a crash is
  at-least-once, counted apart, as are re-runs of a job whose attempt a kill cut short);
- stuck: jobs left queued, running or in retry, deliveries left pending or sending;
- integrity_check of the database file.

Exits 1 if anything was lost, duplicated or stuck, a submission was refused, or the
integrity check failed. Usage:
    python bench/soak.py [--duration 150] [--cycles 40] [--clients 16] [--seed N] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Daemon

FINAL = ("succeeded", "fatal", "cancelled")
RETRY_PAUSE_S = 0.05  # between tries of a submission while the daemon is down


@dataclass
class Submission:
    key: str
    body: bytes
    job_id: str | None = None
    tries: int = 0
    replayed: bool = False


@dataclass
class Receiver:
    """Counts ``http`` job requests by key and webhook arrivals by job and webhook-id."""

    executions: collections.Counter[str] = field(default_factory=collections.Counter)
    hooks: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    url: str = ""

    async def execute(self, request: web.Request) -> web.Response:
        await request.read()
        self.executions[request.match_info["key"]] += 1
        return web.Response(status=204)

    async def hook(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.hooks[body["jobId"]][request.headers.get("webhook-id", "")] += 1
        return web.Response(status=204)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.add_routes([web.post("/exec/{key}", self.execute), web.post("/hook", self.hook)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return runner


@dataclass
class Load:
    """What the clients did."""

    daemon: Daemon
    tenant: dict[str, str]
    receiver: Receiver
    http_share: float
    rng: random.Random
    submissions: list[Submission] = field(default_factory=list)
    refused: list[tuple[str, int, str]] = field(default_factory=list)
    retried: int = 0
    creating: bool = True

    def new_submission(self) -> Submission:
        key = f"soak-{len(self.submissions)}"
        body: dict[str, Any] = {"tenantId": self.tenant["tenantId"], "type": "noop",
                                "payload": {"key": key}, "webhookUrl": self.receiver.url + "/hook"}
        if self.rng.random() < self.http_share:
            body.update(type="http", payload={"url": f"{self.receiver.url}/exec/{key}",
                                              "json": {"key": key}})
        submission = Submission(key, json.dumps(body).encode())
        self.submissions.append(submission)
        return submission

    async def client(self, session: aiohttp.ClientSession) -> None:
        """Submit new jobs while ``creating``; each until a 201 or a refusal."""
        while self.creating:
            await self.submit(session, self.new_submission())

    async def submit(self, session: aiohttp.ClientSession, submission: Submission) -> None:
        headers = {"Authorization": f"Bearer {self.tenant['apiKey']}",
                   "Idempotency-Key": submission.key, "Content-Type": "application/json"}
        while True:
            submission.tries += 1
            if submission.tries > 1:
                self.retried += submission.tries == 2
            try:
                async with session.post(self.daemon.base + "/jobs", data=submission.body,
                                        headers=headers) as resp:
                    text = await resp.text()
                    if resp.status == 201:
                        submission.job_id = json.loads(text)["jobId"]
                        submission.replayed = resp.headers.get("Idempotent-Replayed") == "true"
                        return
                    if resp.status < 500:
                        self.refused.append((submission.key, resp.status, text[:200]))
                        return
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                pass
            await asyncio.sleep(RETRY_PAUSE_S)


async def kill_cycles(daemon: Daemon, rng: random.Random, *, cycles: int, until: float,
                      pause_s: tuple[float, float]) -> int:
    """SIGKILL the daemon at random moments and start it again; the number of kills."""
    kills = 0
    while kills < cycles:
        await asyncio.sleep(rng.uniform(*pause_s))
        if time.monotonic() >= until:
            break
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(daemon.proc.wait, 10)
        kills += 1
        await asyncio.to_thread(daemon.start)
    return kills


def backlog(daemon: Daemon, tenant_id: str) -> tuple[int, int]:
    """(jobs not finished, deliveries not finished) of the tenant."""
    jobs = daemon.query("SELECT count(*) FROM jobs WHERE tenant_id = ? AND status NOT IN "
                        "('succeeded', 'fatal', 'cancelled')", tenant_id)[0][0]
    deliveries = daemon.query("SELECT count(*) FROM deliveries WHERE tenant_id = ? AND status "
                              "IN ('pending', 'sending')", tenant_id)[0][0]
    return int(jobs), int(deliveries)


async def drain(daemon: Daemon, tenant_id: str, timeout_s: float) -> float:
    """Wait until the tenant's jobs and webhooks are all finished; seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s and any(backlog(daemon, tenant_id)):
        await asyncio.sleep(0.2)
    return time.monotonic() - start


def count(load: Load, daemon: Daemon) -> dict[str, Any]:
    """Compare what was acknowledged, what the database holds and what the receiver saw."""
    tenant_id = load.tenant["tenantId"]
    rows = daemon.query("SELECT id, coalesce(json_extract(payload, '$.key'), json_extract("
                        "payload, '$.json.key')), type, status, attempts, webhook_url "
                        "FROM jobs WHERE tenant_id = ?", tenant_id)
    deliveries = daemon.query("SELECT job_id, id, status FROM deliveries WHERE tenant_id = ?",
                              tenant_id)
    by_id = {row[0]: row for row in rows}
    rows_per_key = collections.Counter(row[1] for row in rows)
    acked = [s for s in load.submissions if s.job_id is not None]
    lost_jobs = [s.key for s in acked if s.job_id not in by_id or by_id[s.job_id][1] != s.key]
    executions = load.receiver.executions
    http_rows = [row for row in rows if row[2] == "http"]
    not_run = [row[0] for row in http_rows if row[3] == "succeeded" and not executions[row[1]]]
    beyond_attempts = [row[0] for row in http_rows if executions[row[1]] > row[4]]
    reruns = sum(max(0, executions[row[1]] - 1) for row in http_rows)
    deliveries_per_job = collections.defaultdict(list)
    for job_id, delivery_id, status in deliveries:
        deliveries_per_job[job_id].append((delivery_id, status))
    hooks = load.receiver.hooks
    undelivered, foreign_ids, dead = [], [], 0
    for row in rows:
        if row[3] not in FINAL or row[5] is None:
            continue
        own = deliveries_per_job.get(row[0], [])
        dead += sum(status == "dead" for _, status in own)
        received = hooks.get(row[0], collections.Counter())
        if not received and not any(status == "dead" for _, status in own):
            undelivered.append(row[0])
        foreign_ids += [i for i in received if i not in {d for d, _ in own}]
    stuck_jobs = [row[0] for row in rows if row[3] not in FINAL]
    stuck_deliveries = [d for d in deliveries if d[2] in ("pending", "sending")]
    conn = sqlite3.connect(daemon.db_path)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    log = (daemon.dir / "jobd.log").read_text(errors="replace")
    return {
        "submitted": len(load.submissions), "acknowledged": len(acked),
        "unacknowledged": len(load.submissions) - len(acked),
        "retried": load.retried, "replayed": sum(s.replayed for s in acked),
        "refused": load.refused, "job_rows": len(rows),
        "lost": {"jobs": lost_jobs, "not_run": not_run, "webhooks": undelivered},
        "duplicated": {"job_rows": [k for k, n in rows_per_key.items() if n > 1],
                       "runs_beyond_attempts": beyond_attempts,
                       "deliveries": [j for j, d in deliveries_per_job.items() if len(d) > 1],
                       "foreign_webhook_ids": foreign_ids},
        "http_jobs": len(http_rows), "reruns_after_crash": reruns,
        "webhooks_received": sum(sum(c.values()) for c in hooks.values()),
        "webhook_redeliveries": sum(sum(c.values()) - 1 for c in hooks.values() if c),
        "dead_deliveries": dead,
        "statuses": dict(collections.Counter(row[3] for row in rows)),
        "stuck": {"jobs": stuck_jobs, "deliveries": stuck_deliveries},
        "integrity_check": "ok" if integrity == [("ok",)] else str(integrity),
        "log_tracebacks": log.count("Traceback"),
    }


def report(figures: dict[str, Any], kills: int, seconds: float, drain_s: float) -> bool:
    """Print the figures; True when nothing was lost, duplicated or stuck."""
    def n(items: Any) -> int:
        return items if isinstance(items, int) else len(items)

    lost = sum(n(v) for v in figures["lost"].values())
    duplicated = sum(n(v) for v in figures["duplicated"].values())
    stuck = sum(n(v) for v in figures["stuck"].values())
    unacked = figures["unacknowledged"]
    lines = [
        ("kill -9 cycles", f"{kills} in {seconds:.0f} s of load "
                           f"({figures['acknowledged'] / seconds:.0f} jobs/s acknowledged); "
                           f"drained in {drain_s:.1f} s"),
        ("submitted", f"{figures['submitted']} keys, {figures['retried']} sent again after a "
                      f"failed try ({figures['replayed']} of them answered as replays)"),
        ("acknowledged", f"{figures['acknowledged']} ({unacked} never acknowledged, "
                         f"{len(figures['refused'])} refused)"),
        ("lost", f"{lost} (jobs {n(figures['lost']['jobs'])}, http jobs succeeded without "
                 f"running {n(figures['lost']['not_run'])}, webhooks never received "
                 f"{n(figures['lost']['webhooks'])})"),
        ("duplicated", f"{duplicated} (job rows {n(figures['duplicated']['job_rows'])}, runs "
                       f"beyond attempts {n(figures['duplicated']['runs_beyond_attempts'])}, "
                       f"deliveries {n(figures['duplicated']['deliveries'])}, unknown webhook-ids "
                       f"{n(figures['duplicated']['foreign_webhook_ids'])})"),
        ("re-runs", f"{figures['reruns_after_crash']} of {figures['http_jobs']} http jobs run "
                    "again after a kill cut their attempt short (at-least-once)"),
        ("webhooks", f"{figures['webhooks_received']} received, "
                     f"{figures['webhook_redeliveries']} of them redeliveries of the same "
                     f"webhook-id after a crash (at-least-once), {figures['dead_deliveries']} dead"),
        ("stuck", f"{stuck} (jobs {n(figures['stuck']['jobs'])}, deliveries "
                  f"{n(figures['stuck']['deliveries'])})"),
        ("statuses", ", ".join(f"{k} {v}" for k, v in sorted(figures["statuses"].items()))),
        ("integrity_check", figures["integrity_check"]),
        ("log", f"{figures['log_tracebacks']} tracebacks in the daemon's log"),
    ]
    for name, text in lines:
        print(f"{name:<16} {text}")
    for name in ("lost", "duplicated", "stuck"):
        for kind, items in figures[name].items():
            if items and not isinstance(items, int):
                print(f"  {name} {kind}: {items[:5]}")
    for refusal in figures["refused"][:5]:
        print(f"  refused: {refusal}")
    return (lost == duplicated == stuck == unacked == 0 and not figures["refused"]
            and figures["integrity_check"] == "ok")


async def soak(args: argparse.Namespace, workdir: Path) -> bool:
    rng = random.Random(args.seed)
    receiver = Receiver()
    receiver_runner = await receiver.start()
    daemon = Daemon(workdir, workers={"concurrency": 32, "poll_interval": 0.1,
                                      "lease_seconds": 5, "shutdown_grace": 2},
                    jobs={"max_attempts": 10, "backoff_base": 0.1, "backoff_max": 1},
                    webhooks={"retry_delays": [0.2, 0.5, 1], "timeout": 5, "concurrency": 32})
    tenant = await asyncio.to_thread(daemon.create_tenant, "soak")
    await asyncio.to_thread(daemon.start)
    load = Load(daemon, tenant, receiver, args.http_share, rng)
    print(f"soak: {args.duration:g} s of load, at most {args.cycles} kill -9 cycles, "
          f"{args.clients} clients, seed {args.seed}, in {workdir}", flush=True)
    started = time.monotonic()
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            clients = [asyncio.create_task(load.client(session)) for _ in range(args.clients)]
            kills = await kill_cycles(daemon, rng, cycles=args.cycles,
                                      until=started + args.duration, pause_s=(0.5, 4.0))
            await asyncio.sleep(max(0.0, started + args.duration - time.monotonic()))
            load.creating = False
            _, unfinished = await asyncio.wait(clients, timeout=args.drain_timeout)
            for client in unfinished:  # its submission stays unacknowledged
                client.cancel()
            seconds = time.monotonic() - started
            drain_s = await drain(daemon, tenant["tenantId"], args.drain_timeout)
        await asyncio.to_thread(daemon.stop)
        return report(count(load, daemon), kills, seconds, drain_s)
    finally:
        daemon.stop()
        await receiver_runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=150, help="seconds of load (150)")
    parser.add_argument("--cycles", type=int, default=40, help="most kill -9 cycles (40)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent submitters (16)")
    parser.add_argument("--http-share", type=float, default=0.2,
                        help="share of http jobs, the rest noop (0.2)")
    parser.add_argument("--drain-timeout", type=float, default=120,
                        help="seconds to wait for the queue to drain (120)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (new each run)")
    parser.add_argument("--keep", action="store_true", help="keep the database and log")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    workdir = Path(tempfile.mkdtemp(prefix="jobd-soak-"))
    ok = False
    try:
        ok = asyncio.run(soak(args, workdir))
    finally:
        if args.keep or not ok:
            print(f"kept {workdir} (jobd.db, jobd.log)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
