"""Many jobd nodes on one PostgreSQL database: :class:`PostgresCoordination`, the
:class:`~jobd.store.cluster.Coordination` of a node that shares its database.

Tables and functions: migration 0003; statements: ``cluster.sql``.

* **Nodes.** A node registers under its ``cluster.node_name`` (one row per name) before
  it does any work, and heartbeats on its own connection (:mod:`.link`) every
  ``cluster.heartbeat_interval``, on the database's clock. A node whose heartbeats have
  not gone through for ``node_timeout`` less one interval stops claiming (it may be
  about to be taken for dead); one whose row is gone was taken for dead, and stops.
* **The leader** is the holder of the ``leader`` row: each heartbeat stands for it,
  renews it when held, takes it over once it expired (``node_timeout`` after the last
  renewal). The leader's duties (:meth:`rescue_dead`; pruning) are statements that are
  harmless when two nodes run them at once, as happens for a moment around a takeover.
* **Rescue by liveness.** The leader removes a node silent for its timeout and, in the
  same transaction, puts back its running jobs (``retry``, or ``fatal`` with the
  webhook if that was their last attempt) and its webhooks being sent (``pending``,
  same id). A late finish of the dead node is fenced out by its lease owner name. A
  node's start puts back only what earlier instances of its own name left
  (:meth:`recover_own`); its stop only what it still holds itself (:meth:`leave`).
* **Wake-ups** (LISTEN/NOTIFY) and their fallback: :mod:`.link`.
* **The shared rate limit**: one token bucket row per tenant (``rate_buckets``), taken
  from by one statement that refills and takes; the takes made in one turn of the event
  loop go out as one statement (a :class:`~jobd.store.postgres.batching.Batcher`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg

from jobd import __version__
from jobd.config import Config
from jobd.errors import StartupError
from jobd.models import JobStatus
from jobd.ratelimit import Decision, decision
from jobd.store.backend import Unhealthy
from jobd.store.cluster import Beat, NodeId, NodeInfo, Recovered, Signal, WakeHandler
from jobd.store.named_sql import load_named
from jobd.store.outcomes import Outcome
from jobd.store.postgres.backend import PostgresBackend
from jobd.store.postgres.jobs import queue_webhook
from jobd.store.postgres.link import DATABASE_ORIGIN, Link, payload
from jobd.store.postgres.queries import changed

log = logging.getLogger("jobd.cluster")

Q = load_named("jobd.store.postgres", "cluster.sql")

# /healthz codes
TAKEN_FOR_DEAD = "node_taken_for_dead"
HEARTBEAT_FAILING = "heartbeat_failing"

# why a rescued job's attempt ended, in its last_error
EARLIER_INSTANCE = "process died"
LEFT_RUNNING = "node stopped"


def dead_node(name: str) -> str:
    return f"node {name} stopped heartbeating"


class PostgresCoordination:
    """A node's coordination with the others on its PostgreSQL database. See the module
    docstring. ``monotonic`` is the clock the node judges its own heartbeats by."""

    shared = True

    def __init__(self, backend: PostgresBackend, config: Config, *,
                 node: NodeId | None = None, monotonic: Any = time.monotonic) -> None:
        cluster = config.cluster
        self.node = node or NodeId.new(cluster.name)
        self._backend = backend
        self._timeout_s = cluster.node_timeout
        self._heartbeat_s = cluster.heartbeat_s
        self._monotonic = monotonic
        self._link = Link(config.database, self.node.owner,
                          statement_timeout_s=self._timeout_s / 2)
        self._buckets = backend.batcher(take_tokens)
        self._beat_at: float | None = None     # when the last heartbeat that went through was sent
        self._leader_until: float | None = None
        self._taken_for_dead = False
        self._leaving = False
        self.leader: str | None = None         # the leader's owner name, as last heard

    # membership --------------------------------------------------------------------

    async def join(self) -> None:
        """Register; an earlier instance of this name must be silent for its timeout, or
        gone from this host, first (waited for, up to its timeout)."""
        await self._link.connect()
        give_up_at = self._monotonic() + self._timeout_s + self._heartbeat_s
        takeover: str | None = None
        waiting = False
        while True:
            sent = self._monotonic()
            row = await self._link.fetchrow(
                Q["node_join"], self.node.name, self.node.instance, socket.gethostname(),
                os.getpid(), __version__, self._timeout_s, takeover)
            if row is not None:
                self._beat_at = sent
                log.info("joined the cluster as node %s (instance %s)", self.node.name,
                         self.node.instance)
                return
            holder = await self._link.fetchrow(Q["node_holder"], self.node.name)
            if holder is None:
                continue  # removed meanwhile
            if holder["host"] == socket.gethostname() and not _pid_alive(holder["pid"]):
                takeover = holder["instance"]
                continue
            held_by = (f"instance {holder['instance']} on {holder['host']} (pid "
                       f"{holder['pid']}), heard from {holder['silent_s']:.1f} s ago")
            if self._monotonic() >= give_up_at:
                raise StartupError(
                    f"node name {self.node.name!r} is in use by a live jobd: {held_by}; give "
                    "each node its own cluster.node_name")
            if not waiting:
                log.warning("node name %s is held by %s: waiting for it to fall silent "
                            "(cluster.node_timeout %g s)", self.node.name, held_by,
                            self._timeout_s)
                waiting = True
            await asyncio.sleep(self._heartbeat_s)

    async def heartbeat(self) -> Beat:
        sent = self._monotonic()
        row = await self._link.fetchrow(Q["node_heartbeat"], self.node.name, self.node.instance,
                                        not self._leaving, self._timeout_s)
        assert row is not None
        self.leader = row["leader"]
        if not row["registered"]:
            if not self._taken_for_dead and not self._leaving:
                log.error("this node (%s) was taken for dead by the others: its work was "
                          "handed to them; it claims nothing more", self.node.owner)
            self._taken_for_dead = True
            self._leader_until = None
            return Beat(registered=False, leader=self.leader, is_leader=False)
        self._beat_at = sent
        is_leader = self.leader == self.node.owner
        self._leader_until = sent + self._timeout_s if is_leader else None
        return Beat(registered=True, leader=self.leader, is_leader=is_leader)

    def can_claim(self) -> bool:
        return (not self._taken_for_dead and self._beat_at is not None
                and self._monotonic() - self._beat_at < self._timeout_s - self._heartbeat_s)

    @property
    def is_leader(self) -> bool:
        return self._leader_until is not None and self._monotonic() < self._leader_until

    @property
    def taken_for_dead(self) -> bool:
        return self._taken_for_dead

    def health(self) -> Unhealthy | None:
        if self._taken_for_dead:
            return Unhealthy(TAKEN_FOR_DEAD, "Node taken for dead",
                             f"the other nodes took node {self.node.owner} for dead and have "
                             "its work; it claims nothing more and stops")
        if not self.can_claim():
            silent = ("never" if self._beat_at is None else
                      f"{self._monotonic() - self._beat_at:.1f} s ago")
            return Unhealthy(HEARTBEAT_FAILING, "Heartbeats failing",
                             f"node {self.node.name}'s heartbeats do not reach the database "
                             f"(the last went through {silent}); it claims nothing meanwhile")
        return None

    async def nodes(self) -> list[NodeInfo]:
        return await self._backend.call(live_nodes)

    # putting work back -----------------------------------------------------------------

    async def recover_own(self, *, now: float) -> Recovered:
        return await self._backend.call(
            put_back, now=now, why=EARLIER_INSTANCE, prefix=self.node.owner_prefix,
            exclude=self.node.owner)

    async def rescue_dead(self, *, now: float) -> Recovered:
        recovered = await self._backend.call(rescue_dead_nodes, self.node, now=now)
        if recovered:
            self.announce(Signal.JOBS, Signal.WEBHOOKS)
        return recovered

    async def leave(self, *, now: float) -> Recovered:
        """Put back what this instance still holds, step down and unregister, in one
        transaction (on the pool: the node's own connection may be the one lost)."""
        self._leaving = True
        self._leader_until = None
        return await self._backend.call(leave_cluster, self.node, now=now)

    # wake-ups ------------------------------------------------------------------------

    def announce(self, *signals: Signal) -> None:
        self._link.announce(*signals)

    async def tell(self, *signals: Signal) -> None:
        """On a pooled connection: a process that tells once needs no link of its own."""
        await self._backend.call(notify, payload(DATABASE_ORIGIN, set(signals)))

    def on_wake(self, handler: WakeHandler) -> None:
        self._link.on_wake(handler)

    async def listen(self) -> None:
        await self._link.run()

    @property
    def link(self) -> Link:
        return self._link

    # the shared rate limit -------------------------------------------------------------

    def take_token(self, tenant_id: str, rate: float, burst: int,
                   now: float) -> asyncio.Future[Decision]:
        """On the database's clock (``now`` is not used): one bucket for every node."""
        return self._buckets.submit(Take(tenant_id, rate, burst))

    @property
    def bucket_statements(self) -> int:
        """Statements that took tokens so far (each for the requests of one batch)."""
        return self._buckets.batches

    async def close(self) -> None:
        await self._buckets.drain()
        await self._link.close()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# statements on a pooled connection --------------------------------------------------------


async def notify(conn: asyncpg.Connection, text: str) -> None:
    await conn.execute(Q["notify"], text)


async def live_nodes(conn: asyncpg.Connection) -> list[NodeInfo]:
    return [NodeInfo(name=r["name"], instance=r["instance"], host=r["host"], pid=r["pid"],
                     version=r["version"], started_at=r["started_at"],
                     heartbeat_at=r["heartbeat_at"], silent_s=r["silent_s"],
                     timeout_s=r["timeout_s"], running=r["running"], leader=r["leader"])
            for r in await conn.fetch(Q["nodes_live"])]


async def put_back(conn: asyncpg.Connection, *, now: float, why: str,
                   owners: list[str] | None = None, prefix: str | None = None,
                   exclude: str | None = None) -> Recovered:
    """Running jobs and webhooks being sent, held by ``owners`` or by an owner starting
    with ``prefix`` other than ``exclude``: jobs to ``retry`` (or ``fatal``, with their
    webhooks), webhooks to ``pending``, in one transaction."""
    recovered = Recovered()
    async with conn.transaction():
        await _put_back(conn, recovered, now=now, why=why, owners=owners or [],
                        prefix=prefix, exclude=exclude)
    return recovered


async def _put_back(conn: asyncpg.Connection, recovered: Recovered, *, now: float, why: str,
                    owners: list[str], prefix: str | None, exclude: str | None) -> None:
    for row in await conn.fetch(Q["jobs_rescue_owned"], now, owners, prefix, exclude, why):
        if row["status"] == JobStatus.FATAL:
            recovered.fatal += 1
            await queue_webhook(conn, row, now)
        else:
            recovered.retry += 1
    recovered.webhooks += changed(await conn.execute(Q["deliveries_release_owned"], now,
                                                     owners, prefix, exclude))


async def rescue_dead_nodes(conn: asyncpg.Connection, me: NodeId, *, now: float) -> Recovered:
    """The leader's rescue: remove the dead nodes and put back their work, one transaction.
    The removal locks their rows, so a second leader doing the same at once waits, then
    finds them gone and does nothing."""
    recovered = Recovered()
    async with conn.transaction():
        for dead in await conn.fetch(Q["nodes_remove_dead"], me.name, me.instance):
            recovered.nodes.append(dead["name"])
            before = (recovered.retry, recovered.fatal, recovered.webhooks)
            await _put_back(conn, recovered, now=now, why=dead_node(dead["name"]),
                            owners=[dead["owner"]], prefix=None, exclude=None)
            log.warning("node %s fell silent %.1f s ago: removed it, and put back its work "
                        "(%d jobs to retry, %d failed for good, %d webhooks to send)",
                        dead["owner"], dead["silent_s"], recovered.retry - before[0],
                        recovered.fatal - before[1], recovered.webhooks - before[2])
    return recovered


async def leave_cluster(conn: asyncpg.Connection, me: NodeId, *, now: float) -> Recovered:
    recovered = Recovered()
    async with conn.transaction():
        await _put_back(conn, recovered, now=now, why=LEFT_RUNNING, owners=[me.owner],
                        prefix=None, exclude=None)
        await conn.execute(Q["node_leave"], me.name, me.instance)
    return recovered


# the shared rate limit ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Take:
    """One request against its tenant's bucket."""

    tenant_id: str
    rate: float
    burst: int


async def take_tokens(conn: asyncpg.Connection, items: list[Take]) -> list[Outcome]:
    """One statement for the takes of many requests: per tenant (in id order, so that
    batches of several nodes lock the buckets in one order) as many tokens as it has
    requests here; its first ``taken`` requests are admitted."""
    wanted = Counter(t.tenant_id for t in items)
    limits = {t.tenant_id: (t.rate, t.burst) for t in items}
    tenants = sorted(wanted)
    found = {r["tenant_id"]: (r["level"], r["taken"]) for r in await conn.fetch(
        Q["buckets_take"], tenants, [limits[t][0] for t in tenants],
        [limits[t][1] for t in tenants], [wanted[t] for t in tenants])}
    seen: Counter[str] = Counter()
    outcomes: list[Outcome] = []
    for take in items:
        level, taken = found[take.tenant_id]
        rate, burst = limits[take.tenant_id]
        seen[take.tenant_id] += 1
        nth = seen[take.tenant_id]
        outcomes.append((True, decision(nth <= taken, level - min(nth, taken), rate, burst)))
    return outcomes
