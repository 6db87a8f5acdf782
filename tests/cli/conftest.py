"""CLI tests: a database prepared through the store's protocol, then the real CLI.

Times are explicit ``now`` values relative to the real clock (the CLI reads the
system clock for "last minute", "oldest queued" and retention cutoffs).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobd.cli.main import main as jobd_main
from jobd.models import JobStatus, NewJob
from jobd.store.backend import Rotation
from tests.conftest import T0
from tests.stores import BlockingStore
from tests.support import write_config

OWNER = "cli-test-worker"
KEY_TTL_S = 3600.0


class InProcessCli:
    """``jobd ARGS --config PATH`` through the CLI's real entry point (``run_cli``: exit
    codes, one-line errors) inside the test process: the same code as the console script
    without half a second of interpreter start-up per call. An exception that escapes
    ``main`` fails the test, as a traceback would. Tests that need a real process
    (signals, the interpreter's own output) use ``tests.support.cli``."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["jobd", *args, "--config", str(self.config_path)]
        stdout, stderr = io.StringIO(), io.StringIO()
        saved = sys.argv, sys.stdin
        sys.argv, sys.stdin = argv, io.StringIO()  # not a terminal: nothing asks
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    jobd_main()
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv, sys.stdin = saved
        proc = subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())
        if check and code != 0:
            raise AssertionError(f"jobd {' '.join(args)} exited {code}: {proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def jobd(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> InProcessCli:
    for name in list(os.environ):
        if name.startswith("JOBD_"):
            monkeypatch.delenv(name)
    return InProcessCli(cfg)


@pytest.fixture
def cfg(tmp_path: Path, blocking_store: BlockingStore) -> Path:
    """A config on the ``blocking_store`` fixture's database (tmp_path / "jobd.db")."""
    return write_config(tmp_path / "jobd.toml", tmp_path, 0, jobs={"retention_days": 1},
                        idempotency={"ttl_hours": KEY_TTL_S / 3600})


class Seeder:
    """Jobs in any state, made by the same transactions the daemon runs."""

    def __init__(self, store: BlockingStore) -> None:
        self.store = store
        self._keys = itertools.count(1)

    def submit(self, tenant: str = "acme", *, now: float, run_at: float | None = None,
               type: str = "noop", payload: dict[str, Any] | None = None,
               webhook_url: str | None = None, max_attempts: int = 3) -> str:
        key = f"key-{next(self._keys)}"
        job = NewJob(tenant_id=tenant, type=type, payload=orjson.dumps(payload or {"n": 1}).decode(),
                     priority=0, max_attempts=max_attempts, timeout_seconds=None,
                     run_at=now if run_at is None else run_at, webhook_url=webhook_url,
                     idempotency_key=key)
        result = self.store.run(lambda b: b.insert_job(
            job, body_hash=hashlib.sha256(key.encode()).digest(), now=now,
            idempotency_ttl_s=KEY_TTL_S))
        return result.job_id

    def attempt(self, job_id: str, *, now: float, error: str | None = None,
                final: bool = False, finish: bool = True, retry_at: float | None = None) -> None:
        """Claim ``job_id`` (it must be the only due job) and record one attempt:
        success without ``error``, else a retry (due at ``retry_at``, default at once)
        or, if ``final``, fatal. ``finish=False`` leaves it running."""
        claimed = self.store.run(lambda b: b.claim_jobs(now=now, limit=10, owner=OWNER,
                                                        lease_s=3600, rotation=Rotation())).jobs
        assert [c.id for c in claimed] == [job_id]
        [job] = claimed
        if not finish:
            return
        if error is None:
            ok = self.store.run(lambda b: b.finish_job(
                job, owner=OWNER, status=JobStatus.SUCCEEDED, now=now, result_json='{"ok": true}'))
        elif final:
            ok = self.store.run(lambda b: b.finish_job(job, owner=OWNER, status=JobStatus.FATAL,
                                                       now=now, error=error))
        else:
            ok = self.store.run(lambda b: b.retry_job_later(
                job, owner=OWNER, now=now, next_run_at=now if retry_at is None else retry_at,
                error=error))
        assert ok

    def succeeded(self, tenant: str = "acme", *, at: float, **fields: Any) -> str:
        job_id = self.submit(tenant, now=at, **fields)
        self.attempt(job_id, now=at)
        return job_id

    def fatal(self, tenant: str = "acme", *, at: float, errors: int = 1, **fields: Any) -> str:
        job_id = self.submit(tenant, now=at, max_attempts=errors, **fields)
        for n in range(1, errors + 1):
            self.attempt(job_id, now=at + n * 0.001, error=f"boom {n}", final=n == errors)
        return job_id

    def deliver(self, job_id: str, *, now: float, status_codes: list[int],
                dead: bool = True) -> str:
        """Send the job's pending webhook once per status code; a last failure moves it to
        the DLQ (``dead``) or leaves it pending for an hour."""
        [delivery] = self.store.run(lambda b: b.deliveries_of_job(job_id))
        for number, code in enumerate(status_codes, 1):
            [claimed] = self.store.run(lambda b: b.claim_deliveries(now=now, limit=1, lease_s=60))
            assert claimed.id == delivery.id
            failed = code >= 300
            last = number == len(status_codes)
            self.store.run(lambda b, claimed=claimed, failed=failed, last=last, code=code:
                           b.record_delivery_attempt(
                               claimed, now=now, attempted_at=now, status_code=code,
                               error=f"HTTP {code}" if failed else None, duration_ms=2.0,
                               retry_at=None if last and dead else now + (3600 if last else 0)))
        return delivery.id


def make_tenant(db: BlockingStore, tenant_id: str = "acme") -> None:
    db.run(lambda b: b.create_tenant(tenant_id, rate=1000, burst=1000, max_concurrency=None,
                                     now=T0))


@pytest.fixture
def db(blocking_store: BlockingStore) -> BlockingStore:
    """The store the CLI's database was prepared with, to look at what a command did."""
    return blocking_store


@pytest.fixture
def seed(db: BlockingStore) -> Iterator[Seeder]:
    make_tenant(db, "acme")
    make_tenant(db, "other")
    yield Seeder(db)
