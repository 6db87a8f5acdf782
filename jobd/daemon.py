"""The composition root: start order, signals and graceful shutdown of ``jobd serve``."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable
from contextlib import suppress

import aiohttp
from aiohttp import web

from jobd import __version__
from jobd.api.app import create_app
from jobd.api.context import ApiContext
from jobd.clock import Clock, SystemClock
from jobd.config import Config
from jobd.handlers.base import Services
from jobd.handlers.registry import build_registry
from jobd.netguard import guarded_connector
from jobd.runtime.lifeline import Lifeline
from jobd.runtime.workers import WorkerPool
from jobd.store.store import Store

log = logging.getLogger("jobd.daemon")


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def serve(config: Config, *, clock: Clock | None = None,
                stop: asyncio.Event | None = None,
                on_ready: Callable[[str], None] | None = None) -> None:
    """Run the daemon until ``stop`` is set or SIGTERM/SIGINT arrives."""
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    registry = build_registry(config.handlers)
    store = Store(config.database)
    store.open()
    allow_private = config.webhooks.allow_private_networks
    http = aiohttp.ClientSession(connector=guarded_connector(allow_private), trust_env=False)
    services = Services(config=config, http=http)
    pool = WorkerPool(store=store, registry=registry, services=services, clock=clock,
                      config=config, owner=instance_id())
    lifeline = Lifeline(store=store, pool=pool, clock=clock, config=config.workers)
    ctx = ApiContext(config=config, store=store, registry=registry, clock=clock,
                     on_job_created=lambda due: pool.wake(due), on_cancel_requested=pool.cancel)
    runner = web.AppRunner(create_app(ctx), access_log=None, handle_signals=False)
    background: list[asyncio.Task[None]] = []
    try:
        await lifeline.recover_at_startup()
        await runner.setup()
        site = web.TCPSite(runner, config.server.host, config.server.port, backlog=2048)
        await site.start()
        address = _bound_address(runner, config)
        background = [asyncio.create_task(pool.run(), name="scheduler"),
                      asyncio.create_task(lifeline.run(), name="lifeline")]
        ctx.ready = True
        _log_startup(config, address, registry.names())
        if on_ready is not None:
            on_ready(address)
        await stop.wait()
        log.info("shutting down: no new requests, no new claims")
        ctx.ready = False
        await site.stop()
        await pool.shutdown(config.workers.shutdown_grace)
    finally:
        lifeline.stop()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await runner.cleanup()
        await http.close()
        store.close()
        log.info("stopped")


def _bound_address(runner: web.AppRunner, config: Config) -> str:
    for server in runner.addresses:
        if isinstance(server, tuple):
            return f"http://{server[0]}:{server[1]}"
    return f"http://{config.server.host}:{config.server.port}"


def _log_startup(config: Config, address: str, types: list[str]) -> None:
    log.info("jobd %s listening on %s; database %s (synchronous=%s); %d workers; job types: %s",
             __version__, address, config.database.path, config.database.synchronous,
             config.workers.concurrency, ", ".join(types))
    if config.webhooks.allow_private_networks:
        log.warning("webhooks.allow_private_networks is on: webhooks and http jobs may reach "
                    "loopback and private addresses")


def run(config: Config) -> None:
    """Blocking entry point used by ``jobd serve`` (uvloop when available)."""
    loop_factory = None
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config))
