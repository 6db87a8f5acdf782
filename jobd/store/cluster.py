"""Many nodes on one database: the :class:`Coordination` a node keeps with the others.

Beside the :class:`~jobd.store.backend.Backend` (the transitions of jobs and webhooks),
a node needs to know who else is alive, who leads, what the others changed, and the
shared rate budgets. Two implementations:

* :class:`SingleNode` for SQLite: one process per database file (the daemon's lock file
  keeps it so), always the leader, nothing to announce; its earlier instance is whoever
  ran on the file before, so everything left running or sending is its own.
* :class:`jobd.store.postgres.cluster.PostgresCoordination` for PostgreSQL: heartbeats
  into a ``nodes`` table on the database's clock, a leader by a TTL row, rescue of dead
  nodes' work by liveness, LISTEN/NOTIFY wake-ups, one token bucket per tenant.

Leases name their holder as ``<node_name>/<instance>`` (:class:`NodeId`): a node's start
and stop touch only leases of its own name, a dead node's leases are found by its owner
name, and a late writer whose lease was taken away is fenced out by it.

The runtime drives a coordination (:mod:`jobd.runtime.cluster`): ``join`` before any
work, ``heartbeat`` every ``cluster.heartbeat_interval``, the leader's duties when
``is_leader``, ``leave`` at the end. A node that cannot heartbeat stops claiming
(:meth:`Coordination.can_claim`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from jobd.config import Config
from jobd.ratelimit import Decision, RateLimiter
from jobd.store.backend import Backend, Unhealthy

OWNER_SEPARATOR = "/"  # <node_name>/<instance>; node names cannot hold it


@dataclass(frozen=True, slots=True)
class NodeId:
    """One run of one node: its configured name and an instance made at start."""

    name: str
    instance: str

    @classmethod
    def new(cls, name: str) -> NodeId:
        """A new instance of node ``name``: this process id and 32 random bits."""
        return cls(name, f"{os.getpid()}-{secrets.token_hex(4)}")

    @property
    def owner(self) -> str:
        """The lease owner of this instance's jobs and webhooks."""
        return f"{self.name}{OWNER_SEPARATOR}{self.instance}"

    @property
    def owner_prefix(self) -> str:
        """What the lease owners of every instance of this node start with."""
        return f"{self.name}{OWNER_SEPARATOR}"


def node_of(owner: str) -> str:
    """The node name of a lease owner."""
    return owner.split(OWNER_SEPARATOR, 1)[0]


class Signal(StrEnum):
    """What a node tells the others (and the database tells every node)."""

    JOBS = "jobs"          # jobs were queued or put back: claim
    WEBHOOKS = "webhooks"  # webhooks were queued or put back: claim them
    TENANTS = "tenants"    # a tenant's API key, limits or state changed: forget cached ones
    CANCEL = "cancel"      # cancel:<job id>: a running job was asked to stop


@dataclass(slots=True)
class WakeUp:
    """What other nodes (or the database) said since the last wake-up, coalesced.
    ``everything``: notifications may have been missed (the listening connection was
    lost); act as if each kind came, and look at every running job's cancel flag."""

    jobs: bool = False
    webhooks: bool = False
    tenants: bool = False
    cancels: set[str] = field(default_factory=set)
    everything: bool = False

    def __bool__(self) -> bool:
        return self.jobs or self.webhooks or self.tenants or bool(self.cancels) or self.everything


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat's answer."""

    registered: bool          # False: this instance was taken for dead (its row is gone)
    leader: str | None        # the leader's owner name (None: nobody leads now)
    is_leader: bool


@dataclass(slots=True)
class Recovered:
    """Work put back: jobs to retry, jobs failed for good (their webhooks queued), webhooks
    back to pending, and the nodes it belonged to."""

    retry: int = 0
    fatal: int = 0
    webhooks: int = 0
    nodes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.retry or self.fatal or self.webhooks or self.nodes)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One live node, for ``jobd nodes``. Times are on the database's clock."""

    name: str
    instance: str
    host: str
    pid: int
    version: str
    started_at: float
    heartbeat_at: float
    silent_s: float        # since its last heartbeat
    timeout_s: float       # its cluster.node_timeout
    running: int           # jobs it holds
    leader: bool


WakeHandler = Callable[[WakeUp], None]


