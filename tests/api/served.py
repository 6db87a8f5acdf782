"""The API served from an event loop in a thread of its own, for clients that block.

Property-based tests drive the API with a blocking HTTP client (schemathesis sends its
requests with ``requests``), so the server cannot share their thread. :class:`ServedApi`
wires ``create_app(ApiContext(...))`` as the daemon does, over a real store (the backend
the config names), and
listens twice on 127.0.0.1, each time as ``jobd serve`` listens: with
``server.fast_lane = false`` (aiohttp answers every request, ``base_url("aiohttp")``) and
with the fast lane in front of aiohttp (``base_url("fastlane")``). No worker
pool and no dispatcher run, so no job is executed and nothing is sent anywhere: whatever
a generator puts in a job's ``url`` or ``webhookUrl`` stays in the database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from aiohttp import web

from jobd.api.app import create_app
from jobd.api.context import ApiContext
from jobd.api.fastlane import FastLane
from jobd.clock import SystemClock
from jobd.config import Config
from jobd.daemon import metrics_handler
from jobd.handlers.registry import build_registry
from jobd.models import NewTenant
from jobd.runtime.metrics import Metrics
from jobd.store import open_backend

Path = Literal["aiohttp", "fastlane"]
PATHS: tuple[Path, ...] = ("aiohttp", "fastlane")
T = TypeVar("T")


class ServedApi:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = open_backend(config.database)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="served-api",
                                        daemon=True)
        self._ports: dict[Path, int] = {}
        self._runner: web.AppRunner | None = None
        self._lanes: list[FastLane] = []
        self._listeners: list[asyncio.Server] = []

    def __enter__(self) -> ServedApi:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def base_url(self, path: Path) -> str:
        return f"http://127.0.0.1:{self._ports[path]}"

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def create_tenant(self, tenant_id: str, *, rate: float = 1e6, burst: int = 1_000_000,
                      max_concurrency: int | None = None) -> NewTenant:
        return self.run(self.store.create_tenant(tenant_id, rate=rate, burst=burst,
                                                 max_concurrency=max_concurrency,
                                                 now=SystemClock().now()))

    def start(self) -> ServedApi:
        self._thread.start()
        try:
            self.run(self.store.open())
            self.run(self._serve())
        except (Exception, concurrent.futures.TimeoutError):
            self.stop()
            raise
        return self

    async def _serve(self) -> None:
        ctx = ApiContext(config=self.config, store=self.store,
                         registry=build_registry(use_entry_points=False), clock=SystemClock())
        app = create_app(ctx, extra_routes=[web.get("/metrics", metrics_handler(self.store, Metrics()),
                                                    allow_head=False)])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        assert self._runner.server is not None
        ctx.ready = True
        for path, on in (("aiohttp", False), ("fastlane", True)):
            server = self.config.server.model_copy(update={"fast_lane": on})
            lane_ctx = dataclasses.replace(ctx, config=self.config.model_copy(
                update={"server": server}))
            lane = FastLane(lane_ctx, fallback=self._runner.server)
            listener = await asyncio.get_running_loop().create_server(lane, "127.0.0.1", 0)
            self._lanes.append(lane)
            self._listeners.append(listener)
            self._ports[path] = listener.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        for listener in self._listeners:
            listener.close()
        for lane in self._lanes:
            await lane.shutdown(1)
        if self._runner is not None:
            await self._runner.cleanup()
        # aiohttp's handlers of connections closed just now end on the loop's next turns
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.run(self._shutdown())
                self.run(self.store.close())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)
        self._loop.close()
