"""Shared fixtures: the test's database on each backend (``backend_kind``: a real SQLite
file, checked with integrity_check afterwards, or a PostgreSQL database of the test
server); the store opened on it (``store``, or ``blocking_store`` for tests without an
event loop)."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import jobd.config
from jobd.config import Config
from jobd.models import NewTenant
from jobd.store import open_backend
from jobd.store.backend import Backend
from tests import support
from tests.stores import BlockingStore
from tests.support import make_config

if TYPE_CHECKING:  # (imported by pytest_plugins below, for assertion rewriting)
    from tests.pg import DatabasePool

__all__ = ["T0", "Databases", "make_config"]  # make_config is imported from here by many tests

pytest_plugins = ["tests.pg"]  # pg_url, pg_database_url: a throwaway PostgreSQL

T0 = 1_750_000_000.0

NewTenantFactory = Callable[..., Awaitable[NewTenant]]


def pytest_configure(config: pytest.Config) -> None:
    """A run started in the background by a shell without job control (``make test``'s
    tests on PostgreSQL) inherits SIGINT ignored, and so would every process its tests
    start: ``jobd top`` would not stop on Ctrl-C, nor the run itself. Take it back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for the test PostgreSQL server by name, or runs a cluster of nodes
    (on a server of its module's own), is marked ``postgres`` too (those on each backend
    are marked by their ``postgres`` parameter)."""
    for item in items:
        if ("pg_url" in getattr(item, "fixturenames", ())
                or item.get_closest_marker("cluster") is not None):
            item.add_marker(pytest.mark.postgres)


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


# Every test that makes a config through ``database`` (``config``, ``store``,
# ``blocking_store``, the e2e ``make_env``, the CLI's ``cfg``, ...) runs on each backend:
# test ids end in [sqlite] and [postgres] (the latter also marked ``postgres``). Module
# scope: a module's tests run on SQLite first, then on PostgreSQL. A test inherently
# about SQLite says so with :func:`sqlite_only`; tests/store (the SQLite backend's own
# tests) overrides ``backend_kind`` with "sqlite" alone.
BACKEND_KINDS = [pytest.param("sqlite", id="sqlite"),
                 pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


def sqlite_only(why: str) -> pytest.MarkDecorator:
    """Run a test (or, as ``pytestmark``, a module) on SQLite alone; ``why`` says what
    makes it SQLite's (it reads the file, holds SQLite's write lock, ...)."""
    assert why
    return pytest.mark.parametrize("backend_kind", BACKEND_KINDS[:1], indirect=True,
                                   scope="module")


def postgres_only(why: str) -> pytest.MarkDecorator:
    """Run a test on PostgreSQL alone (the counterpart of a :func:`sqlite_only` test)."""
    assert why
    return pytest.mark.parametrize("backend_kind", BACKEND_KINDS[1:], indirect=True,
                                   scope="module")


@pytest.fixture(scope="module", params=BACKEND_KINDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Databases:
    """The ``[database]`` section for a config kept in a directory, on one backend: SQLite
    at ``dir / "jobd.db"``; on PostgreSQL an empty, migrated database per directory, lent
    from ``pg_jobd_databases`` until :meth:`give_back`."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self._pool: DatabasePool | None = (
            request.getfixturevalue("pg_jobd_databases") if kind == "postgres" else None)
        self._lent: dict[Path, str] = {}

    def __call__(self, tmp: Path) -> dict[str, Any]:
        if self._pool is None:
            return support.sqlite_database(tmp)
        if tmp not in self._lent:
            self._lent[tmp] = self._pool.take()
        return {"url": self._lent[tmp]}

    @contextlib.contextmanager
    def installed(self) -> Iterator[Databases]:
        """Meanwhile, ``tests.support.config_data`` (so ``make_config``, ``write_config``)
        takes its database from here; at the end, the databases lent are given back."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(support, "database_for", self)
            try:
                yield self
            finally:
                self.give_back()

    def give_back(self) -> None:
        """Give back every database lent (on PostgreSQL: emptied for the next test)."""
        if self._pool is not None:
            for url in self._lent.values():
                self._pool.give_back(url)
        self._lent.clear()


@pytest.fixture
def database(backend_kind: str, request: pytest.FixtureRequest) -> Iterator[Databases]:
    """The test's databases, one per directory a config is kept in (see
    :meth:`Databases.installed`)."""
    with Databases(backend_kind, request).installed() as databases:
        yield databases


@pytest.fixture
def config(tmp_path: Path, database: Databases) -> Config:
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
