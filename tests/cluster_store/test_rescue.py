"""Rescue by liveness: the leader puts back a dead node's running jobs and webhooks being
sent at once, fenced so that the dead node's late results stay out; a node's start and
stop touch only its own work; two leaders at once do it once."""

from __future__ import annotations

import asyncio

from jobd.credentials import new_delivery_id
from jobd.models import DeliveryStatus, JobStatus
from jobd.store.backend import ClaimedDelivery, DirectDelivery
from jobd.store.cluster import NodeId
from tests.cluster_store.conftest import Cluster, Node
from tests.conftest import T0
from tests.contract.helpers import HOOK, claim, get, submit, tenant

LEASE_S = 300.0  # far longer than any test: only liveness puts work back here


async def running(node: Node, n: int, **fields: object) -> list:  # type: ignore[type-arg]
    """``n`` new jobs, claimed by ``node``."""
    for _ in range(n):
        await submit(node.backend, **fields)  # type: ignore[arg-type]
    jobs = (await claim(node.backend, owner=node.owner, limit=n, lease_s=LEASE_S)).jobs
    assert len(jobs) == n
    return jobs


async def sending(node: Node, n: int) -> list[ClaimedDelivery]:
    """``n`` webhooks of finished jobs, claimed by ``node`` for sending."""
    for job in await running(node, n, webhook_url=HOOK):
        assert await node.backend.finish_job(job, owner=node.owner, status=JobStatus.SUCCEEDED,
                                             now=T0, result_json="{}")
    got = await node.backend.claim_deliveries(now=T0, limit=n, lease_s=LEASE_S, owner=node.owner)
    assert len(got) == n
    return got


async def statuses(cluster: Cluster, table: str) -> dict[str, tuple[str, str | None]]:
    return {r["id"]: (r["status"], r["lease_owner"]) for r in
            await cluster.peek.fetch(f"SELECT id, status, lease_owner FROM {table}")}


async def three(cluster: Cluster) -> tuple[Node, Node, Node]:
    """alpha (the leader, up for an hour), beta and gamma."""
    alpha, beta, gamma = [await cluster.start(n) for n in ("alpha", "beta", "gamma")]
    assert (await alpha.coordination.heartbeat()).is_leader
    await cluster.settle(alpha)
    await tenant(alpha.backend)
    return alpha, beta, gamma


async def test_a_dead_nodes_jobs_and_webhooks_are_put_back_at_once(cluster: Cluster) -> None:
    alpha, beta, gamma = await three(cluster)
    lost_jobs = await running(beta, 3)
    lost_hooks = await sending(beta, 2)
    kept_jobs = await running(gamma, 2)
    kept_hooks = await sending(gamma, 1)
    direct = DirectDelivery(new_delivery_id(), b'{"direct": true}', T0 + LEASE_S)
    [last] = await running(beta, 1, webhook_url=HOOK)
    assert await beta.backend.finish_job(last, owner=beta.owner, status=JobStatus.SUCCEEDED,
                                         now=T0, result_json="{}", direct=direct)
    hooks = await statuses(cluster, "deliveries")
    assert hooks[direct.id] == ("sending", beta.owner)  # a direct send is held by its node

    assert not await alpha.coordination.rescue_dead(now=T0 + 1)  # beta is alive
    await cluster.age(beta, 1.5)  # its timeout is 1 s
    rescued = await alpha.coordination.rescue_dead(now=T0 + 2)
    assert (rescued.nodes, rescued.retry, rescued.fatal, rescued.webhooks) == (["beta"], 3, 0, 3)

    jobs = await statuses(cluster, "jobs")
    assert all(jobs[j.id] == ("retry", None) for j in lost_jobs)
    assert all(jobs[j.id] == ("running", gamma.owner) for j in kept_jobs)
    for job in lost_jobs:
        stored = await get(alpha.backend, job.id)
        assert stored.next_run_at == T0 + 2
        assert stored.last_error == "attempt 1 was interrupted (node beta stopped heartbeating); " \
                                    "retrying"
    hooks = await statuses(cluster, "deliveries")
    assert all(hooks[d.id] == ("pending", None) for d in [*lost_hooks])
    assert hooks[direct.id] == ("pending", None)  # the same delivery: the same webhook-id
    assert all(hooks[d.id] == ("sending", gamma.owner) for d in kept_hooks)
    assert await cluster.peek.fetchval("SELECT count(*) FROM nodes WHERE name = 'beta'") == 0

    # beta's late results are fenced out
    late = lost_jobs[0]
    assert not await beta.backend.finish_job(late, owner=beta.owner, status=JobStatus.SUCCEEDED,
                                             now=T0 + 3, result_json='{"late": 1}')
    assert (await get(alpha.backend, late.id)).result is None
    assert await beta.backend.record_delivery_attempt(
        lost_hooks[0], now=T0 + 3, attempted_at=T0 + 3, status_code=200, error=None,
        duration_ms=1.0, retry_at=None) is None
    # and another node sends the same webhook again, under the same id
    again = await gamma.backend.claim_deliveries(now=T0 + 3, limit=10, lease_s=LEASE_S,
                                                 owner=gamma.owner)
    assert {d.id for d in again} == {*(d.id for d in lost_hooks), direct.id}
    delivery = await alpha.backend.find_delivery(lost_hooks[0].id)
    assert delivery is not None and delivery.attempts == 0  # no attempt counted by the rescue


