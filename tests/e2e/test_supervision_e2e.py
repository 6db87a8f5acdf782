"""The real daemon when a task cannot recover (it says so, then exits non-zero), and
SIGTERM's one deadline for everything that is still in flight."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.target import Target
from tests.support import _env, cli_json, free_port, request, wait_for, write_config

ROOT = Path(__file__).resolve().parents[2]


def _created(response: tuple[int, Any, Any]) -> str:
    status, _, body = response
    assert status == 201, body
    return str(body["jobId"])


def test_a_task_that_keeps_failing_makes_health_fail_and_the_daemon_exit_non_zero(tmp_path,
                                                                                 database):
    port = free_port()
    config = write_config(tmp_path / "jobd.toml", tmp_path, port)
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.faulty_daemon", "serve",
                             "--config", str(config)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def unhealthy() -> Any:
            try:
                status, _, body = request("GET", f"http://127.0.0.1:{port}/healthz")
            except OSError:
                return None
            return body if status == 503 and body.get("code") == "task_failed" else None
        body = wait_for(unhealthy, timeout_s=20, what="/healthz to say a task failed")
        assert "pruner failed 8 times in a row" in body["detail"]
        assert "RuntimeError: injected fault" in body["detail"]
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    lines = err.splitlines()
    assert lines[-1].startswith("error: stopped because a task failed: pruner failed 8 times")
    retries = [line for line in lines if "pruner failed (RuntimeError: injected fault" in line]
    assert len(retries) == 7  # one line each, then the give-up
    assert any("CRITICAL" in line and "pruner gave up" in line for line in lines)
    assert "Traceback" not in err


def test_sigterm_ends_within_the_grace_with_a_long_job_and_a_stalled_webhook(make_env):
    grace_s = 3.0
    env = make_env(workers={"shutdown_grace": grace_s}, webhooks={"timeout": 30})
    env.daemon.start()
    with Target() as target:
        target.hanging.update({"/slow", "/hook"})
        slow = _created(env.client.submit("http", {"url": target.url("/slow"),
                                                   "timeoutSeconds": 60}, key="slow",
                                          timeoutSeconds=60))
        hooked = _created(env.client.submit("noop", key="hooked",
                                            webhookUrl=target.url("/hook")))
        env.client.wait_status(slow, "running")
        wait_for(lambda: target.count("/hook") and target.count("/slow"),
                 what="the job's request and the webhook to be in flight")
        started = time.monotonic()
        assert env.daemon.terminate(timeout_s=30) == 0
        took_s = time.monotonic() - started
    assert took_s < grace_s + 2, f"SIGTERM took {took_s:.1f}s with a grace of {grace_s}s"
    shown = cli_json(env.config, "jobs", "show", slow)
    assert shown["status"] == "queued" and "shutdown" in shown["lastError"]
    [delivery] = cli_json(env.config, "jobs", "show", hooked)["deliveries"]
    assert delivery["status"] == "pending"  # sent again at the next start
