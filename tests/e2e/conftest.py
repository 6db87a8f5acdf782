"""End-to-end fixtures: a real ``jobd serve`` process, a tenant made with the real CLI."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Databases
from tests.e2e.receiver import receiver
from tests.e2e.target import Target
from tests.support import Client, Daemon, cli_json, free_port, write_config, written_config

pytestmark = pytest.mark.e2e
__all__ = ["receiver"]  # a fixture for every e2e test


class Env:
    def __init__(self, tmp_path: Path, **sections: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.config = write_config(tmp_path / "jobd.toml", tmp_path, self.port, **sections)
        self.database = written_config(self.config).database
        self.daemon = Daemon(self.config, self.port, tmp_path / "jobd.log")
        creds = cli_json(self.config, "tenants", "create", "acme")
        self.client = Client(self.daemon.base, creds["tenantId"], creds["apiKey"])
        self.webhook_secret = creds["webhookSecret"]


SECRET = re.compile(r"(?:jobd_sk_|whsec_)[A-Za-z0-9_\-+/=]{20,}")


@pytest.fixture(autouse=True)
def no_secret_in_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Every end-to-end test: no API key or webhook secret the CLI printed during it
    (``tenants create``, ``rotate-key``) is in any log file it left (the daemons').
    Yields the secrets seen so far."""
    secrets: set[str] = set()
    run = subprocess.run

    def run_and_record(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        done = run(*args, **kwargs)
        for output in (done.stdout, done.stderr):
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
            if isinstance(output, str):
                secrets.update(SECRET.findall(output))
        return done

    monkeypatch.setattr(subprocess, "run", run_and_record)
    yield secrets
    for log in tmp_path.rglob("*.log"):
        text = log.read_text(errors="replace")
        leaked = [secret[:12] for secret in secrets if secret in text]
        assert not leaked, f"{log} carries a key or secret: {leaked}"


@pytest.fixture
def make_env(tmp_path: Path, database: Databases) -> Iterator[Callable[..., Env]]:
    envs: list[Env] = []

    def make(**sections: dict[str, Any]) -> Env:
        where = tmp_path / f"env{len(envs)}"
        where.mkdir()
        env = Env(where, **sections)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.daemon.stop()


@pytest.fixture
def target() -> Iterator[Target]:
    with Target() as t:
        yield t
