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
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from jobd.cli.config import render_toml
from jobd.config import Config

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


# Settings every test starts from: a database in the test's own directory, tiny delays,
# loopback webhooks allowed, rate limits out of the way. One dict, rendered either to a
# Config (make_config) or to a TOML file for a jobd process (write_config).
TEST_DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {"host": "127.0.0.1", "port": 0},
    "workers": {"poll_interval": 0.05, "lease_seconds": 5, "shutdown_grace": 2},
    "jobs": {"backoff_base": 0.05, "backoff_max": 0.2},
    "webhooks": {"allow_private_networks": True, "retry_delays": [0.1, 0.2, 0.4], "timeout": 2},
    "rate_limit": {"rate": 10000, "burst": 10000},
}


def sqlite_database(tmp: Path) -> dict[str, Any]:
    """The ``[database]`` section of a config kept in ``tmp``: SQLite at ``tmp / "jobd.db"``."""
    return {"path": str(tmp / "jobd.db")}


# The [database] section for a config kept in a directory. SQLite unless the test runs on
# PostgreSQL: then tests/conftest.py's ``database`` fixture puts here a function that
# gives each directory a database of its own on the test server ({"url": ...}).
database_for: Callable[[Path], dict[str, Any]] = sqlite_database


def config_data(tmp: Path, **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """:data:`TEST_DEFAULTS` with the database of ``tmp`` (:data:`database_for`: SQLite at
    ``tmp / "jobd.db"``, or the test's PostgreSQL database for ``tmp``), then ``sections``
    merged key by key (``workers={"concurrency": 2}`` keeps the other workers keys)."""
    data = {name: dict(values) for name, values in TEST_DEFAULTS.items()}
    data["database"] = database_for(tmp)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """The test settings as a :class:`Config`, for code run inside the test process."""
    return Config.model_validate(config_data(tmp_path, **sections))


def write_config(path: Path, tmp: Path, port: int, **sections: dict[str, Any]) -> Path:
    """The test settings as a TOML file at ``path``, for a ``jobd`` process."""
    server = {"port": port, **sections.pop("server", {})}
    path.write_text(render_toml(config_data(tmp, server=server, **sections)))
    return path


def written_config(path: Path) -> Config:
    """The config a ``jobd`` process reads from the file at ``path`` (no JOBD_* variables:
    :func:`cli` and :class:`Daemon` run without them)."""
    with path.open("rb") as fh:
        return Config.model_validate(tomllib.load(fh))


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc`` if a test left it running, and wait for it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


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

    def start(self, timeout_s: float = 15.0, *, healthy: bool = True) -> Daemon:
        """Start and wait until /healthz answers 200 (with ``healthy=False``: answers)."""
        limit = self.open_files

        def limit_files() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log_path.open("ab") as log:  # the process keeps its own copy
            self.proc = subprocess.Popen([*JOBD, "serve", "--config", str(self.config_path)],
                                         stdout=log, stderr=log, env=_env(),
                                         preexec_fn=limit_files)
        wait_for(lambda: self._answers(healthy), timeout_s=timeout_s,
                 what="jobd serve to be healthy" if healthy else "jobd serve to answer")
        return self

    def _answers(self, healthy: bool) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"jobd serve exited with {self.proc.returncode}:\n{self.log()}")
        try:
            status, _, _ = request("GET", self.base + "/healthz")
        except OSError:
            return False
        return status == 200 or not healthy

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
    """The test run's environment without JOBD_* settings or a service manager's socket."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBD_") and k != "NOTIFY_SOCKET"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(config_path: Path, *args: str, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``jobd ARGS --config PATH`` (not on a terminal; ``env`` added to the
    environment); return the finished process."""
    proc = subprocess.run([*JOBD, *args, "--config", str(config_path)], capture_output=True,
                          stdin=subprocess.DEVNULL, text=True, env={**_env(), **(env or {})},
                          timeout=60)
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
