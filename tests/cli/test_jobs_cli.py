"""``jobd jobs``: listing, one job's whole story, cancel/retry (through the CLI's entry
point in-process), and one line on stderr with the right exit code for every bad input
(through real processes)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from urllib.parse import urlsplit

import pytest

from jobd.config import mask_password
from jobd.models import JobStatus
from tests.conftest import postgres_only, sqlite_only
from tests.pg import Session
from tests.support import JOBD, cli, cli_json, write_config

JOBD_BYTES = [part.encode() for part in JOBD]

VIEW_FIELDS = {"jobId", "status", "attempts", "nextRunAt", "createdAt", "updatedAt", "type",
               "maxAttempts", "priority", "runAt", "startedAt", "completedAt", "lastError",
               "result", "cancelRequested", "webhookUrl", "tenantId", "payload"}


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The process failed with ``code`` and said why in exactly one line on stderr."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


def ids(docs: list[dict]) -> list[str]:
    return [d["jobId"] for d in docs]


# jobs list ----------------------------------------------------------------------------


def test_list_is_newest_first_with_every_filter(jobd, seed):
    now = time.time()
    done = seed.succeeded("acme", at=now - 50, payload={"to": "a@example.com"})
    failed = seed.fatal("other", at=now - 40, type="email")
    later = seed.submit("acme", now=now - 30, run_at=now + 3600)
    retrying = seed.submit("other", now=now - 20)
    seed.attempt(retrying, now=now - 20, error="flaky", retry_at=now + 3600)
    running = seed.submit("acme", now=now - 10, type="http")
    seed.attempt(running, now=now - 10, finish=False)
    cancelled = seed.submit("other", now=now - 5, run_at=now + 3600)
    jobd.json("jobs", "cancel", cancelled)

    everything = jobd.json("jobs", "list")
    assert ids(everything) == [cancelled, running, retrying, later, failed, done]
    for status, expected in [("succeeded", [done]), ("fatal", [failed]), ("queued", [later]),
                             ("retry", [retrying]), ("running", [running]),
                             ("cancelled", [cancelled])]:
        assert ids(jobd.json("jobs", "list", "--status", status)) == expected, status
    assert ids(jobd.json("jobs", "list", "--tenant", "acme")) == [running, later, done]
    assert ids(jobd.json("jobs", "list", "--tenant", "other", "--status", "fatal")) == [failed]
    assert ids(jobd.json("jobs", "list", "--tenant", "acme", "--status", "fatal")) == []
    assert ids(jobd.json("jobs", "list", "--tenant", "acme", "--status", "succeeded")) == [done]
    assert ids(jobd.json("jobs", "list", "--type", "email")) == [failed]
    assert ids(jobd.json("jobs", "list", "--type", "http", "--status", "running")) == [running]
    assert ids(jobd.json("jobs", "list", "--limit", "2")) == [cancelled, running]
    assert jobd.json("jobs", "list", "--tenant", "nobody") == []


def test_list_json_carries_the_job_fields_and_no_internal_ones(jobd, seed):
    now = time.time()
    done = seed.succeeded("acme", at=now - 5, payload={"to": "a@example.com"})
    [doc] = jobd.json("jobs", "list")
    assert set(doc) == VIEW_FIELDS  # no seq, no errors column, no lease owner
    assert doc["jobId"] == done
    assert doc["tenantId"] == "acme"
    assert doc["status"] == "succeeded"
    assert doc["attempts"] == 1
    assert doc["payload"] == {"to": "a@example.com"}
    assert doc["result"] == {"ok": True}
    assert doc["nextRunAt"] is None
    assert doc["createdAt"].endswith("Z") and doc["completedAt"].endswith("Z")


def test_list_table_shows_the_ids(jobd, seed):
    now = time.time()
    done = seed.succeeded("acme", at=now)
    table = jobd("jobs", "list").stdout
    assert done in table and "succeeded" in table and "acme" in table


# jobs show ----------------------------------------------------------------------------


def test_show_has_every_attempt_and_the_webhook_deliveries(jobd, seed):
    now = time.time() - 60
    job_id = seed.submit("acme", now=now, webhook_url="https://example.com/hook",
                         payload={"to": "a@example.com"})
    seed.attempt(job_id, now=now + 1, error="timed out after 30s")
    seed.attempt(job_id, now=now + 2, error="HTTP 503")
    seed.attempt(job_id, now=now + 3)
    delivery_id = seed.deliver(job_id, now=now + 4, status_codes=[500], dead=False)

    doc = jobd.json("jobs", "show", job_id)
    assert set(doc) >= VIEW_FIELDS
    assert doc["status"] == "succeeded"
    assert doc["attempts"] == 3  # the count, as GET /jobs/{id} has it
    assert doc["payload"] == {"to": "a@example.com"}
    assert doc["result"] == {"ok": True}
    history = doc["history"]
    assert [(a["attempt"], a["outcome"], a["error"]) for a in history] == [
        (1, "failed", "timed out after 30s"), (2, "failed", "HTTP 503"), (3, "succeeded", None)]
    assert all(a["at"].endswith("Z") for a in history)
    assert history[-1]["at"] == doc["completedAt"]
    assert history[0]["at"] < history[1]["at"] < history[2]["at"]

    [delivery] = doc["deliveries"]
    assert delivery["deliveryId"] == delivery_id
    assert delivery["status"] == "pending"
    assert delivery["url"] == "https://example.com/hook"
    assert delivery["attempts"] == 1
    assert delivery["lastStatusCode"] == 500
    assert [(h["statusCode"], h["error"]) for h in delivery["history"]] == [(500, "HTTP 500")]

    human = jobd("jobs", "show", job_id).stdout
    assert job_id in human
    assert "timed out after 30s" in human and "HTTP 503" in human
    assert delivery_id in human


def test_show_a_fatal_job_and_a_running_one(jobd, seed):
    now = time.time() - 60
    fatal = seed.fatal("acme", at=now, errors=2, webhook_url="https://example.com/hook")
    seed.deliver(fatal, now=now + 1, status_codes=[500, 500])
    doc = jobd.json("jobs", "show", fatal)
    assert doc["status"] == "fatal"
    assert doc["lastError"] == "boom 2"
    assert [(a["attempt"], a["outcome"], a["error"]) for a in doc["history"]] == [
        (1, "failed", "boom 1"), (2, "failed", "boom 2")]
    assert [d["status"] for d in doc["deliveries"]] == ["dead"]
    assert len(doc["deliveries"][0]["history"]) == 2

    running = seed.submit("acme", now=now + 2)
    seed.attempt(running, now=now + 2, finish=False)
    doc = jobd.json("jobs", "show", running)
    assert [(a["attempt"], a["outcome"]) for a in doc["history"]] == [(1, "running")]
    assert doc["history"][0]["at"] == doc["startedAt"]
    assert doc["deliveries"] == []

    queued = seed.submit("acme", now=now + 3, run_at=now + 3600)
    assert jobd.json("jobs", "show", queued)["history"] == []


# cancel and retry -----------------------------------------------------------------------


def test_cancel_then_retry_with_json(jobd, seed, db):
    now = time.time()
    job_id = seed.submit("acme", now=now, run_at=now + 3600)

    cancelled = jobd.json("jobs", "cancel", job_id)
    assert cancelled["jobId"] == job_id
    assert cancelled["status"] == "cancelled"
    assert cancelled["completedAt"] is not None
    assert db.run(lambda b: b.find_job(job_id)).status is JobStatus.CANCELLED

    retried = jobd.json("jobs", "retry", job_id)
    assert retried["status"] == "queued"
    assert retried["completedAt"] is None
    assert retried["nextRunAt"] is not None
    job = db.run(lambda b: b.find_job(job_id))
    assert job.status is JobStatus.QUEUED
    assert job.next_run_at is not None and job.next_run_at <= time.time()  # runs now

    assert "cancelled" in jobd("jobs", "cancel", job_id).stdout


def test_cancel_asks_a_running_job_to_stop(jobd, seed, db):
    now = time.time()
    job_id = seed.submit("acme", now=now)
    seed.attempt(job_id, now=now, finish=False)
    doc = jobd.json("jobs", "cancel", job_id)
    assert doc["status"] == "running"
    assert doc["cancelRequested"] is True
    assert "the daemon will stop it" in jobd("jobs", "cancel", job_id).stdout


def test_cancel_or_retry_in_the_wrong_state_exits_1(jobd, seed):
    now = time.time()
    done = seed.succeeded("acme", at=now)
    queued = seed.submit("acme", now=now, run_at=now + 3600)
    line = one_line_error(jobd("jobs", "cancel", done, "--json", check=False), 1)
    assert "already succeeded" in line
    line = one_line_error(jobd("jobs", "retry", queued, check=False), 1)
    assert "only fatal or cancelled" in line
    line = one_line_error(jobd("jobs", "retry", done, check=False), 1)
    assert done in line


# bad input: one line on stderr, the right exit code ---------------------------------


@pytest.mark.parametrize("command", ["show", "cancel", "retry"])
def test_unknown_job_id_exits_1(cfg, seed, command):
    line = one_line_error(cli(cfg, "jobs", command, "job_nope", check=False), 1)
    assert "job_nope" in line and "does not exist" in line


@pytest.mark.parametrize("command", [["jobs", "show"], ["dlq", "show"], ["tenants", "show"]])
def test_an_argument_that_is_not_utf8_exits_2_in_one_line(cfg, command):
    done = subprocess.run([*JOBD_BYTES, *(c.encode() for c in command), b"\xff",
                           b"--config", str(cfg).encode()], capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().strip().splitlines() == [
        "error: argument b'\\xff' is not valid UTF-8"]


def test_usage_errors_exit_2_in_one_line(cfg, seed):
    line = one_line_error(cli(cfg, "jobs", "list", "--status", "bogus", check=False), 2)
    assert "--status" in line and "bogus" in line and "queued" in line
    assert "jobd jobs list --help" in line
    one_line_error(cli(cfg, "jobs", "list", "--limit", "0", check=False), 2)
    line = one_line_error(cli(cfg, "jobs", "show", check=False), 2)
    assert "Missing argument" in line
    one_line_error(cli(cfg, "jobs", "frobnicate", check=False), 2)


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("[database\n", "not valid TOML"),
    ("[database]\nnope = 1\n", "database.nope"),
    ("[database]\nbusy_timeout = 'soon'\n", "busy_timeout"),
    ("dir", "cannot be read"),
])
def test_a_bad_config_file_exits_2(tmp_path, content, expected):
    path = tmp_path / "bad.toml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    commands = [("jobs", "list")] if content else [("jobs", "list"), ("jobs", "show", "x"), ("stats",)]
    for args in commands:
        line = one_line_error(cli(path, *args, check=False), 2)
        assert expected in line and "bad.toml" in line, line


@pytest.mark.parametrize("args", [("jobs", "list"), ("jobs", "show", "job_x"),
                                  ("jobs", "cancel", "job_x"), ("jobs", "retry", "job_x"),
                                  ("stats",), ("dlq", "list"), ("prune", "--dry-run")])
def test_a_missing_database_exits_1_and_says_what_to_do(tmp_path, args):
    # SQLite only: a missing file; a PostgreSQL database cannot be missing this way
    missing = tmp_path / "elsewhere" / "jobd.db"
    cfg = write_config(tmp_path / "jobd.toml", tmp_path, 0, database={"path": str(missing)})
    line = one_line_error(cli(cfg, *args, check=False), 1)
    assert str(missing) in line
    assert "jobd serve" in line and "database.path" in line
    assert not missing.exists() and not missing.parent.exists()  # nothing was created


@sqlite_only("holds SQLite's write lock; busy_timeout is SQLite's")
def test_a_database_locked_past_the_busy_timeout_exits_1(tmp_path, cfg, seed):
    now = time.time()
    job_id = seed.submit("acme", now=now, run_at=now + 3600)
    locked = write_config(tmp_path / "locked.toml", tmp_path, 0, database={"busy_timeout": 0.2})
    holder = sqlite3.connect(tmp_path / "jobd.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        proc = cli(locked, "jobs", "cancel", job_id, "--json", check=False)
        elapsed = time.monotonic() - started
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    line = one_line_error(proc, 1)
    assert "locked" in line and "busy_timeout" in line
    assert elapsed < 10
    assert cli_json(cfg, "jobs", "show", job_id)["status"] == "queued"  # nothing changed


@postgres_only("holds a row lock in a session of its own, as an open psql session may")
def test_a_row_locked_past_the_lock_timeout_exits_1(tmp_path, cfg, seed, config):
    now = time.time()
    job_id = seed.submit("acme", now=now, run_at=now + 3600)
    # the statement (and the lock wait: at most statement_timeout) gives up after 0.2 s
    locked = write_config(tmp_path / "locked.toml", tmp_path, 0,
                          database={"statement_timeout": 0.2})
    with Session(config.database.url) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job_id)
        started = time.monotonic()
        proc = cli(locked, "jobs", "cancel", job_id, "--json", check=False)
        elapsed = time.monotonic() - started
    line = one_line_error(proc, 1)
    assert re.search(r"(lock|statement) timeout", line), line
    assert mask_password(config.database.url) in line
    assert urlsplit(config.database.url).password not in line
    assert elapsed < 10
    assert cli_json(cfg, "jobs", "show", job_id)["status"] == "queued"  # nothing changed
