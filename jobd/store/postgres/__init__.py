"""The PostgreSQL backend: :class:`~jobd.store.postgres.backend.PostgresBackend`, its
schema migrations (``migrations/``), connections (``connection``) and named statements
(``queries.sql``). Needs the ``asyncpg`` driver: ``pip install 'jobd[postgres]'``."""
