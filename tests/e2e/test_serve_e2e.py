"""``jobd serve`` as a service manager and an operator meet it: the config file it says it
read, systemd's readiness protocol, a port already taken, and what disabling a tenant
does to the jobs it has already queued."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import Databases
from tests.e2e.target import Target
from tests.support import JOBD, _env, cli, cli_json, free_port, reap, request, wait_for, write_config


def test_serve_logs_which_config_file_it_read(make_env: Any) -> None:
    env = make_env()
    env.daemon.start()
    wait_for(lambda: "config file" in env.daemon.log(), what="the config line in the log")
    assert f"config file {env.config} (from --config)" in env.daemon.log()


def test_serve_tells_systemd_when_it_is_ready_and_when_it_stops(tmp_path: Path,
                                                                database: Databases) -> None:
    port = free_port()
    config = write_config(tmp_path / "jobd.toml", tmp_path, port)
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(20)
        proc = subprocess.Popen([*JOBD, "serve", "--config", str(config)],
                                env={**_env(), "NOTIFY_SOCKET": address},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            ready = notify.recv(4096).decode()
            assert ready.splitlines()[0] == "READY=1"
            assert f"STATUS=serving on http://127.0.0.1:{port}" in ready
            # READY means ready: the API answers at once
            status, _, body = request("GET", f"http://127.0.0.1:{port}/healthz")
            assert (status, body) == (200, {"status": "ok"})
            proc.send_signal(signal.SIGTERM)
            assert notify.recv(4096).decode().splitlines()[0] == "STOPPING=1"
            _, stderr = proc.communicate(timeout=20)
            assert proc.returncode == 0, stderr
        finally:
            reap(proc)


def test_a_port_in_use_names_the_setting_and_the_variable(tmp_path: Path,
                                                          database: Databases) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "jobd.toml", tmp_path, port)
        proc = subprocess.run([*JOBD, "serve", "--config", str(config)], env=_env(),
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in errors[0]
    assert "server.port" in errors[0] and "JOBD_SERVER_PORT" in errors[0]


def test_a_disabled_tenant_is_refused_but_its_queued_jobs_still_run_and_send_webhooks(
        make_env: Any) -> None:
    env = make_env(workers={"concurrency": 1})
    env.daemon.start()
    with Target() as target:
        target.hanging.add("/slow")  # the one worker stays busy until released
        status, _, body = env.client.submit("http", {"url": target.url("/slow")}, key="busy")
        assert status == 201, body
        wait_for(lambda: target.count("/slow") == 1, what="the first job to be running")
        status, _, body = env.client.submit("noop", {"n": 1}, key="waiting",
                                            webhookUrl=target.url("/hook"))
        assert status == 201, body
        job_id = body["jobId"]

        disabled = cli(env.config, "tenants", "disable", "acme")
        assert "does not pause the tenant" in " ".join(disabled.stderr.split())
        assert cli_json(env.config, "jobs", "show", job_id)["status"] == "queued"
        assert request("GET", f"{env.daemon.base}/jobs/{job_id}",
                       headers=env.client.auth)[0] == 401

        # what the output said: the queued job still runs, and its webhook is still sent
        target.release.set()
        wait_for(lambda: target.count("/hook") >= 1, timeout_s=15,
                 what="the disabled tenant's webhook")
        assert cli_json(env.config, "jobs", "show", job_id)["status"] == "succeeded"
