"""The contract suite: what "a backend is done" means.

Every test runs against every kind of backend in :data:`KINDS` through the
:class:`jobd.store.backend.Backend` protocol only. A test that must check what was
durably stored (a lease, a row count, the stored bytes) asks the kind's
:class:`~tests.contract.stored.Peek`, which reads the database on a connection of its own.

A kind is one entry in :data:`KINDS`: an async context manager that opens a backend on
an empty database for one test and closes it after, with its Peek.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import pytest

from jobd.config import DatabaseConfig
from jobd.store import open_backend
from jobd.store.backend import Backend
from tests.contract.stored import Peek, PostgresPeek, SqlitePeek
from tests.pg import admin, with_database

# jobd's tables, emptied between the tests of a module that share one database
TABLES = ("delivery_attempts", "deliveries", "jobs", "tenants")  # children first


@dataclass
class Opened:
    backend: Backend
    peek: Peek


Kind = Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Opened]]


# postgres: one database per test module, migrated once, emptied before each test -------


@pytest.fixture(scope="module")
def pg_module_database(pg_url: str) -> Iterator[str]:
    """A database for one test module, migrated once, emptied before each test: a DELETE
    of a test's few rows costs milliseconds, a database made, migrated and dropped per
    test (or a TRUNCATE, which makes new files and syncs them) tenths of a second."""
    from jobd.store.postgres.connection import migrate_database

    name = f"contract_{os.getpid()}_{next(_databases)}"
    admin(pg_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
          f"CREATE DATABASE {name} TEMPLATE template0")
    url = with_database(pg_url, name)
    _in_thread(migrate_database(DatabaseConfig(url=url)))
    try:
        yield url
    finally:
        admin(pg_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _in_thread(coro: object) -> None:
    """Run a coroutine outside the test's event loop (module fixtures are synchronous)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


_databases = itertools.count(1)


@asynccontextmanager
async def postgres_kind(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    from jobd.store.postgres.backend import PostgresBackend

    url = request.getfixturevalue("pg_module_database")
    peek = await PostgresPeek.connect(url)
    try:
        for table in TABLES:
            await peek.execute(f"DELETE FROM {table}")
        backend = PostgresBackend(DatabaseConfig(url=url, pool_size=4))
        await backend.open()
        try:
            yield Opened(backend, peek)
        finally:
            await backend.close()
    finally:
        await peek.close()


# sqlite: a new file per test -----------------------------------------------------------


@asynccontextmanager
async def sqlite_kind(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    path = str(request.getfixturevalue("tmp_path") / "jobd.db")
    backend = open_backend(DatabaseConfig(path=path))
    await backend.open()
    peek = SqlitePeek(path)
    try:
        yield Opened(backend, peek)
    finally:
        await peek.close()
        await backend.close()


KINDS: dict[str, Kind] = {
    "postgres": postgres_kind,
    "sqlite": sqlite_kind,
}


@pytest.fixture(params=[pytest.param(kind, marks=[pytest.mark.postgres] if kind == "postgres" else [])
                        for kind in sorted(KINDS)])
async def opened(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    async with KINDS[request.param](request) as kind:
        yield kind


@pytest.fixture
def backend(opened: Opened) -> Backend:
    return opened.backend


@pytest.fixture
def peek(opened: Opened) -> Peek:
    return opened.peek
