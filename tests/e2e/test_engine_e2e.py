"""The execution engine as a user sees it: the real daemon, the real CLI, real HTTP and SMTP."""

from __future__ import annotations

import email
import os
import random
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiosmtpd.controller import Controller

from jobd.models import ALLOWED_TRANSITIONS, JobStatus
from tests.conftest import sqlite_only
from tests.stores import stored_rows
from tests.support import JOBD, cli_json, free_port, wait_for


def _created(resp: tuple[int, dict[str, str], Any]) -> str:
    status, _, body = resp
    assert status == 201, body
    return str(body["jobId"])


def test_noop_job_succeeds_with_one_attempt(make_env):
    env = make_env()
    env.daemon.start()
    job_id = _created(env.client.submit("noop", {"x": 1}, key="k1"))
    job = env.client.wait_status(job_id, "succeeded")
    assert job["attempts"] == 1
    assert job["nextRunAt"] is None
    assert job["result"] == {"ok": True}


def test_http_job_against_500_goes_through_retry_to_fatal(make_env, target):
    env = make_env()
    env.daemon.start()
    url = target.script("/always500", [500])
    job_id = _created(env.client.submit("http", {"url": url}, key="k", maxAttempts=3))
    seen = _watch_statuses(env.client, job_id, until={"fatal"})
    assert "retry" in seen
    job = env.client.job(job_id)
    assert job["attempts"] == 3
    assert "500" in job["lastError"]
    assert target.count("/always500") == 3


def test_http_job_500_500_200_succeeds_on_third_attempt(make_env, target):
    env = make_env()
    env.daemon.start()
    url = target.script("/flaky", [500, 500, 200])
    job_id = _created(env.client.submit("http", {"url": url}, key="k", maxAttempts=5))
    seen = _watch_statuses(env.client, job_id, until={"succeeded"})
    job = env.client.job(job_id)
    assert job["attempts"] == 3
    assert job["result"]["status"] == 200
    assert seen[-1] == "succeeded"


def _reachable(start: JobStatus) -> set[JobStatus]:
    seen, todo = set(), [start]
    while todo:
        for nxt in ALLOWED_TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _watch_statuses(client: Any, job_id: str, *, until: set[str], timeout_s: float = 15) -> list[str]:
    """Poll a job; every change seen must be reachable along allowed transitions
    (polling can miss short states, never invent impossible ones)."""
    seen: list[str] = []

    def step() -> bool:
        status = client.job(job_id)["status"]
        if not seen or seen[-1] != status:
            if seen:
                assert JobStatus(status) in _reachable(JobStatus(seen[-1])), (seen, status)
            seen.append(status)
        return status in until

    wait_for(step, timeout_s=timeout_s, interval_s=0.005, what=f"{job_id} to reach {until}")
    return seen


def test_run_at_in_the_future_does_not_start_early(make_env):
    env = make_env()
    env.daemon.start()
    run_at = datetime.now(UTC) + timedelta(seconds=2)
    job_id = _created(env.client.submit("noop", key="later",
                                        runAt=run_at.isoformat().replace("+00:00", "Z")))
    queued = env.client.job(job_id)
    assert queued["status"] == "queued"
    assert queued["nextRunAt"] is not None
    # Until shortly before runAt, every look must find it still waiting.
    while datetime.now(UTC) < run_at - timedelta(milliseconds=200):
        assert env.client.job(job_id)["status"] == "queued"
        time.sleep(0.02)
    job = env.client.wait_status(job_id, "succeeded", timeout_s=5)
    started = datetime.fromisoformat(job["startedAt"].replace("Z", "+00:00"))
    assert started >= run_at - timedelta(milliseconds=1)
    assert started - run_at < timedelta(seconds=1)


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"


def test_email_job_reaches_a_real_smtp_server(make_env):
    inbox = _Inbox()
    port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        env = make_env(smtp={"host": "127.0.0.1", "port": port, "from": "jobs@example.com"})
        env.daemon.start()
        job_id = _created(env.client.submit(
            "email", {"to": ["a@example.com", "b@example.com"], "subject": "Hello",
                      "body": "Welcome!", "cc": "c@example.com"}, key="mail"))
        env.client.wait_status(job_id, "succeeded")
        assert len(inbox.messages) == 1
        envelope = inbox.messages[0]
        assert sorted(envelope.rcpt_tos) == ["a@example.com", "b@example.com", "c@example.com"]
        message = email.message_from_bytes(envelope.content)
        assert message["Subject"] == "Hello"
        assert message["From"] == "jobs@example.com"
        assert "Welcome!" in message.get_payload(decode=True).decode()
    finally:
        smtp.stop()


