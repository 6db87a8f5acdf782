"""The composition root: start order, signals and graceful shutdown of ``jobd serve``."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import socket
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from contextlib import suppress

from aiohttp import web

from jobd import __version__
from jobd.api.app import create_app
from jobd.api.context import ApiContext
from jobd.api.fastlane import FastLane
from jobd.clock import Clock, SystemClock
from jobd.config import Config
from jobd.errors import StartupError
from jobd.handlers.base import Services
from jobd.handlers.registry import build_registry
from jobd.models import NewJob
from jobd.outbound import client_session
from jobd.runtime.dispatcher import Dispatcher
from jobd.runtime.lifeline import Lifeline
from jobd.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from jobd.runtime.metrics import Metrics
from jobd.runtime.pruner import Pruner
from jobd.runtime.workers import WorkerPool
from jobd.store.deliveries import count_dead_deliveries
from jobd.store.stats import job_counts
from jobd.store.store import Store

log = logging.getLogger("jobd.daemon")


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def serve(config: Config, *, clock: Clock | None = None,
                stop: asyncio.Event | None = None,
                on_ready: Callable[[str], None] | None = None,
                on_stopping: Callable[[], None] | None = None) -> None:
    """Run the daemon until ``stop`` is set or SIGTERM/SIGINT arrives."""
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    registry = build_registry(config.handlers)
    store = Store(config.database)
    store.open(daemon_lock=True)
    allow_private = config.webhooks.allow_private_networks
    http = client_session(allow_private)
    services = Services(config=config, http=http)
    pool = WorkerPool(store=store, registry=registry, services=services, clock=clock,
                      config=config, owner=instance_id())
    lifeline = Lifeline(store=store, pool=pool, clock=clock, config=config.workers)
    dispatcher = Dispatcher(store=store, clock=clock, config=config)
    pruner = Pruner(store=store, clock=clock, config=config)
    metrics = Metrics()
    pool.listeners.append(metrics.attempt_recorded)
    pool.webhooks = dispatcher
    dispatcher.on_attempt = metrics.delivery_attempted

    def job_created(job: NewJob, started: bool) -> None:
        if not started:  # queued: the pool claims it
            pool.wake(job.run_at)
        metrics.job_created(job.tenant_id, job.type)

    ctx = ApiContext(config=config, store=store, registry=registry, clock=clock,
                     starter=pool, on_job_created=job_created, on_cancel_requested=pool.cancel,
                     on_webhook_queued=dispatcher.wake,
                     on_rate_limited=metrics.request_rate_limited)
    app = create_app(ctx, extra_routes=[web.get("/metrics", metrics_handler(store, metrics),
                                                allow_head=False)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    background: list[asyncio.Task[None]] = []
    listener: asyncio.Server | None = None
    try:
        await runner.setup()
        assert runner.server is not None
        lane = FastLane(ctx, fallback=runner.server)  # POST /jobs; aiohttp for the rest
        try:
            listener = await loop.create_server(lane, config.server.host, config.server.port,
                                                backlog=2048)
        except OSError as exc:
            raise StartupError(f"cannot listen on {config.server.host}:{config.server.port}: "
                               f"{exc.strerror or exc}; choose another port with server.port "
                               "(or JOBD_SERVER_PORT), or stop what holds this one") from None
        await lifeline.recover_at_startup()
        await dispatcher.recover_at_startup()
        address = _bound_address(listener, config)
        background = [asyncio.create_task(pool.run(), name="scheduler"),
                      asyncio.create_task(lane.run_idle_sweeper(), name="idle-connections"),
                      asyncio.create_task(lifeline.run(), name="lifeline"),
                      asyncio.create_task(dispatcher.run(), name="dispatcher"),
                      asyncio.create_task(pruner.run(), name="pruner")]
        ctx.ready = True
        _log_startup(config, address, registry.names())
        if on_ready is not None:
            on_ready(address)
        await stop.wait()
        if on_stopping is not None:
            on_stopping()
        log.info("shutting down: no new requests, no new claims")
        ctx.ready = False
        listener.close()
        await lane.shutdown(config.workers.shutdown_grace)
        await pool.shutdown(config.workers.shutdown_grace)
        await dispatcher.shutdown(min(config.workers.shutdown_grace, config.webhooks.timeout))
    finally:
        lifeline.stop()
        pruner.stop()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if listener is not None:
            listener.close()
        await runner.cleanup()
        await http.close()
        await dispatcher.close()
        store.close()
        log.info("stopped")


def metrics_handler(store: Store, metrics: Metrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        def read(conn: sqlite3.Connection) -> dict[str, object]:
            return {"jobs": job_counts(conn), "dlq": count_dead_deliveries(conn),
                    "writer": store.writer_stats, "files": store.file_bytes()}
        body = metrics.render(await store.read_slow(read))
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
    return handle


def _bound_address(listener: asyncio.Server, config: Config) -> str:
    for sock in listener.sockets:
        address = sock.getsockname()
        if isinstance(address, tuple):
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            return f"http://{host}:{address[1]}"
    return f"http://{config.server.host}:{config.server.port}"


def _log_startup(config: Config, address: str, types: list[str]) -> None:
    log.info("jobd %s listening on %s; database %s (synchronous=%s); %d workers; job types: %s",
             __version__, address, config.database.path, config.database.synchronous,
             config.workers.concurrency, ", ".join(types))
    if config.webhooks.allow_private_networks:
        log.warning("webhooks.allow_private_networks is on: webhooks and http jobs may reach "
                    "loopback and private addresses")


def tune_gc() -> None:
    """Everything imported so far lives as long as the process: move it out of the cyclic
    collector's sight, and collect young objects less often. Measured: without this the
    collector took about 14% of the event loop's time under POST /jobs load."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


GIL_SWITCH_INTERVAL_S = 0.001


def run(config: Config, *, on_ready: Callable[[str], None] | None = None,
        on_stopping: Callable[[], None] | None = None) -> None:
    """Blocking entry point used by ``jobd serve`` (uvloop when available).

    The writer thread needs the GIL back after every SQLite call, and the event loop
    keeps it for up to the switch interval: 1 ms instead of Python's 5 ms gave
    POST /jobs with the workers running 2-12% more (``bench/README.md``)."""
    tune_gc()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    loop_factory = None
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config, on_ready=on_ready, on_stopping=on_stopping))
