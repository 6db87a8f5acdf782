"""Three ``jobd serve`` processes on one throwaway PostgreSQL database.

One server for the module, started here rather than the session's (a test restarts it),
with a migrated template database; each test gets a fresh copy of it and three nodes
(``node-1`` .. ``node-3``), each on its own port and config file. The tests that kill a
node make node timeouts short (2 s), so that it is taken for dead within seconds. Jobs of type ``probe``
(:mod:`tests.cluster.probe`) record every execution in a file per node; webhooks go to a
:class:`Receiver` that records every delivery. Tenants are made through the store
(:meth:`Cluster.tenant`), quicker than a CLI process per tenant.

The load comes from this process over kept-alive connections (aiohttp), spread over the
nodes round-robin, as a load balancer would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from jobd.cli.config import render_toml
from jobd.config import DatabaseConfig
from jobd.store.postgres.backend import PostgresBackend
from jobd.store.postgres.connection import migrate_database
from tests.cluster.probe import PROBE_DIR_ENV
from tests.pg import (
    Server,
    _require_asyncpg,
    _unavailable,
    admin,
    find_bin_dir,
    start_server,
    with_database,
)
from tests.support import Daemon, cli, cli_json, free_port, request

pytestmark = pytest.mark.cluster

NODES = 3
# A dead node is taken for dead after this, in the tests that kill one (they pass it).
NODE_TIMEOUT_S = 2.0
# The others: on a machine this loaded, a node starved of CPU for 2 s would be taken
# for dead, and its jobs run again elsewhere (at least once), which they do not test.
SAFE_NODE_TIMEOUT_S = 10.0
HEARTBEAT_S = 0.25
TEMPLATE = "cluster_template"
_databases = itertools.count(1)


def node_settings(name: str, port: int, url: str, **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": port},
        "database": {"url": url, "pool_size": 6},
        "workers": {"concurrency": 16, "poll_interval": 0.05, "lease_seconds": 60,
                    "shutdown_grace": 2},
        "jobs": {"backoff_base": 0.05, "backoff_max": 0.2},
        "webhooks": {"allow_private_networks": True, "retry_delays": [0.1, 0.2, 0.4],
                     "timeout": 5},
        "rate_limit": {"rate": 100_000, "burst": 100_000},
        "cluster": {"node_name": name, "node_timeout": SAFE_NODE_TIMEOUT_S,
                    "heartbeat_interval": HEARTBEAT_S},
        "logging": {"level": "info"},
        "handlers": {"probe": "tests.cluster.probe:probe"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


# the webhook receiver --------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    webhook_id: str
    job_id: str
    status: str


class Receiver:
    """A webhook receiver on 127.0.0.1: records each delivery, answers 200 after
    ``delay_s`` (a slow receiver keeps deliveries in flight)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.delay_s = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with receiver.lock:
                    receiver.received.append(Received(self.headers.get("webhook-id", ""),
                                                      body.get("jobId", ""),
                                                      body.get("status", "")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 256
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def webhook_ids(self) -> dict[str, set[str]]:
        """Job id -> the webhook ids it was delivered under."""
        with self.lock:
            found: dict[str, set[str]] = {}
            for r in self.received:
                found.setdefault(r.job_id, set()).add(r.webhook_id)
            return found


# the nodes ---------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    daemon: Daemon
    config: Path

    @property
    def base(self) -> str:
        return self.daemon.base

    def healthz(self) -> int:
        try:
            status, _, _ = request("GET", self.base + "/healthz", timeout_s=2)
        except OSError:
            return 0
        return status


@dataclass(frozen=True)
class Tenant:
    id: str
    api_key: str


@dataclass(frozen=True)
class Run:
    """One execution of a probe job, from its node's log (``end`` None: it did not end)."""

    job_id: str
    attempt: int
    node: str
    start: float
    end: float | None


@dataclass
class Cluster:
    tmp: Path
    url: str
    server: Server
    receiver: Receiver
    nodes: list[Node] = field(default_factory=list)

    @property
    def probe_dir(self) -> Path:
        return self.tmp / "probe"

    def start(self, n: int = NODES, *, each: Callable[[int], dict[str, dict[str, Any]]] | None = None,
              **sections: dict[str, Any]) -> list[Node]:
        """``n`` nodes, started together (``each(i)``: more settings for node ``i``)."""
        for i in range(1, n + 1):
            name, port = f"node-{i}", free_port()
            config = self.tmp / f"{name}.toml"
            settings = node_settings(name, port, self.url, **sections)
            for section, values in (each(i) if each else {}).items():
                settings.setdefault(section, {}).update(values)
            config.write_text(render_toml(settings))
            self.nodes.append(Node(name, Daemon(config, port, self.tmp / f"{name}.log"), config))
        starting = [threading.Thread(target=node.daemon.start, kwargs={"timeout_s": 30})
                    for node in self.nodes]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        for node in self.nodes:
            assert node.daemon.proc is not None and node.daemon.proc.poll() is None, \
                f"{node.name} did not start:\n{node.daemon.log()}"
        return self.nodes

    async def tenant(self, tenant_id: str, *, rate: float = 100_000, burst: int = 100_000,
                     max_concurrency: int | None = None) -> Tenant:
        backend = PostgresBackend(DatabaseConfig(url=self.url, pool_size=1))
        await backend.open()
        try:
            new = await backend.create_tenant(tenant_id, rate=rate, burst=burst,
                                              max_concurrency=max_concurrency, now=time.time())
        finally:
            await backend.close()
        return Tenant(tenant_id, new.api_key)

    def cli_json(self, *args: str) -> Any:
        return cli_json(self.nodes[0].config, *args)

    def cli(self, *args: str) -> str:
        return cli(self.nodes[0].config, *args).stdout

    def runs(self) -> list[Run]:
        """Every probe execution so far, from every node's log."""
        found: dict[tuple[str, int, str], Run] = {}
        for log in self.probe_dir.glob("*.log"):
            for line in log.read_text().splitlines():
                kind, job_id, attempt, node, at = line.split()
                key = (job_id, int(attempt), node)
                if kind == "S":
                    found[key] = Run(job_id, int(attempt), node, float(at), None)
                else:
                    found[key] = Run(job_id, int(attempt), node, found[key].start, float(at))
        return list(found.values())

    def executions(self) -> Counter[str]:
        """Job id -> how many times a node started it."""
        return Counter(run.job_id for run in self.runs())

    def logs(self, *, notable: bool = False) -> str:
        """The nodes' logs (``notable``: their warnings and errors only)."""
        def lines(node: Node) -> str:
            text = node.daemon.log() if node.daemon.log_path.exists() else ""
            if notable:
                text = "\n".join(line for line in text.splitlines()
                                 if " INFO " not in line)
            return text
        return "\n".join(f"--- {n.name}\n{lines(n)}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.daemon.stop()


@pytest.fixture(scope="module")
def cluster_server() -> Iterator[Server]:
    """A server of the module's own, with a migrated database to copy for each test."""
    _require_asyncpg()
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable("no PostgreSQL server binaries to run the cluster tests on")
    server = start_server(bin_dir)
    try:
        admin(server.url, f"CREATE DATABASE {TEMPLATE}")
        asyncio.run(migrate_database(DatabaseConfig(url=with_database(server.url, TEMPLATE))))
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(tmp_path: Path, cluster_server: Server,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    name = f"cluster_{os.getpid()}_{next(_databases)}"
    admin(cluster_server.url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    (tmp_path / "probe").mkdir()
    monkeypatch.setenv(PROBE_DIR_ENV, str(tmp_path / "probe"))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    found = Cluster(tmp_path, with_database(cluster_server.url, name), cluster_server,
                    Receiver())
    try:
        yield found
    finally:
        found.stop()
        found.receiver.close()
        print(found.logs(notable=True))  # shown when the test failed
        admin(cluster_server.url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def db(cluster: Cluster) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the nodes' database (reconnected by
    :func:`fetchval` after a restart of the server)."""
    conn = await asyncpg.connect(cluster.url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


# the load ----------------------------------------------------------------------------


@dataclass
class Answer:
    node: str
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class Load:
    """POST /jobs spread over the nodes round-robin, from kept-alive connections."""

    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.session = session
        self._next = itertools.count()

    def next_node(self) -> Node:
        nodes = self.cluster.nodes
        return nodes[next(self._next) % len(nodes)]

    async def post(self, tenant: Tenant, job: dict[str, Any], *, key: str,
                   node: Node | None = None) -> Answer:
        target = node or self.next_node()
        headers = {"Authorization": f"Bearer {tenant.api_key}", "Idempotency-Key": key}
        async with self.session.post(target.base + "/jobs", json={"tenantId": tenant.id, **job},
                                     headers=headers) as resp:
            body = await resp.json(content_type=None)
            return Answer(target.name, resp.status, body, dict(resp.headers))

    async def delete(self, tenant: Tenant, job_id: str, *, node: Node) -> Answer:
        async with self.session.delete(f"{node.base}/jobs/{job_id}", headers={
                "Authorization": f"Bearer {tenant.api_key}"}) as resp:
            return Answer(node.name, resp.status, await resp.json(content_type=None),
                          dict(resp.headers))

    async def many(self, tenant: Tenant, jobs: list[tuple[str, dict[str, Any]]], *,
                   in_flight: int = 64) -> list[Answer | None]:
        """POST every (key, job), ``in_flight`` at a time; None for a request that got no
        answer (its node died)."""
        answers: list[Answer | None] = [None] * len(jobs)
        todo = iter(enumerate(jobs))

        async def worker() -> None:
            for i, (key, job) in todo:
                try:
                    answers[i] = await self.post(tenant, job, key=key)
                except (TimeoutError, aiohttp.ClientError):
                    answers[i] = None
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return answers


async def blast(nodes: list[Node], tenant: Tenant, jobs: list[tuple[str, dict[str, Any]]], *,
                connections: int = 24, depth: int = 8) -> list[tuple[int, dict[str, Any]]]:
    """POST every (key, job) as quickly as this process can: ``connections`` kept-alive
    connections per node, each sending ``depth`` requests at a time (pipelined), the
    jobs dealt to the nodes round-robin. A lean client: aiohttp's costs more CPU than the
    three nodes it loads. Returns (status, body) per job, in order."""
    answers: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(jobs)
    lanes: list[list[int]] = [[] for _ in range(len(nodes) * connections)]
    for i in range(len(jobs)):
        node = i % len(nodes)
        lanes[node * connections + (i // len(nodes)) % connections].append(i)

    def request(host: str, i: int) -> bytes:
        key, job = jobs[i]
        body = json.dumps({"tenantId": tenant.id, **job}).encode()
        return (f"POST /jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
                f"{tenant.api_key}\r\nIdempotency-Key: {key}\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    async def lane(node: Node, todo: list[int]) -> None:
        host = node.base.removeprefix("http://")
        reader, writer = await asyncio.open_connection(*host.split(":"))
        try:
            for start in range(0, len(todo), depth):
                batch = todo[start:start + depth]
                writer.write(b"".join(request(host, i) for i in batch))
                for i in batch:
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head[9:12])
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    answers[i] = (status, json.loads(await reader.readexactly(length)))
        finally:
            writer.close()
    await asyncio.gather(*(lane(nodes[n // connections], todo)
                           for n, todo in enumerate(lanes) if todo))
    return answers


@pytest.fixture
async def load(cluster: Cluster) -> AsyncIterator[Load]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=48)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield Load(cluster, session)


def probe(**payload: Any) -> dict[str, Any]:
    return {"type": "probe", "payload": payload}


async def until(check: Callable[[], Any], what: str, timeout_s: float = 30.0,
                interval_s: float = 0.05) -> Any:
    """Poll ``check`` (a function, or a coroutine function) until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"not {what} within {timeout_s} s"
        await asyncio.sleep(interval_s)
