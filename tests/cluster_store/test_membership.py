"""Nodes on one database: registration, heartbeats on the database's clock, one leader,
takeover, and a node that cannot heartbeat or was taken for dead."""

from __future__ import annotations

import asyncio
import time

import pytest

from jobd.errors import StartupError, StoreUnavailable
from jobd.store.cluster import NodeId
from tests.cluster_store.conftest import NODE_TIMEOUT_S, Cluster, SteppedClock, wait_until


async def test_a_node_registers_and_heartbeats_on_the_databases_clock(cluster: Cluster) -> None:
    node = await cluster.start("alpha")
    row = await cluster.peek.fetchrow("SELECT * FROM nodes WHERE name = 'alpha'")
    assert row["instance"] == node.coordination.node.instance
    assert row["timeout_s"] == NODE_TIMEOUT_S
    db_now = await cluster.peek.fetchval("SELECT jobd_clock()")
    assert db_now - 5 < row["heartbeat_at"] <= db_now
    await cluster.peek.execute("UPDATE nodes SET heartbeat_at = 0")  # a long time ago
    beat = await node.coordination.heartbeat()
    assert beat.registered
    after = await cluster.peek.fetchval("SELECT heartbeat_at FROM nodes WHERE name = 'alpha'")
    assert after > db_now - 5


async def test_the_live_nodes_with_their_running_jobs_and_the_leader(cluster: Cluster) -> None:
    from tests.contract.helpers import claim, submit, tenant

    alpha, beta = await cluster.start("alpha"), await cluster.start("beta")
    await alpha.coordination.heartbeat()
    await beta.coordination.heartbeat()
    await tenant(alpha.backend)
    for _ in range(3):
        await submit(alpha.backend)
    assert len((await claim(beta.backend, owner=beta.owner, limit=2)).jobs) == 2
    listed = {n.name: n for n in await alpha.coordination.nodes()}
    assert set(listed) == {"alpha", "beta"}
    assert (listed["alpha"].running, listed["beta"].running) == (0, 2)
    assert [n.leader for n in listed.values()] == [True, False]
    assert listed["beta"].instance == beta.coordination.node.instance
    assert 0 <= listed["beta"].silent_s < 5
    await cluster.age(beta, 60)  # silent longer than its timeout: no longer listed
    assert [n.name for n in await alpha.coordination.nodes()] == ["alpha"]


async def test_one_leader_at_a_time_and_it_keeps_the_lead(cluster: Cluster) -> None:
    nodes = [await cluster.start(name) for name in ("alpha", "beta", "gamma")]
    for _ in range(3):
        beats = await asyncio.gather(*(n.coordination.heartbeat() for n in nodes))
        assert sum(b.is_leader for b in beats) == 1
        assert len({b.leader for b in beats}) == 1
    first = await cluster.peek.fetchrow("SELECT * FROM leader")
    for node in reversed(nodes):
        await node.coordination.heartbeat()
    again = await cluster.peek.fetchrow("SELECT * FROM leader")
    assert again["owner"] == first["owner"]
    assert again["since"] == first["since"]  # renewed, not elected again
    assert again["expires_at"] > first["expires_at"]
    assert [n.coordination.is_leader for n in nodes] == [n.owner == first["owner"] for n in nodes]


async def test_the_leader_is_replaced_once_it_stops_heartbeating(cluster: Cluster) -> None:
    """Real time: the lead expires node_timeout after its last renewal, and a node still
    heartbeating takes it over; the silent node is then taken for dead."""
    alpha, beta = await cluster.start("alpha"), await cluster.start("beta")
    await alpha.coordination.heartbeat()
    assert (await beta.coordination.heartbeat()).leader == alpha.owner
    silent_from = time.monotonic()
    while not (await beta.coordination.heartbeat()).is_leader:
        assert time.monotonic() - silent_from < NODE_TIMEOUT_S + 2, "no takeover"
        await asyncio.sleep(0.05)
    took_s = time.monotonic() - silent_from
    assert NODE_TIMEOUT_S - 0.1 < took_s < NODE_TIMEOUT_S + 1, took_s
    assert await cluster.leader() == beta.owner
    beat = await alpha.coordination.heartbeat()  # back, but the lead is gone
    assert beat.registered and not beat.is_leader and beat.leader == beta.owner
    assert not alpha.coordination.is_leader


