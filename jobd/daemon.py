"""The composition root: start order, signals and graceful shutdown of ``jobd serve``."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
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
from jobd.errors import StartupError, TaskFailed
from jobd.handlers.base import Services
from jobd.handlers.registry import build_registry
from jobd.models import NewJob
from jobd.outbound import client_session
from jobd.runtime.cluster import TASK, Membership, Receivers
from jobd.runtime.dispatcher import Dispatcher
from jobd.runtime.lifeline import Lifeline
from jobd.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from jobd.runtime.metrics import Metrics
from jobd.runtime.pruner import Pruner
from jobd.runtime.workers import WorkerPool
from jobd.store import open_backend
from jobd.store.backend import Backend
from jobd.store.cluster import Coordination, Signal, open_coordination
from jobd.supervisor import Supervisor

log = logging.getLogger("jobd.daemon")


async def serve(config: Config, *, clock: Clock | None = None,
                stop: asyncio.Event | None = None,
                on_ready: Callable[[str], None] | None = None,
                on_stopping: Callable[[], None] | None = None,
                supervisor: Supervisor | None = None) -> None:
    """Run the daemon until ``stop`` is set or SIGTERM/SIGINT arrives; raise
    :class:`TaskFailed` if it stopped because a long-lived task gave up. ``on_ready``
    is called once it is ready, or once the API answers reads while the recovery at
    startup waits for the database (a full disk, a lock held elsewhere)."""
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    supervisor = supervisor or Supervisor()

    def gave_up(_reason: str) -> None:  # from any thread
        loop.call_soon_threadsafe(stop.set)
    supervisor.on_give_up = gave_up

    registry = build_registry(config.handlers)
    if (ignored := config.database.ignored_keys_warning()) is not None:
        log.warning("%s", ignored)
    store = open_backend(config.database, supervisor=supervisor)
    await store.open(daemon=True)
    coordination = open_coordination(store, config)
    owner = coordination.node.owner
    allow_private = config.webhooks.allow_private_networks
    http = client_session(allow_private)
    services = Services(config=config, http=http)
    pool = WorkerPool(store=store, registry=registry, services=services, clock=clock,
                      config=config, owner=owner)
    lifeline = Lifeline(store=store, pool=pool, clock=clock, config=config.workers)
    dispatcher = Dispatcher(store=store, clock=clock, config=config, owner=owner)
    pruner = Pruner(store=store, clock=clock, config=config)
    metrics = Metrics()
    pool.listeners.append(metrics.attempt_recorded)
    pool.webhooks = dispatcher
    dispatcher.on_attempt = metrics.delivery_attempted
    shared = coordination.shared  # other nodes use this database too (PostgreSQL)
    ctx = ApiContext(config=config, store=store, registry=registry, clock=clock,
                     starter=pool, on_cancel_requested=pool.cancel,
                     on_rate_limited=metrics.request_rate_limited, supervisor=supervisor,
                     take_token=coordination.take_token if shared else None,
                     node_health=coordination.health if shared else None)
    membership = Membership(coordination=coordination, clock=clock, config=config.cluster,
                            receivers=Receivers(jobs=pool.wake, webhooks=dispatcher.wake,
                                                tenants=ctx.tenants.forget, cancel=pool.cancel),
                            supervisor=supervisor)
    ctx.on_job_created = _job_created(pool, metrics, coordination, clock)
    ctx.on_webhook_queued = _webhook_queued(dispatcher, coordination)
    if shared:
        _share(coordination, pool, lifeline, dispatcher, pruner)
    app = create_app(ctx, extra_routes=[web.get("/metrics", metrics_handler(store, metrics),
                                                allow_head=False)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    listener: asyncio.Server | None = None
    try:
        if shared:  # a member before any work: heartbeats from here on
            await coordination.join()
            supervisor.start("cluster link", coordination.listen())
            supervisor.start(TASK, membership.run())
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
        address = _bound_address(listener, config)
        supervisor.start("idle-connection sweeper", supervisor.loop(
            "idle-connection sweeper", lane.run_idle_sweeper, running=lambda: True))
        _log_startup(config, address, registry.names())
        announced = False

        def announce() -> None:
            nonlocal announced
            if on_ready is not None and not announced:
                on_ready(address)
            announced = True
        # Reads are served from here on; on a full disk (or with the database locked
        # elsewhere) the recovery below waits, retried, and /healthz says why (announced
        # as started meanwhile: it serves what it can).
        if await _recover_at_startup(supervisor, membership, stop, on_failure=announce):
            supervisor.start("scheduler", pool.run(supervisor))
            supervisor.start("lifeline", lifeline.run(supervisor))
            supervisor.start("webhook dispatcher", dispatcher.run(supervisor))
            supervisor.start("pruner", pruner.run(supervisor))
            ctx.ready = True
            announce()
            await stop.wait()
        if supervisor.gave_up is not None:  # /healthz says why meanwhile
            await asyncio.sleep(GIVE_UP_NOTICE_S)
        if on_stopping is not None:
            on_stopping()
        log.info("shutting down: no new requests, no new claims")
        ctx.ready = False
        supervisor.stopping = True
        pruner.stop()
        listener.close()
        # One deadline for everything: answers in flight, running jobs, webhook sends
        grace_s = config.workers.shutdown_grace
        await asyncio.gather(
            lane.shutdown(grace_s), runner.server.shutdown(grace_s),
            pool.shutdown(grace_s, cleanup_s=CLOSE_S),
            dispatcher.shutdown(min(grace_s, config.webhooks.timeout), cleanup_s=CLOSE_S))
    finally:
        supervisor.stopping = True
        lifeline.stop()
        pruner.stop()
        membership.stop()
        await supervisor.cancel_tasks()
        if listener is not None:
            listener.close()
        closing = [runner.cleanup()]
        if shared:  # what this node still holds goes back now, not once it is silent
            closing.append(membership.leave())
        with suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_S):
                await asyncio.gather(*closing)
        await http.close()
        await dispatcher.close()
        await coordination.close()
        await store.close(timeout_s=CLOSE_S)
        log.info("stopped")
    if supervisor.gave_up is not None:
        raise TaskFailed(f"stopped because a task failed: {supervisor.gave_up}")


GIVE_UP_NOTICE_S = 1.0  # after a task gave up: /healthz answers 503 this long before the exit
# After the grace: for cancelled jobs and sends to be put back, then again for closing
# connections and the last writes. A stop takes at most shutdown_grace + 3 * CLOSE_S.
CLOSE_S = 1.0


async def _recover_at_startup(supervisor: Supervisor, membership: Membership,
                              stop: asyncio.Event, *, on_failure: Callable[[], None]) -> bool:
    """Put back what this node's earlier instance left running or sending, retried until
    it is written (or the daemon is stopped: False). Nothing claims before it is done."""
    done = False

    async def recover() -> None:
        nonlocal done
        try:
            await membership.recover_own()
        except Exception:
            on_failure()
            raise
        done = True
    await supervisor.loop("startup recovery", recover, running=lambda: not done, stop=stop)
    return done


def _job_created(pool: WorkerPool, metrics: Metrics, coordination: Coordination,
                 clock: Clock) -> Callable[[NewJob, bool], None]:
    """After a new job's commit: the pool claims it (unless it was created running); where
    nodes share the database and this node has no room for it now, the others are told
    (if it is due now: a later one is found by their polls). Telling them of every job
    would wake every node's claim for each one, and all but one would find nothing."""
    if not coordination.shared:
        def created(job: NewJob, started: bool) -> None:
            if not started:  # queued: the pool claims it
                pool.wake(job.run_at)
            metrics.job_created(job.tenant_id, job.type)
        return created

    def created_shared(job: NewJob, started: bool) -> None:
        if not started:
            pool.wake(job.run_at)
            if not pool.has_room and job.run_at <= clock.now():
                coordination.announce(Signal.JOBS)
        metrics.job_created(job.tenant_id, job.type)
    return created_shared