def test_one_worker_takes_waiting_jobs_in_turn_and_an_idle_one_starts_a_new_job_at_once(
        make_env, target):
    # A poll interval far beyond the test: only wake-ups and direct starts move jobs.
    env = make_env(workers={"concurrency": 1, "poll_interval": 60})
    env.daemon.start()
    target.hanging.add("/first")
    first = _created(env.client.submit("http", {"url": target.url("/first")}, key="first"))
    wait_for(lambda: env.client.job(first)["status"] == "running", timeout_s=5,
             what="the first job to start")
    later = [_created(env.client.submit("http", {"url": target.url(f"/later{i}")}, key=f"l{i}"))
             for i in range(3)]
    assert [env.client.job(j)["status"] for j in later] == ["queued"] * 3
    target.release.set()
    for job_id in [first, *later]:
        assert env.client.wait_status(job_id, "succeeded")["attempts"] == 1
    hits = [target.hits[f"/later{i}"][0] for i in range(3)]
    assert hits == sorted(hits), "the waiting jobs ran out of turn"
    # idle again: a new job is created running, with no claim in between
    last = _created(env.client.submit("noop", {}, key="last"))
    env.client.wait_status(last, "succeeded")
    [row] = stored_rows(env.database, "SELECT created_at, started_at FROM jobs WHERE id = ?",
                        last)
    [(queued_started,)] = stored_rows(env.database, "SELECT count(*) FROM jobs WHERE id IN "
                                      "(?, ?, ?) AND started_at > created_at", *later)
    assert row["started_at"] == row["created_at"]
    assert queued_started == 3


def test_kill9_while_five_jobs_run_then_restart_finishes_all(make_env, target):
    env = make_env()
    env.daemon.start()
    url = target.url("/slow")
    target.hanging.add("/slow")
    ids = [_created(env.client.submit("http", {"url": url}, key=f"k{i}")) for i in range(5)]
    wait_for(lambda: all(env.client.job(i)["status"] == "running" for i in ids),
             what="5 jobs running")
    env.daemon.kill9()
    target.hanging.discard("/slow")
    target.release.set()
    env.daemon.start()
    for job_id in ids:
        job = env.client.wait_status(job_id, "succeeded", timeout_s=15)
        assert job["attempts"] == 2
    listed = cli_json(env.config, "jobs", "list", "--status", "running")
    assert listed == []


def test_sigterm_during_a_job_puts_it_back_and_it_finishes_later(make_env, target):
    env = make_env(workers={"shutdown_grace": 0.3})
    env.daemon.start()
    target.hanging.add("/slow")
    job_id = _created(env.client.submit("http", {"url": target.url("/slow")}, key="k"))
    env.client.wait_status(job_id, "running")
    assert env.daemon.terminate() == 0
    shown = cli_json(env.config, "jobs", "show", job_id)
    assert shown["status"] == "queued"
    assert "shutdown" in shown["lastError"]
    target.hanging.discard("/slow")
    target.release.set()
    env.daemon.start()
    assert env.client.wait_status(job_id, "succeeded")["status"] == "succeeded"


class Burst:
    """Threads POSTing noop jobs until stopped (or the daemon goes away); keeps every
    jobId that got a 201."""

    def __init__(self, client: Any, tag: str, threads: int = 4) -> None:
        self.client = client
        self.tag = tag
        self.acked: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post, args=(t,)) for t in range(threads)]

    def __enter__(self) -> Burst:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _post(self, thread_no: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                status, _, body = self.client.submit("noop", key=f"{self.tag}-t{thread_no}-{n}")
            except OSError:
                return
            if status == 201:
                self.acked.append(body["jobId"])


def test_kill9_during_a_burst_loses_no_acknowledged_job(make_env):
    env = make_env()
    rounds, acknowledged = int(os.environ.get("JOBD_CRASH_ROUNDS", "3")), []
    rng = random.Random(7)
    env.daemon.start()
    for round_no in range(rounds):
        with Burst(env.client, f"r{round_no}") as burst:
            wait_for(lambda burst=burst: len(burst.acked) > 20, what="some jobs acknowledged")
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment in the burst
            env.daemon.kill9()
        acknowledged.extend(burst.acked)
        env.daemon.start()
    for job_id in acknowledged:
        env.client.wait_status(job_id, "succeeded", timeout_s=20)
    assert cli_json(env.config, "jobs", "list", "--status", "running") == []
    assert len(set(acknowledged)) == len(acknowledged) > 20 * rounds


def test_sigterm_under_load_leaves_nothing_running(make_env):
    env = make_env()
    env.daemon.start()
    with Burst(env.client, "sigterm") as burst:
        wait_for(lambda: len(burst.acked) > 200, what="a few hundred jobs acknowledged")
        assert env.daemon.terminate() == 0
    assert cli_json(env.config, "jobs", "list", "--status", "running") == []
    env.daemon.start()
    for job_id in burst.acked:
        env.client.wait_status(job_id, "succeeded", timeout_s=20)


@sqlite_only("the SQLite file's lock keeps a second daemon out; on PostgreSQL nodes share a "
             "database")
def test_a_second_daemon_on_the_same_database_refuses_to_start(make_env):
    env = make_env()
    env.daemon.start()
    second = subprocess.run([*JOBD, "serve", "--config", str(env.config)], capture_output=True,
                            text=True, timeout=30)
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert "Traceback" not in second.stderr
    # the first one is unharmed
    job_id = _created(env.client.submit("noop", key="still-fine"))
    env.client.wait_status(job_id, "succeeded")


def test_a_port_in_use_is_one_line_on_stderr(make_env):
    env = make_env()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", env.port))
        busy.listen()
        proc = subprocess.run([*JOBD, "serve", "--config", str(env.config)], capture_output=True,
                              text=True, timeout=30)
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr
    assert "Traceback" not in proc.stderr
