"""Several nodes' coordinations in one process, on one throwaway PostgreSQL database.

Each node is what a ``jobd serve`` process holds: a :class:`PostgresBackend` (its pool)
and a :class:`PostgresCoordination` (its own connection). Node timeouts are short (1 s)
so that a takeover takes about a second of real time; a node that fell silent longer
ago is made by moving its heartbeat back in the ``nodes`` table (:meth:`Cluster.age`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
import pytest

from jobd.config import ClusterConfig, Config, DatabaseConfig
from jobd.store.cluster import NodeId, WakeUp
from jobd.store.postgres.backend import PostgresBackend
from jobd.store.postgres.cluster import PostgresCoordination
from jobd.store.postgres.connection import migrate_database

NODE_TIMEOUT_S = 1.0
HEARTBEAT_S = 0.2


@dataclass
class Node:
    backend: PostgresBackend
    coordination: PostgresCoordination
    wakes: list[WakeUp] = field(default_factory=list)

    @property
    def owner(self) -> str:
        return self.coordination.node.owner


class Cluster:
    def __init__(self, url: str, peek: asyncpg.Connection) -> None:
        self.url = url
        self.peek = peek
        self.nodes: list[Node] = []
        self._listening: list[asyncio.Task[None]] = []

    def config(self, name: str, *, node_timeout: float = NODE_TIMEOUT_S,
               heartbeat: float = HEARTBEAT_S, url: str | None = None) -> Config:
        return Config(database=DatabaseConfig(url=url or self.url, pool_size=3),
                      cluster=ClusterConfig(node_name=name, node_timeout=node_timeout,
                                            heartbeat_interval=heartbeat))

    async def start(self, name: str, *, join: bool = True, listen: bool = False,
                    node: NodeId | None = None, monotonic: Callable[[], float] = time.monotonic,
                    **config: float) -> Node:
        """A node's backend and coordination, opened (and joined, and listening)."""
        settings = self.config(name, **config)  # type: ignore[arg-type]
        backend = PostgresBackend(settings.database)
        await backend.open()
        coordination = PostgresCoordination(backend, settings, node=node, monotonic=monotonic)
        started = Node(backend, coordination)
        self.nodes.append(started)
        coordination.on_wake(started.wakes.append)
        if join:
            await coordination.join()
        if listen:
            self._listening.append(asyncio.create_task(coordination.listen()))
            await wait_until(lambda: coordination.link.connected, "connected")
        return started

    async def stop(self, node: Node) -> None:
        if node in self.nodes:
            self.nodes.remove(node)
            await node.coordination.close()
            await node.backend.close()

    async def close(self) -> None:
        for node in list(self.nodes):
            await self.stop(node)
        for task in self._listening:
            task.cancel()
        await asyncio.gather(*self._listening, return_exceptions=True)

    async def age(self, node: Node, seconds: float) -> None:
        """Make ``node`` silent for ``seconds`` longer: its last heartbeat that much older."""
        await self.peek.execute("UPDATE nodes SET heartbeat_at = heartbeat_at - $2 WHERE name = $1",
                                node.coordination.node.name, seconds)

    async def settle(self, node: Node, seconds: float = 3600) -> None:
        """Make ``node``'s run of heartbeats ``seconds`` longer, as if it had been up (and
        the database reachable) that much longer."""
        await self.peek.execute("UPDATE nodes SET alive_since = alive_since - $2 WHERE name = $1",
                                node.coordination.node.name, seconds)

    async def leader(self) -> str | None:
        owner: str | None = await self.peek.fetchval(
            "SELECT owner FROM leader WHERE expires_at >= jobd_clock()")
        return owner


async def wait_until(check: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout_s} s"
        await asyncio.sleep(0.005)


@pytest.fixture
async def cluster_url(pg_database_url: str) -> str:
    await migrate_database(DatabaseConfig(url=pg_database_url))
    return pg_database_url


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[Cluster]:
    peek = await asyncpg.connect(cluster_url, timeout=10)
    nodes = Cluster(cluster_url, peek)
    try:
        yield nodes
    finally:
        await nodes.close()
        await peek.close()


class SteppedClock:
    """A monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