async def test_a_node_leaving_steps_down_and_another_leads_at_once(cluster: Cluster) -> None:
    alpha, beta = await cluster.start("alpha"), await cluster.start("beta")
    await alpha.coordination.heartbeat()
    await beta.coordination.heartbeat()
    await alpha.coordination.leave(now=time.time())
    assert await cluster.peek.fetchval("SELECT count(*) FROM nodes WHERE name = 'alpha'") == 0
    assert await cluster.leader() is None
    assert (await beta.coordination.heartbeat()).is_leader
    assert not (await alpha.coordination.heartbeat()).is_leader  # it stands no more


async def test_a_node_that_cannot_heartbeat_stops_claiming(cluster: Cluster) -> None:
    clock = SteppedClock()
    node = await cluster.start("alpha", monotonic=clock)
    assert node.coordination.can_claim()
    window = NODE_TIMEOUT_S - 0.2  # the timeout less one heartbeat interval
    clock.now += window - 0.01
    assert node.coordination.can_claim() and node.coordination.health() is None
    clock.now += 0.02
    assert not node.coordination.can_claim()
    health = node.coordination.health()
    assert health is not None and health.code == "heartbeat_failing"
    await node.coordination.heartbeat()
    assert node.coordination.can_claim()
    await node.coordination.link.close()  # no connection: the heartbeat fails
    with pytest.raises(StoreUnavailable):
        await node.coordination.heartbeat()
    clock.now += window + 0.01
    assert not node.coordination.can_claim()


async def test_a_node_taken_for_dead_learns_it_and_claims_nothing_more(cluster: Cluster) -> None:
    alpha, beta = await cluster.start("alpha"), await cluster.start("beta")
    await beta.coordination.heartbeat()
    await cluster.settle(beta)
    await cluster.age(alpha, 60)
    assert (await beta.coordination.rescue_dead(now=time.time())).nodes == ["alpha"]
    beat = await alpha.coordination.heartbeat()
    assert not beat.registered and not beat.is_leader
    assert not alpha.coordination.can_claim()
    health = alpha.coordination.health()
    assert health is not None and health.code == "node_taken_for_dead"
    assert await cluster.peek.fetchval("SELECT count(*) FROM nodes WHERE name = 'alpha'") == 0


# joining ---------------------------------------------------------------------------------


async def test_a_restarted_node_waits_for_its_earlier_instance_to_fall_silent(
        cluster: Cluster) -> None:
    earlier = await cluster.start("alpha")
    await earlier.coordination.heartbeat()  # then it dies: no more heartbeats
    started = time.monotonic()
    later = await cluster.start("alpha")
    waited_s = time.monotonic() - started
    assert NODE_TIMEOUT_S - 0.3 < waited_s < NODE_TIMEOUT_S + 1, waited_s
    assert await cluster.peek.fetchval("SELECT instance FROM nodes WHERE name = 'alpha'") == \
        later.coordination.node.instance


async def test_a_node_name_in_use_by_a_live_node_is_refused(cluster: Cluster) -> None:
    live = await cluster.start("alpha")

    async def keep_beating() -> None:
        while True:
            await live.coordination.heartbeat()
            await asyncio.sleep(0.1)
    beating = asyncio.create_task(keep_beating())
    try:
        with pytest.raises(StartupError, match=r"node name 'alpha' is in use by a live jobd: "
                                               r"instance \S+ on .* give each node its own "
                                               r"cluster.node_name"):
            await cluster.start("alpha")
    finally:
        beating.cancel()
    assert await cluster.peek.fetchval("SELECT instance FROM nodes WHERE name = 'alpha'") == \
        live.coordination.node.instance


async def test_an_earlier_instance_gone_from_this_host_is_taken_over_at_once(
        cluster: Cluster) -> None:
    """Its pid names no process here: it did not stop cleanly, and cannot come back."""
    await cluster.start("alpha", node=NodeId("alpha", "1-dead"))
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    await cluster.peek.execute("UPDATE nodes SET pid = $1 WHERE name = 'alpha'", gone.pid)
    started = time.monotonic()
    later = await cluster.start("alpha")
    assert time.monotonic() - started < 0.5
    await wait_until(lambda: later.coordination.can_claim(), "claiming")
