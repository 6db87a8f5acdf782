"""The store: the only code that holds SQL or a database connection.

Everything else uses :class:`jobd.store.backend.Backend`, which :func:`open_backend`
picks for a configuration: PostgreSQL (``jobd.store.postgres``) when ``database.url`` is
set, else SQLite (``jobd.store.sqlite``) at ``database.path``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobd.config import DatabaseConfig

if TYPE_CHECKING:
    from jobd.store.backend import Backend
    from jobd.supervisor import Supervisor


def open_backend(config: DatabaseConfig, *, supervisor: Supervisor | None = None) -> Backend:
    """The backend for ``config``, not opened yet (``await backend.open()``). A daemon's
    SQLite backend reports its threads' failures to ``supervisor``. The PostgreSQL one
    is imported only when chosen: it needs ``asyncpg`` (``pip install 'jobd[postgres]'``)."""
    if config.url is not None:
        from jobd.store.postgres.backend import PostgresBackend
        return PostgresBackend(config)
    from jobd.store.sqlite.backend import SqliteBackend
    return SqliteBackend(config, supervisor=supervisor)
