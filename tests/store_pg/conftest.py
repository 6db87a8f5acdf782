"""The PostgreSQL store's own tests: a backend opened as a daemon opens it, on a new
database with tenant ``acme``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jobd.config import DatabaseConfig
from jobd.store.postgres.backend import PostgresBackend
from tests.contract.helpers import tenant


@pytest.fixture
async def backend(pg_database_url: str) -> AsyncIterator[PostgresBackend]:
    b = PostgresBackend(DatabaseConfig(url=pg_database_url, pool_size=4))
    await b.open(daemon=True)
    await tenant(b, "acme")
    yield b
    await b.close()