def _webhook_queued(dispatcher: Dispatcher, coordination: Coordination) -> Callable[[], None]:
    """After a cancel queued a webhook: the dispatcher sends it, and where nodes share the
    database, the others are told (it may be sent sooner by one of them)."""
    if not coordination.shared:
        return dispatcher.wake

    def queued() -> None:
        dispatcher.wake()
        coordination.announce(Signal.WEBHOOKS)
    return queued


def _share(coordination: Coordination, pool: WorkerPool, lifeline: Lifeline,
           dispatcher: Dispatcher, pruner: Pruner) -> None:
    """The runtime's hooks where nodes share the database: claim only while this node's
    heartbeats go through, maintenance by the leader only, at shutdown put back only this
    node's sends, and tell the others of webhooks queued while every slot here is taken."""
    pool.may_claim = dispatcher.may_claim = coordination.can_claim

    def leads() -> bool:
        return coordination.is_leader
    lifeline.leads = dispatcher.leads = pruner.leads = leads
    dispatcher.only_sender = False

    def webhooks_waiting() -> None:
        coordination.announce(Signal.WEBHOOKS)
    dispatcher.on_queued_without_room = webhooks_waiting


def metrics_handler(store: Backend,
                    metrics: Metrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        body = metrics.render(await store.metrics())
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
    database = config.database
    log.info("jobd %s listening on %s; database %s (%s, synchronous=%s); %d workers; "
             "job types: %s", __version__, address, database.location,
             "PostgreSQL" if database.is_postgres else "SQLite", database.synchronous,
             config.workers.concurrency, ", ".join(types))
    if config.webhooks.allow_private_networks:
        log.warning("webhooks.allow_private_networks is on: webhooks and http jobs may reach "
                    "loopback and private addresses")


def tune_gc() -> None:
    """Everything imported so far lives as long as the process: move it out of the cyclic
    collector's sight, and collect young objects less often: under POST /jobs load the
    collector otherwise takes a noticeable share of the event loop's time."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


GIL_SWITCH_INTERVAL_S = 0.001


def run(config: Config, *, on_ready: Callable[[str], None] | None = None,
        on_stopping: Callable[[], None] | None = None) -> None:
    """Blocking entry point used by ``jobd serve`` (uvloop when available).

    SQLite's writer thread needs the GIL back after every SQLite call, and the event
    loop keeps it for up to the switch interval: 1 ms instead of Python's 5 ms lets the
    writer go on sooner (``bench/README.md`` has the figures)."""
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