class Coordination(Protocol):
    """A node's dealings with the other nodes on its database. See the module docstring."""

    node: NodeId
    shared: bool  # other nodes may use the database: wake-ups and budgets go through it

    async def join(self) -> None:
        """Register this node before it does any work (waiting for an earlier instance of
        the same name to fall silent; ``StartupError`` if the name is in use)."""

    async def heartbeat(self) -> Beat:
        """Say this node is alive and stand for leader; ``StoreUnavailable`` if the
        database cannot be reached (the node stops claiming once that lasts)."""

    def can_claim(self) -> bool:
        """Whether this node may take work: its heartbeats go through and it was not
        taken for dead."""

    @property
    def is_leader(self) -> bool: ...

    async def recover_own(self, *, now: float) -> Recovered:
        """Put back what this node's earlier instances left running or sending."""

    async def rescue_dead(self, *, now: float) -> Recovered:
        """The leader's duty: put back the work of nodes silent for their timeout, and
        remove them. Safe to run on two nodes at once."""

    async def leave(self, *, now: float) -> Recovered:
        """At the end: put back what this instance still holds, step down, unregister."""

    async def nodes(self) -> list[NodeInfo]: ...

    def announce(self, *signals: Signal) -> None:
        """Tell the other nodes, soon and coalesced (nothing to wait for)."""

    async def tell(self, *signals: Signal) -> None:
        """Tell every node now, from a process that is not one (the CLI, after a change
        the nodes would otherwise find only by polling)."""

    def on_wake(self, handler: WakeHandler) -> None:
        """Call ``handler`` with what the other nodes said (in the event loop)."""

    def take_token(self, tenant_id: str, rate: float, burst: int,
                   now: float) -> Decision | asyncio.Future[Decision]:
        """One request against the tenant's rate limit: a decision at once (one process's
        bucket), or a future (the cluster's bucket, in the database)."""

    async def listen(self) -> None:
        """Receive the other nodes' wake-ups until :meth:`close` (reconnecting)."""

    def health(self) -> Unhealthy | None:
        """None while this node heartbeats; otherwise why not, for /healthz."""

    async def close(self) -> None: ...


class SingleNode:
    """The coordination of the only node on a database (SQLite). See the module docstring."""

    shared = False
    is_leader = True

    def __init__(self, backend: Backend, config: Config, node: NodeId | None = None) -> None:
        self._backend = backend
        self.node = node or NodeId.new(config.cluster.name)
        self._limiter = RateLimiter()
        self._closed = asyncio.Event()

    async def join(self) -> None:
        return None

    async def heartbeat(self) -> Beat:
        return Beat(registered=True, leader=self.node.owner, is_leader=True)

    def can_claim(self) -> bool:
        return True

    async def recover_own(self, *, now: float) -> Recovered:
        """Everything running or sending: only a process before this one can hold it."""
        jobs = await self._backend.rescue_jobs(now=now, all_running=True)
        webhooks = await self._backend.release_deliveries(now=now, all_sending=True)
        return Recovered(retry=jobs["retry"], fatal=jobs["fatal"], webhooks=webhooks)

    async def rescue_dead(self, *, now: float) -> Recovered:
        return Recovered()

    async def leave(self, *, now: float) -> Recovered:
        """What this process leaves running is put back by its next start."""
        return Recovered()

    async def nodes(self) -> list[NodeInfo]:
        return []

    def announce(self, *signals: Signal) -> None:
        return None

    async def tell(self, *signals: Signal) -> None:
        return None

    def on_wake(self, handler: WakeHandler) -> None:
        return None

    def take_token(self, tenant_id: str, rate: float, burst: int, now: float) -> Decision:
        return self._limiter.take(tenant_id, rate, burst, now)

    async def listen(self) -> None:
        await self._closed.wait()

    def health(self) -> Unhealthy | None:
        return None

    async def close(self) -> None:
        self._closed.set()


def open_coordination(backend: Backend, config: Config, node: NodeId | None = None) -> Coordination:
    """The coordination for ``backend``'s database: shared on PostgreSQL, single on
    SQLite. Nothing is connected until :meth:`Coordination.join` (or a call that needs
    the database)."""
    if backend.name == "postgres":
        from jobd.store.postgres.backend import PostgresBackend
        from jobd.store.postgres.cluster import PostgresCoordination

        assert isinstance(backend, PostgresBackend)
        return PostgresCoordination(backend, config, node=node)
    return SingleNode(backend, config, node)
