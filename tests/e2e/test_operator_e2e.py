"""What an operator sees of a running daemon: /metrics, the jobs CLI against the live
database, and the log lines (JSON, without secrets)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support import JOBD, cli_json, request, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _created(resp: tuple[int, dict[str, str], Any]) -> str:
    status, _, body = resp
    assert status == 201, body
    return str(body["jobId"])


def scrape(base: str) -> Samples:
    status, headers, text = request("GET", base + "/metrics")
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_a_finished_job_that_jobs_list_finds(make_env):
    env = make_env()
    env.daemon.start()
    job_id = _created(env.client.submit("noop", {"x": 1}, key="k1"))
    env.client.wait_status(job_id, "succeeded")

    finished = ("jobd_jobs_finished_total",
                (("status", "succeeded"), ("tenant", "acme"), ("type", "noop")))
    samples = wait_for(lambda: (s := scrape(env.daemon.base)).get(finished) == 1 and s,
                       what="the finished job in /metrics")
    assert samples[("jobd_jobs_created_total", (("tenant", "acme"), ("type", "noop")))] == 1
    assert samples[("jobd_job_attempts_total", (("type", "noop"),))] == 1
    assert samples[("jobd_job_duration_seconds_count", (("type", "noop"),))] == 1
    assert samples[("jobd_job_queue_wait_seconds_count", (("type", "noop"),))] == 1
    assert samples[("jobd_jobs", (("status", "succeeded"),))] == 1
    for status in ("queued", "running", "retry", "fatal", "cancelled"):
        assert samples[("jobd_jobs", (("status", status),))] == 0, status
    assert samples[("jobd_dlq_size", ())] == 0

    if env.database.url is None:
        # SQLite's own figures: the create and the finish were committed by the writer.
        committed = samples[("jobd_db_transactions_total", (("outcome", "committed"),))]
        assert committed >= 1
        assert samples[("jobd_db_transactions_total", (("outcome", "error"),))] == 0
        assert samples[("jobd_db_writes_total", ())] >= 2  # the new job and its outcome
        assert samples[("jobd_db_transaction_seconds_count", ())] == committed
        assert samples[("jobd_db_transaction_seconds_sum", ())] > 0
        db_file = env.tmp_path / "jobd.db"
        assert 0 < samples[("jobd_db_bytes", (("file", "main"),))] <= db_file.stat().st_size
        assert samples[("jobd_db_bytes", (("file", "wal"),))] > 0
    else:
        # PostgreSQL's: the pool (all of it opened at the start) and its batches.
        size = env.database.pool_size
        assert samples[("jobd_db_pool_connections_max", ())] == size
        assert 0 < samples[("jobd_db_pool_connections", ())] <= size
        assert samples[("jobd_db_pool_connections_idle", ())] <= size
        assert samples[("jobd_db_batches_in_flight", ())] == 0
        assert not any(name.startswith(("jobd_db_transaction", "jobd_db_writes", "jobd_db_bytes"))
                       for name, _ in samples)

    assert [j["jobId"] for j in cli_json(env.config, "jobs", "list", "--status", "succeeded")] == [
        job_id]
    assert cli_json(env.config, "jobs", "list", "--status", "queued") == []


def test_cli_cancel_and_retry_change_what_the_api_reports(make_env, target):
    env = make_env(workers={"concurrency": 1})
    env.daemon.start()
    target.hanging.add("/slow")  # holds the only worker, so a retried job stays queued
    blocker = _created(env.client.submit("http", {"url": target.script("/slow", [200])}, key="b"))
    env.client.wait_status(blocker, "running")

    run_at = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = _created(env.client.submit("noop", {}, key="later", runAt=run_at))
    assert env.client.job(later)["status"] == "queued"

    assert cli_json(env.config, "jobs", "cancel", later)["status"] == "cancelled"
    assert env.client.job(later)["status"] == "cancelled"

    assert cli_json(env.config, "jobs", "retry", later)["status"] == "queued"
    job = env.client.job(later)
    assert job["status"] == "queued"
    assert job["nextRunAt"] is not None and job["nextRunAt"] < run_at  # due now, not in an hour

    target.hanging.discard("/slow")
    target.release.set()
    env.client.wait_status(later, "succeeded")
    env.client.wait_status(blocker, "succeeded")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBD_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_json_logs_have_the_events_and_never_a_secret(make_env, target, tmp_path: Path):
    env = make_env(webhooks={"retry_delays": [0.05, 0.05, 0.05]})
    out_path, err_path = tmp_path / "serve.out", tmp_path / "serve.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([*JOBD, "serve", "--config", str(env.config), "--log-format", "json"],
                                stdout=out, stderr=err, env=_env())
    try:
        wait_for(lambda: proc.poll() is None and _healthy(env.daemon.base), timeout_s=15,
                 what="jobd serve --log-format json to be healthy")
        failing = target.script("/fail", [500])
        hook = target.script("/hook", [500])
        job_id = _created(env.client.submit("http", {"url": failing}, key="f", maxAttempts=2,
                                            webhookUrl=hook))
        bad = env.client.submit("nope", {}, key="x")  # a 400 with the key in its headers
        assert bad[0] == 400
        env.client.wait_status(job_id, "fatal")
        wait_for(lambda: "moved to the DLQ" in err_path.read_text(), timeout_s=10,
                 what="the dead-lettered delivery to be logged")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    lines = err_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON document
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    messages = [r["msg"] for r in records]
    startup = next(m for m in messages if "listening on" in m)
    assert env.daemon.base.split("//")[1] in startup
    assert env.database.location in startup  # the file, or the URL without its password
    assert any(f"job {job_id}" in m and "failed for good" in m for m in messages)
    assert any("moved to the DLQ" in m and job_id in m for m in messages)
    assert any("shutting down" in m for m in messages)
    assert messages[-1] == "stopped"

    everything = out_path.read_text() + err_path.read_text()
    assert env.client.api_key not in everything
    assert env.webhook_secret not in everything
    assert env.webhook_secret.removeprefix("whsec_") not in everything


def _healthy(base: str) -> bool:
    try:
        return request("GET", base + "/healthz", timeout_s=1)[0] == 200
    except OSError:
        return False