async def test_a_dead_nodes_job_on_its_last_attempt_fails_for_good_with_its_webhook(
        cluster: Cluster) -> None:
    alpha, beta, _ = await three(cluster)
    [job] = await running(beta, 1, max_attempts=1, webhook_url=HOOK)
    await cluster.age(beta, 5)
    rescued = await alpha.coordination.rescue_dead(now=T0 + 5)
    assert (rescued.retry, rescued.fatal) == (0, 1)
    stored = await get(alpha.backend, job.id)
    assert (stored.status, stored.completed_at) == (JobStatus.FATAL, T0 + 5)
    assert stored.last_error == ("attempt 1 was interrupted (node beta stopped heartbeating) and "
                                 "it was the last one")
    [webhook] = await alpha.backend.deliveries_of_job(job.id)
    assert (webhook.status, webhook.next_attempt_at) == (DeliveryStatus.PENDING, T0 + 5)


async def test_two_leaders_at_once_rescue_a_dead_node_once(cluster: Cluster) -> None:
    """As for a moment around a takeover: both run the rescue together; the removal of
    the dead node's row is the lock that makes the second one find nothing."""
    alpha, beta, _ = await three(cluster)
    await running(beta, 4)
    await sending(beta, 2)
    await cluster.age(beta, 5)
    results = await asyncio.gather(*(alpha.coordination.rescue_dead(now=T0 + 5)
                                     for _ in range(4)))
    assert sorted((r.retry, r.webhooks) for r in results) == [(0, 0)] * 3 + [(4, 2)]
    assert sum(len(r.nodes) for r in results) == 1


async def test_only_the_leader_rescues(cluster: Cluster) -> None:
    alpha, beta, gamma = await three(cluster)
    await running(beta, 2)
    await gamma.coordination.heartbeat()
    await cluster.settle(gamma)
    await cluster.age(beta, 5)
    assert not await gamma.coordination.rescue_dead(now=T0 + 5)
    assert (await alpha.coordination.rescue_dead(now=T0 + 5)).retry == 2


async def test_after_an_outage_a_leader_waits_a_node_timeout_before_judging(
        cluster: Cluster) -> None:
    """When the database (or the leader) was away, every heartbeat is old: the nodes get
    a timeout's time to come back before any is taken for dead."""
    alpha, beta, _ = await three(cluster)
    await running(beta, 1)
    await cluster.peek.execute("UPDATE nodes SET heartbeat_at = heartbeat_at - 30")  # all silent
    assert (await alpha.coordination.heartbeat()).is_leader  # back: a new run of heartbeats
    assert not await alpha.coordination.rescue_dead(now=T0 + 30)
    assert await cluster.peek.fetchval("SELECT count(*) FROM nodes") == 3
    await cluster.settle(alpha, 1.0)  # a node timeout later, beta still silent
    assert (await alpha.coordination.rescue_dead(now=T0 + 31)).nodes == ["beta", "gamma"]


async def test_a_restarted_node_puts_back_only_its_earlier_instances_work(
        cluster: Cluster) -> None:
    alpha, beta, gamma = await three(cluster)
    earlier_jobs = await running(beta, 2)
    earlier_hooks = await sending(beta, 1)
    others = await running(gamma, 1)
    await cluster.age(beta, 5)  # it died; it comes back before the leader removed it
    later = await cluster.start("beta")
    mine = await running(later, 1)  # (claimed before its recovery: not touched by it)
    recovered = await later.coordination.recover_own(now=T0 + 5)
    assert (recovered.retry, recovered.fatal, recovered.webhooks) == (2, 0, 1)
    jobs = await statuses(cluster, "jobs")
    assert [jobs[j.id] for j in earlier_jobs] == [("retry", None)] * 2
    assert jobs[others[0].id] == ("running", gamma.owner)
    assert jobs[mine[0].id] == ("running", later.owner)
    assert (await statuses(cluster, "deliveries"))[earlier_hooks[0].id] == ("pending", None)
    assert (await get(alpha.backend, earlier_jobs[0].id)).last_error == \
        "attempt 1 was interrupted (process died); retrying"
    assert not await alpha.coordination.rescue_dead(now=T0 + 6)  # the leader: nothing left


async def test_a_node_leaving_puts_back_only_what_it_still_holds(cluster: Cluster) -> None:
    alpha, beta, gamma = await three(cluster)
    held = await running(beta, 2)
    await sending(beta, 1)
    others = await running(gamma, 1)
    earlier = NodeId("beta", "1-earlier")  # an owner of its name, not of this instance
    await cluster.peek.execute("UPDATE jobs SET lease_owner = $1 WHERE id = $2", earlier.owner,
                               held[1].id)
    left = await beta.coordination.leave(now=T0 + 9)
    assert (left.retry, left.webhooks) == (1, 1)
    jobs = await statuses(cluster, "jobs")
    assert jobs[held[0].id] == ("retry", None)
    assert jobs[held[1].id] == ("running", earlier.owner)
    assert jobs[others[0].id] == ("running", gamma.owner)
    assert (await get(alpha.backend, held[0].id)).last_error == \
        "attempt 1 was interrupted (node stopped); retrying"
    assert [n.name for n in await alpha.coordination.nodes()] == ["alpha", "gamma"]
