"""End-to-end fixtures: a real ``jobd serve`` process, a tenant made with the real CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.target import Target
from tests.support import Client, Daemon, cli_json, free_port, write_config

pytestmark = pytest.mark.e2e


class Env:
    def __init__(self, tmp_path: Path, **sections: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.config = write_config(tmp_path / "jobd.toml", tmp_path, self.port, **sections)
        self.daemon = Daemon(self.config, self.port, tmp_path / "jobd.log")
        creds = cli_json(self.config, "tenants", "create", "acme")
        self.client = Client(self.daemon.base, creds["tenantId"], creds["apiKey"])
        self.webhook_secret = creds["webhookSecret"]


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[..., Env]]:
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
