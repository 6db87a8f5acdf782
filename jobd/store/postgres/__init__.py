"""The PostgreSQL backend: its schema migrations (``migrations/``) and connections
(``connection``). Needs the ``asyncpg`` driver: ``pip install 'jobd[postgres]'``."""
