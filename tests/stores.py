"""The store as the tests open it: built from a config by ``jobd.store.open_backend``, the
one place a suite's backend comes from (SQLite at ``database.path``, or PostgreSQL when
the config sets ``database.url``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
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
