"""Helpers for end-to-end tests: a real ``jobd serve`` process, the real CLI, polling."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
JOBD = [sys.executable, "-m", "jobd.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T | None], *, timeout_s: float = 10.0, interval_s: float = 0.02,
             what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def write_config(path: Path, tmp: Path, port: int, **sections: dict[str, Any]) -> Path:
    data: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": port},
        "database": {"path": str(tmp / "jobd.db")},
        "workers": {"poll_interval": 0.05, "lease_seconds": 5, "shutdown_grace": 5},
        "jobs": {"backoff_base": 0.05, "backoff_max": 0.2},
        "webhooks": {"allow_private_networks": True, "retry_delays": [0.1, 0.2, 0.4],
                     "timeout": 2},
        "rate_limit": {"rate": 10000, "burst": 10000},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """One ``jobd serve`` process on a config file; restartable after a kill."""

    def __init__(self, config_path: Path, port: int, log_path: Path,
                 open_files: int | None = None) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.open_files = open_files  # RLIMIT_NOFILE of the process, if not inherited
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{port}"

    def start(self, timeout_s: float = 15.0) -> Daemon:
        limit = self.open_files

        def limit_files() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log_path.open("ab") as log:  # the process keeps its own copy
            self.proc = subprocess.Popen([*JOBD, "serve", "--config", str(self.config_path)],
                                         stdout=log, stderr=log, env=_env(),
                                         preexec_fn=limit_files)
        wait_for(self._healthy, timeout_s=timeout_s, what="jobd serve to be healthy")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"jobd serve exited with {self.proc.returncode}:\n{self.log()}")
        try:
            status, _, _ = request("GET", self.base + "/healthz")
        except OSError:
            return False
        return status == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBD_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(config_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``jobd ARGS --config PATH``; return the finished process."""
    proc = subprocess.run([*JOBD, *args, "--config", str(config_path)], capture_output=True,
                          text=True, env=_env(), timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"jobd {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def cli_json(config_path: Path, *args: str) -> Any:
    return json.loads(cli(config_path, *args, "--json").stdout)


def request(method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None,
            timeout_s: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """A plain HTTP call: (status, headers, parsed JSON body or text)."""
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, dict(resp.headers), _decode(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), _decode(exc.read())


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


class Client:
    """A tenant's view of the API."""

    def __init__(self, base: str, tenant_id: str, api_key: str) -> None:
        self.base = base
        self.tenant_id = tenant_id
        self.api_key = api_key

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def submit(self, job_type: str, payload: dict[str, Any] | None = None, *, key: str,
               **fields: Any) -> tuple[int, dict[str, str], Any]:
        body = {"tenantId": self.tenant_id, "type": job_type, "payload": payload or {}, **fields}
        return request("POST", self.base + "/jobs", body=body,
                       headers={**self.auth, "Idempotency-Key": key})

    def job(self, job_id: str) -> dict[str, Any]:
        status, _, body = request("GET", f"{self.base}/jobs/{job_id}", headers=self.auth)
        assert status == 200, (status, body)
        return dict(body)

    def wait_status(self, job_id: str, *statuses: str, timeout_s: float = 10.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None
        return wait_for(done, timeout_s=timeout_s, what=f"job {job_id} to be {statuses}")
