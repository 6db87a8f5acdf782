"""The real daemon against a SQLite database it cannot write: locked by another process
past busy_timeout, on a full disk (a small tmpfs), and the modes of the files it creates.
(PostgreSQL's failures, a server that goes away and comes back, a statement past its
timeout: tests/store_pg.)"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobd.clock import to_rfc3339
from tests.conftest import sqlite_only
from tests.e2e.conftest import Env
from tests.support import request, wait_for

pytestmark = sqlite_only("SQLite's write lock, a full disk under its file, its files' modes")

DISK_BYTES = 8 * 1024 * 1024


def _created(response: tuple[int, Any, Any]) -> str:
    status, _, body = response
    assert status == 201, body
    return str(body["jobId"])


def _health(env: Env) -> tuple[int, Any]:
    status, _, body = request("GET", env.daemon.base + "/healthz")
    return status, body


def _health_is(env: Env, code: str | None) -> Any:
    """Wait until /healthz answers 200 (``code`` None) or 503 with ``code``."""
    def check() -> Any:
        status, body = _health(env)
        if code is None:
            return body if status == 200 else None
        return body if status == 503 and body.get("code") == code else None
    return wait_for(check, timeout_s=15, what=f"/healthz to say {code or 'ok'}")


# ------------------------------------------------------------------ a lock held elsewhere


def test_a_write_lock_held_past_busy_timeout_delays_queued_jobs_but_they_run(make_env):
    env = make_env(database={"busy_timeout": 0.05})
    env.daemon.start()
    due = to_rfc3339(time.time() + 1.0)  # queued now; due while the lock is held
    jobs = [_created(env.client.submit("noop", key=f"k{i}", runAt=due)) for i in range(3)]
    holder = sqlite3.connect(env.tmp_path / "jobd.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        # the scheduler's claim of the jobs that fell due failed, and that was logged
        wait_for(lambda: "scheduler failed" in env.daemon.log(), timeout_s=15,
                 what="the failed claim to be logged")
        body = _health_is(env, "writes_failing")
        assert "locked" in body["detail"]
        assert {env.client.job(j)["status"] for j in jobs} == {"queued"}  # reads work
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for job_id in jobs:
        env.client.wait_status(job_id, "succeeded")
    _health_is(env, None)
    log = env.daemon.log()
    assert "database is locked" in log and "scheduler works again" in log
    assert "Traceback" not in log


# ------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES, mounted for the test (needs root; CI runs as root)."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0755", "tmpfs",
                    str(where)], check=True)
    try:
        yield where
        for db in where.glob("*.db"):  # before the files go away with the mount
            conn = sqlite3.connect(db)
            try:
                assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            finally:
                conn.close()
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> None:
    """Write zeros until the disk is full."""
    chunk = bytes(64 * 1024)
    with (disk / "filler").open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    with (disk / "filler2").open("wb", buffering=0) as f:  # the last partial blocks
        for size in (4096, 512, 1):
            while True:
                try:
                    f.write(bytes(size))
                except OSError:
                    break


def _free(disk: Path) -> None:
    for name in ("filler", "filler2"):
        (disk / name).unlink()


def _submit_until_refused(env: Env) -> tuple[int, Any]:
    """The WAL may have room inside it: write until a write is refused."""
    big = {"blob": "x" * 20_000}
    for i in range(1000):
        status, _, body = env.client.submit("noop", big, key=f"fill-{i}",
                                            runAt=to_rfc3339(time.time() + 3600))
        if status != 201:
            return status, body
    raise AssertionError("every write succeeded on a full disk")


def test_on_a_full_disk_health_says_writes_fail_reads_work_and_it_recovers(make_env,
                                                                             small_disk):
    env = make_env(database={"path": str(small_disk / "jobd.db")})
    env.daemon.start()
    first = _created(env.client.submit("noop", key="before"))
    env.client.wait_status(first, "succeeded")
    _fill(small_disk)
    status, body = _submit_until_refused(env)
    assert (status, body["code"]) == (503, "store_unavailable")
    health = _health_is(env, "writes_failing")
    assert "full" in health["detail"]
    assert env.client.job(first)["status"] == "succeeded"
    _free(small_disk)
    _health_is(env, None)  # without any request: the writer tries by itself
    after = _created(env.client.submit("noop", key="after"))
    env.client.wait_status(after, "succeeded")
    assert env.daemon.terminate() == 0
    log = env.daemon.log()
    assert "database or disk is full" in log and "succeed again" in log
    assert "Traceback" not in log


def test_a_job_that_ends_on_a_full_disk_is_recorded_once_there_is_room(make_env, small_disk,
                                                                       target):
    lease_s = 30.0  # a job left to its lease would run again only after this
    env = make_env(database={"path": str(small_disk / "jobd.db")},
                   workers={"lease_seconds": lease_s})
    env.daemon.start()
    target.hanging.add("/slow")
    job_id = _created(env.client.submit("http", {"url": target.url("/slow")}, key="slow"))
    wait_for(lambda: target.count("/slow") == 1, timeout_s=5, what="the job to start")
    _fill(small_disk)
    _submit_until_refused(env)  # no room left, not even in the WAL
    target.release.set()  # the job ends now; its outcome cannot be written
    wait_for(lambda: "could not record the outcome of job " + job_id in env.daemon.log(),
             timeout_s=10, what="the outcome refused")
    assert env.client.job(job_id)["status"] == "running"
    _free(small_disk)
    freed_at = time.monotonic()
    done = env.client.wait_status(job_id, "succeeded", timeout_s=lease_s)
    assert time.monotonic() - freed_at < lease_s / 3  # written again, not left to the lease
    assert done["attempts"] == 1
    assert target.count("/slow") == 1
    assert env.daemon.terminate() == 0
    assert "Traceback" not in env.daemon.log()


def test_serve_starts_on_a_full_disk_serves_reads_and_resumes_when_there_is_room(
        make_env, small_disk):
    env = make_env(database={"path": str(small_disk / "jobd.db")},
                   workers={"shutdown_grace": 0.2})
    env.daemon.start()
    due = to_rfc3339(time.time() + 2)
    waiting = _created(env.client.submit("noop", key="waiting", runAt=due))
    assert env.daemon.terminate() == 0
    _fill(small_disk)
    env.daemon.start(healthy=False)
    health = _health_is(env, "writes_failing")
    assert "full" in health["detail"]
    assert env.client.job(waiting)["status"] == "queued"
    _free(small_disk)
    _health_is(env, None)
    env.client.wait_status(waiting, "succeeded")
    assert env.daemon.terminate() == 0


# ------------------------------------------------------------------ file modes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_and_every_file_beside_it_are_private(make_env, tmp_path):
    old = os.umask(0o022)  # the usual umask, whatever the test runner's
    try:
        env = make_env()  # the CLI creates the database (tenants create)
        db = env.tmp_path / "jobd.db"
        made_by_cli = {p.name: _mode(p) for p in env.tmp_path.glob("jobd.db*")}
        assert made_by_cli and set(made_by_cli.values()) == {0o600}, made_by_cli
        env.daemon.start()
        made = {name: _mode(db.with_name(name))
                for name in ("jobd.db", "jobd.db-wal", "jobd.db-shm", "jobd.db.lock")}
        assert set(made.values()) == {0o600}, made
    finally:
        os.umask(old)
