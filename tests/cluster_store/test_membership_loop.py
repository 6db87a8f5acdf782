"""The runtime's side of a node's membership (jobd.runtime.cluster): heartbeats that
fail without giving up, the leader's rescue waking the pool and the dispatcher, a node
taken for dead stopping, and wake-ups handed to the parts they concern."""

from __future__ import annotations

import asyncio

from jobd.clock import FakeClock
from jobd.config import ClusterConfig
from jobd.runtime.cluster import Membership, Receivers
from jobd.store.cluster import WakeUp
from jobd.supervisor import Supervisor
from tests.cluster_store.conftest import HEARTBEAT_S, Cluster, Node
from tests.conftest import T0
from tests.contract.helpers import claim, submit, tenant


class Told:
    """What the receivers were told, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def receivers(self) -> Receivers:
        return Receivers(jobs=lambda: self.calls.append("jobs"),
                         webhooks=lambda: self.calls.append("webhooks"),
                         tenants=lambda: self.calls.append("tenants"),
                         cancel=lambda job_id: self.calls.append(f"cancel {job_id}"),
                         all_cancels=lambda: self.calls.append("all cancels"))


def membership(cluster: Cluster, node: Node, told: Told,
               supervisor: Supervisor | None = None) -> Membership:
    return Membership(coordination=node.coordination, clock=FakeClock(T0 + 100),
                      config=cluster.config(node.coordination.node.name).cluster,
                      receivers=told.receivers(), supervisor=supervisor)


async def test_the_leader_rescues_and_wakes_the_pool_and_the_dispatcher(
        cluster: Cluster) -> None:
    alpha, beta = await cluster.start("alpha"), await cluster.start("beta")
    told = Told()
    member = membership(cluster, alpha, told)
    await member.run_once()
    assert alpha.coordination.is_leader and told.calls == []
    await tenant(beta.backend)
    await submit(beta.backend)
    await claim(beta.backend, owner=beta.owner)
    await cluster.settle(alpha)
    await cluster.age(beta, 5)
    await member.run_once()
    assert told.calls == ["jobs", "webhooks"]
    assert [n.name for n in await alpha.coordination.nodes()] == ["alpha"]


async def test_a_failing_heartbeat_is_tried_again_at_the_next_beat(cluster: Cluster) -> None:
    alpha = await cluster.start("alpha")
    supervisor = Supervisor()
    member = membership(cluster, alpha, Told(), supervisor)
    await alpha.coordination.link.close()
    for _ in range(20):  # more than the supervisor's faults before it gives up
        await member.run_once()
    assert supervisor.gave_up is None


async def test_a_node_taken_for_dead_gives_up(cluster: Cluster) -> None:
    alpha, beta = await cluster.start("alpha"), await cluster.start("beta")
    await beta.coordination.heartbeat()
    await cluster.settle(beta)
    await cluster.age(alpha, 5)
    await beta.coordination.rescue_dead(now=T0)
    supervisor = Supervisor()
    member = membership(cluster, alpha, Told(), supervisor)
    await asyncio.wait_for(member.run(), 5 * HEARTBEAT_S)  # returns: it stopped
    assert supervisor.gave_up is not None and "took this node for dead" in supervisor.gave_up


def test_wake_ups_go_to_the_parts_they_concern() -> None:
    told = Told()
    member = Membership(coordination=_Quiet(), clock=FakeClock(T0),  # type: ignore[arg-type]
                        config=ClusterConfig(), receivers=told.receivers())
    member.woken(WakeUp(jobs=True, cancels={"job_1"}))
    member.woken(WakeUp(tenants=True, webhooks=True))
    assert told.calls == ["jobs", "cancel job_1", "webhooks", "tenants"]
    told.calls.clear()
    member.woken(WakeUp(everything=True))
    assert told.calls == ["jobs", "webhooks", "tenants", "all cancels"]


class _Quiet:
    def on_wake(self, handler: object) -> None:
        return None
