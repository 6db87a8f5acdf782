"""The shared rate limit: one token bucket per tenant for every node, in the database,
refilled and taken from by one statement, exact under concurrency."""

from __future__ import annotations

import asyncio
import time

from jobd.ratelimit import Decision
from tests.cluster_store.conftest import Cluster, Node

T = 0.0  # the shared bucket runs on the database's clock: the caller's time is not used


async def takes(node: Node, n: int, *, rate: float, burst: int,
                tenant_id: str = "acme") -> list[Decision]:
    """``n`` requests made in one turn of the event loop."""
    return list(await asyncio.gather(*(node.coordination.take_token(tenant_id, rate, burst, T)
                                       for _ in range(n))))


async def test_a_burst_is_shared_exactly_by_every_node(cluster: Cluster) -> None:
    nodes = [await cluster.start(n) for n in ("alpha", "beta", "gamma")]
    rounds = [takes(node, 25, rate=0.001, burst=100) for node in nodes for _ in range(4)]
    decisions = [d for batch in await asyncio.gather(*rounds) for d in batch]
    allowed = [d for d in decisions if d.allowed]
    assert len(decisions) == 300 and len(allowed) == 100
    # each token was handed out once: every level from 99 down to 0 seen by one request
    assert sorted(d.remaining for d in allowed) == list(range(100))
    refused = [d for d in decisions if not d.allowed]
    assert all(d.remaining == 0 and d.retry_after_s >= 1 and d.limit == 100 for d in refused)
    assert refused[0].headers()["Retry-After"] == str(refused[0].retry_after_s)


async def test_the_takes_of_one_turn_are_one_statement(cluster: Cluster) -> None:
    node = await cluster.start("alpha")
    before = node.coordination.bucket_statements
    decisions = await asyncio.gather(
        *(node.coordination.take_token(f"t{i % 3}", 1.0, 10, T) for i in range(60)))
    assert node.coordination.bucket_statements - before == 1
    assert [d.allowed for d in decisions] == [True] * 30 + [False] * 30
    assert [d.remaining for d in decisions[:6]] == [9, 9, 9, 8, 8, 8]


async def test_the_bucket_refills_at_its_rate_across_nodes(cluster: Cluster) -> None:
    """Three nodes take as fast as they can for about a second: what they are given is
    the burst plus the rate times the time that passed on the database's clock."""
    nodes = [await cluster.start(n) for n in ("alpha", "beta", "gamma")]
    rate, burst = 40.0, 10
    first = await takes(nodes[0], 1, rate=rate, burst=burst)  # the bucket starts full here
    began = await cluster.peek.fetchval("SELECT updated_at FROM rate_buckets")
    stop_at = time.monotonic() + 1.0

    async def hammer(node: Node) -> int:
        given = 0
        while time.monotonic() < stop_at:
            given += sum(d.allowed for d in await takes(node, 5, rate=rate, burst=burst))
        return given
    given = first[0].allowed + sum(await asyncio.gather(*(hammer(n) for n in nodes)))
    last = await cluster.peek.fetchval("SELECT updated_at FROM rate_buckets")
    expected = burst + rate * (last - began)
    assert expected - 2 <= given <= expected + 1, (given, expected)


async def test_a_new_rate_or_burst_starts_the_bucket_full(cluster: Cluster) -> None:
    node = await cluster.start("alpha")
    assert sum(d.allowed for d in await takes(node, 5, rate=0.001, burst=3)) == 3
    assert not (await takes(node, 1, rate=0.001, burst=3))[0].allowed
    assert sum(d.allowed for d in await takes(node, 5, rate=0.001, burst=4)) == 4
    assert sum(d.allowed for d in await takes(node, 5, rate=0.002, burst=4)) == 4
    other = await takes(node, 2, rate=0.001, burst=1, tenant_id="other")
    assert [d.allowed for d in other] == [True, False]  # a bucket per tenant
