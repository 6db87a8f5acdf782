"""Shared fixtures: a real SQLite file per test, checked with integrity_check afterwards;
the store opened on it (``store``, or ``blocking_store`` for tests without an event loop)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

import jobd.config
from jobd.config import Config
from jobd.models import NewTenant
from jobd.store import open_backend
from jobd.store.backend import Backend
from tests.stores import BlockingStore
from tests.support import make_config

__all__ = ["T0", "make_config"]  # make_config is imported from here by many tests

pytest_plugins = ["tests.pg"]  # pg_url, pg_database_url: a throwaway PostgreSQL

T0 = 1_750_000_000.0

NewTenantFactory = Callable[..., Awaitable[NewTenant]]


@pytest.fixture(autouse=True)
def _no_config_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the ./jobd.toml or /etc/jobd/jobd.toml of the machine it runs on."""
    monkeypatch.setattr(jobd.config, "SEARCH_PATHS", ())


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
async def store(config: Config) -> AsyncIterator[Backend]:
    """The backend for ``config``'s database, opened as the API and the runtime use it."""
    backend = open_backend(config.database)
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture
def blocking_store(config: Config) -> Iterator[BlockingStore]:
    """The same backend, for a test that runs no event loop of its own."""
    store = BlockingStore(config.database)
    yield store
    store.close()


@pytest.fixture
def new_tenant(store: Backend) -> NewTenantFactory:
    async def create(tenant_id: str = "acme", *, rate: float = 1000, burst: int = 1000,
                     max_concurrency: int | None = None) -> NewTenant:
        return await store.create_tenant(tenant_id, rate=rate, burst=burst,
                                         max_concurrency=max_concurrency, now=T0)
    return create
