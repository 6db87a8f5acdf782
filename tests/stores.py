"""The store as the tests open it: built from a config by ``jobd.store.open_backend``, the
one place a suite's backend comes from (SQLite at ``database.path``, or PostgreSQL when
the config sets ``database.url``); and :func:`stored_rows`, what the database durably
holds, read on a connection of the test's own."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from jobd.config import DatabaseConfig
from jobd.store import open_backend
from jobd.store.backend import Backend

T = TypeVar("T")


class BlockingStore:
    """A backend opened on an event loop in a thread of its own, for tests that do not run
    on an event loop (the CLI's): ``run(lambda backend: backend.list_jobs())``."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.backend = open_backend(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-store",
                                        daemon=True)
        self._thread.start()
        try:
            self._on_loop(self.backend.open())
        except BaseException:
            self._stop_loop()
            raise

    def run(self, call: Callable[[Backend], Awaitable[T]]) -> T:
        async def run() -> T:
            return await call(self.backend)
        return self._on_loop(run())

    def close(self) -> None:
        try:
            self._on_loop(self.backend.close())
        finally:
            self._stop_loop()

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def stored_rows(config: DatabaseConfig, sql: str, *args: Any) -> list[Mapping[str, Any]]:
    """Rows of ``sql`` (``?`` placeholders, SQL both databases read) on a new connection to
    ``config``'s database: what is durably there. Values as each driver gives them (a
    flag is 0/1 on SQLite, a bool on PostgreSQL; ``errors`` is JSON text on both)."""
    if config.url is None:
        conn = sqlite3.connect(config.path)
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, args).fetchall())
        finally:
            conn.close()
    url = config.url

    async def fetch() -> Sequence[Mapping[str, Any]]:
        import asyncpg

        pg = await asyncpg.connect(url, timeout=10)
        try:
            return list(await pg.fetch(numbered(sql), *args))
        finally:
            await pg.close()
    with ThreadPoolExecutor(1) as pool:  # the caller may be on an event loop of its own
        return list(pool.submit(asyncio.run, fetch()).result(30))


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2 ...``."""
    parts = sql.split("?")
    return "".join(part + (f"${n}" if n < len(parts) else "")
                   for n, part in enumerate(parts, 1))
