"""``jobd stats``, ``jobd prune`` and ``jobd top`` on databases prepared with the store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jobd.config import Config
from jobd.models import DeliveryStatus, JobStatus
from tests.stores import BlockingStore, stored_rows
from tests.support import JOBD, wait_for

DAY = 86_400.0


# stats ------------------------------------------------------------------------------


def test_stats_counts_by_status_and_tenant_recent_dlq_and_oldest(jobd, seed):
    now = time.time()
    seed.succeeded("acme", at=now - 30)
    seed.succeeded("acme", at=now - 20)
    seed.succeeded("other", at=now - 1800)       # last hour, not last minute
    seed.succeeded("other", at=now - 2 * 3600)   # neither
    failed = seed.fatal("acme", at=now - 10, webhook_url="https://example.com/hook")
    seed.deliver(failed, now=now - 9, status_codes=[500])  # -> DLQ
    retrying = seed.submit("other", now=now - 8)
    seed.attempt(retrying, now=now - 8, error="flaky", retry_at=now + 600)
    running = seed.submit("acme", now=now - 7)
    seed.attempt(running, now=now - 7, finish=False)
    seed.submit("other", now=now - 300, run_at=now - 120)  # due two minutes ago: waiting
    seed.submit("acme", now=now - 5, run_at=now + 3600)    # queued, not due yet
    jobd("jobs", "cancel", seed.submit("acme", now=now - 4, run_at=now + 3600))

    doc = jobd.json("stats")
    assert doc["byStatus"] == {"queued": 2, "running": 1, "retry": 1, "succeeded": 4,
                               "fatal": 1, "cancelled": 1}
    assert doc["byTenant"] == {
        "acme": {"succeeded": 2, "fatal": 1, "running": 1, "queued": 1, "cancelled": 1},
        "other": {"succeeded": 2, "retry": 1, "queued": 1},
    }
    assert doc["finishedLastMinute"] == {"succeeded": 2, "fatal": 1, "cancelled": 1}
    assert doc["finishedLastHour"] == {"succeeded": 3, "fatal": 1, "cancelled": 1}
    assert doc["dlqSize"] == 1
    assert 119 <= doc["oldestQueuedAgeSeconds"] < 180
    assert doc["at"].endswith("Z")

    human = jobd("stats").stdout
    assert "jobs by status, then by tenant" in human and "jobs finished" in human
    assert "DLQ size: 1" in human
    assert "oldest queued job waiting: 1" in human  # 1xx.x s


def test_stats_of_an_empty_database(jobd, seed):
    doc = jobd.json("stats")
    assert doc["byStatus"] == {s.value: 0 for s in JobStatus}
    assert doc["byTenant"] == {}
    assert doc["finishedLastMinute"] == {} and doc["finishedLastHour"] == {}
    assert doc["dlqSize"] == 0
    assert doc["oldestQueuedAgeSeconds"] is None


# prune ------------------------------------------------------------------------------


@pytest.fixture
def aged(seed, db: BlockingStore):
    """Jobs around the 1-day retention of the ``cfg`` fixture. Idempotency keys live an
    hour (``KEY_TTL_S``), so the keys of every job created over an hour ago expired."""
    now = time.time()
    old = now - 3 * DAY
    jobs = {
        "old_succeeded": [seed.succeeded("acme", at=old + i, webhook_url="https://example.com/ok")
                          for i in range(3)],
        "old_fatal": seed.fatal("other", at=old + 10, webhook_url="https://example.com/dead"),
        "recent_succeeded": seed.succeeded("acme", at=now - 3600 - 60),
    }
    for job_id in jobs["old_succeeded"]:
        seed.deliver(job_id, now=old + 20, status_codes=[200])
    jobs["dead_delivery"] = seed.deliver(jobs["old_fatal"], now=old + 20, status_codes=[500])
    running = seed.submit("acme", now=old + 30)
    seed.attempt(running, now=old + 30, finish=False)
    cancelled = seed.submit("acme", now=old + 40, run_at=now + DAY)
    db.run(lambda b: b.cancel_job(cancelled, tenant_id=None, now=old + 41))
    jobs["old_cancelled"] = cancelled
    jobs["old_running"] = running
    jobs["old_queued"] = seed.submit("other", now=old + 50, run_at=now + DAY)
    jobs["new_queued"] = seed.submit("other", now=now)
    return jobs


def remaining(db: BlockingStore) -> set[str]:
    return {j.id for j in db.run(lambda b: b.list_jobs(limit=100))}


def held_keys(config: Config) -> int:
    """Jobs that hold an Idempotency-Key, read from the database (the protocol does not say)."""
    [(count,)] = stored_rows(config.database,
                             "SELECT count(*) FROM jobs WHERE idempotency_key IS NOT NULL")
    return int(count)


def test_prune_dry_run_counts_and_deletes_nothing(jobd, db, aged, config):
    before = remaining(db)
    doc = jobd.json("prune", "--dry-run")
    assert doc["dryRun"] is True
    assert doc["jobs"] == 5             # 3 succeeded, 1 fatal, 1 cancelled, all 3 days old
    assert doc["deliveries"] == 3       # delivered 3 days ago; the dead one stays in the DLQ
    assert "idempotencyKeys" not in doc  # keys live on their jobs and go with them
    assert doc["cutoff"].endswith("Z")
    assert remaining(db) == before
    assert held_keys(config) == 9
    assert "dryRun: True" in jobd("prune", "--dry-run").stdout


def test_prune_deletes_only_finished_jobs_and_deliveries_past_retention(jobd, db, aged, config):
    doc = jobd.json("prune", "--yes")
    assert doc["dryRun"] is False
    assert (doc["jobs"], doc["deliveries"]) == (5, 3)
    assert doc["seconds"] >= 0
    assert remaining(db) == {aged["recent_succeeded"], aged["old_running"], aged["old_queued"],
                             aged["new_queued"]}
    dead = db.run(lambda b: b.find_delivery(aged["dead_delivery"]))
    assert dead.status is DeliveryStatus.DEAD  # the DLQ is purged only by `dlq purge`
    assert jobd.json("dlq", "list")[0]["deliveryId"] == aged["dead_delivery"]
    assert held_keys(config) == 4  # the jobs that are left keep theirs

    again = jobd.json("prune", "--yes")
    assert (again["jobs"], again["deliveries"]) == (0, 0)
    assert "jobs: 0" in jobd("prune", "--yes").stdout

    # --older-than-days overrides jobs.retention_days
    assert jobd.json("prune", "--older-than-days", "0", "--yes")["jobs"] == 1
    assert aged["recent_succeeded"] not in remaining(db)


def test_prune_many_jobs_in_batches_with_progress(jobd, db, seed, monkeypatch):
    monkeypatch.setattr("jobd.cli.ops.BATCH", 7)
    old = time.time() - 3 * DAY
    for i in range(20):
        seed.succeeded("acme", at=old + i)
    proc = jobd("prune", "--yes")
    assert "pruning jobs" in proc.stdout and "20/20" in proc.stdout
    assert "jobs: 20" in proc.stdout
    assert remaining(db) == set()


# top --------------------------------------------------------------------------------


def test_top_refreshes_until_ctrl_c(tmp_path: Path, cfg, seed):
    seed.succeeded("acme", at=time.time() - 5)
    out_path = tmp_path / "top.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBD_")}
    env.update(TTY_COMPATIBLE="1", COLUMNS="80", LINES="24")  # frames as on an 80x24 terminal
    with out_path.open("wb") as out:
        proc = subprocess.Popen([*JOBD, "top", "--interval", "0.1", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.PIPE, env=env)
        try:
            wait_for(lambda: out_path.read_text(errors="replace").count("jobs by status") >= 2,
                     timeout_s=15, what="two frames of jobd top")
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode in (0, 130), stderr
    assert b"Traceback" not in stderr
    text = out_path.read_text(errors="replace")
    assert "jobs/s" in text
    visible = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "\n")
    assert max(len(line) for line in visible.splitlines()) <= 80
    assert "succeeded" in text
