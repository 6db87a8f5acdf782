"""Shared fixtures: a real SQLite file per test, checked with integrity_check afterwards."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobd.config import Config
from jobd.models import NewTenant
from jobd.store import tenants as store_tenants
from jobd.store.database import Database
from jobd.store.store import Store

pytest_plugins = ["tests.pg"]  # pg_url, pg_database_url: a throwaway PostgreSQL

T0 = 1_750_000_000.0


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A config for tests: a temp database, tiny delays, loopback allowed."""
    data: dict[str, Any] = {
        "database": {"path": str(tmp_path / "jobd.db")},
        "server": {"host": "127.0.0.1", "port": 0},
        "workers": {"poll_interval": 0.05, "lease_seconds": 5, "shutdown_grace": 2},
        "jobs": {"backoff_base": 0.01, "backoff_max": 0.05},
        "webhooks": {"allow_private_networks": True, "retry_delays": [0.05, 0.1, 0.2],
                     "timeout": 2},
        "rate_limit": {"rate": 1000, "burst": 1000},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.model_validate(data)


@pytest.fixture(autouse=True)
def _integrity_check(tmp_path: Path) -> Iterator[None]:
    yield
    for path in tmp_path.rglob("*.db"):
        conn = sqlite3.connect(path)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
        assert result == [("ok",)], f"{path}: {result}"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def db(config: Config) -> Iterator[Database]:
    with Database(config.database) as database:
        yield database


@pytest.fixture
def new_tenant(db: Database) -> Callable[..., NewTenant]:
    def create(tenant_id: str = "acme", *, rate: float = 1000, burst: int = 1000,
               max_concurrency: int | None = None) -> NewTenant:
        return db.write(store_tenants.create_tenant, tenant_id, rate=rate, burst=burst,
                        max_concurrency=max_concurrency, now=T0)
    return create


@pytest.fixture
def store(config: Config, db: Database) -> Iterator[Store]:
    s = Store(config.database)
    s.open()
    yield s
    s.close()
