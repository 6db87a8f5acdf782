"""Wake-ups between nodes: LISTEN/NOTIFY on each node's own connection, coalesced both
ways, the database's own for cancels and tenant changes, and a connection made again
after the server restarts."""

from __future__ import annotations

import asyncio
import time

import pytest

from jobd.config import DatabaseConfig
from jobd.errors import StoreUnavailable
from jobd.models import JobStatus
from jobd.store.cluster import Signal, WakeUp
from jobd.store.postgres.connection import migrate_database
from jobd.store.postgres.link import NOTIFY_GAP_S, merge, parse, payload
from tests.cluster_store.conftest import Cluster, wait_until
from tests.conftest import T0
from tests.contract.helpers import claim, submit, tenant
from tests.pg import Server, admin, with_database

# the format ------------------------------------------------------------------------------


def test_a_payload_names_its_origin_and_signals() -> None:
    text = payload("alpha/1-ab", {Signal.WEBHOOKS, Signal.JOBS})
    assert text == "alpha/1-ab jobs webhooks"
    assert parse(text) == ("alpha/1-ab", WakeUp(jobs=True, webhooks=True))
    assert parse("- cancel:job_1 tenants") == ("-", WakeUp(tenants=True, cancels={"job_1"}))


def test_words_not_understood_are_left_out() -> None:
    assert parse("x/1 jobs later:3 cancel: ") == ("x/1", WakeUp(jobs=True))
    assert not parse("")[1]


def test_too_many_cancels_become_a_look_at_everything() -> None:
    wake = WakeUp()
    merge(wake, WakeUp(cancels={f"job_{i}" for i in range(10_000)}))
    assert len(wake.cancels) == 10_000 and not wake.everything
    merge(wake, WakeUp(cancels={"job_x"}, jobs=True))
    assert wake == WakeUp(jobs=True, everything=True)


# between nodes ---------------------------------------------------------------------------


async def test_an_announcement_wakes_the_other_nodes_and_not_its_sender(
        cluster: Cluster) -> None:
    alpha, beta, gamma = [await cluster.start(n, listen=True) for n in ("alpha", "beta", "gamma")]
    sent = time.monotonic()
    alpha.coordination.announce(Signal.JOBS)
    await wait_until(lambda: beta.wakes and gamma.wakes, "woken")
    took_ms = (time.monotonic() - sent) * 1000
    assert beta.wakes == gamma.wakes == [WakeUp(jobs=True)]
    await asyncio.sleep(0.05)
    assert alpha.wakes == []
    assert took_ms < 100, took_ms  # a few ms, on a quiet machine


async def test_announcements_are_coalesced_at_both_ends(cluster: Cluster) -> None:
    """However many jobs a node creates, it sends at most one NOTIFY per gap (the first at
    once); a receiver hands on what arrived together as one wake-up."""
    alpha, beta = [await cluster.start(n, listen=True) for n in ("alpha", "beta")]
    link = alpha.coordination.link
    began = time.monotonic()
    for i in range(2000):
        alpha.coordination.announce(Signal.JOBS if i % 2 else Signal.WEBHOOKS)
        if i % 100 == 0:
            await asyncio.sleep(0.002)
    await wait_until(lambda: not link.sending, "sent")
    spent = time.monotonic() - began
    assert 2 <= link.notifies_sent <= spent / NOTIFY_GAP_S + 2, (link.notifies_sent, spent)
    await wait_until(lambda: len(beta.wakes) >= 1 and beta.wakes[-1].jobs, "woken")
    assert len(beta.wakes) <= link.notifies_sent
    assert all(w.jobs and w.webhooks for w in beta.wakes[1:])  # both kinds, in one


async def test_a_cancel_and_a_tenant_change_wake_every_node_whoever_made_them(
        cluster: Cluster) -> None:
    """The database's triggers send them (the CLI changes tenants and cancels jobs too)."""
    alpha, beta = [await cluster.start(n, listen=True) for n in ("alpha", "beta")]
    await tenant(alpha.backend)
    await submit(alpha.backend)
    await submit(alpha.backend)
    job, _ = (await claim(beta.backend, owner=beta.owner, limit=2)).jobs
    await alpha.backend.cancel_job(job.id, tenant_id=None, now=T0)
    await wait_until(lambda: alpha.wakes and beta.wakes, "told of the cancel")
    assert alpha.wakes == beta.wakes == [WakeUp(cancels={job.id})]
    await alpha.backend.cancel_job(job.id, tenant_id=None, now=T0)  # asked again: no news
    await alpha.backend.update_tenant_limits("acme", rate=5, burst=None, max_concurrency=None,
                                             clear_max_concurrency=False, now=T0)
    await wait_until(lambda: len(beta.wakes) == 2, "told of the tenant")
    assert beta.wakes[1] == WakeUp(tenants=True)
    assert await alpha.backend.finish_job(job, owner=beta.owner, status=JobStatus.CANCELLED,
                                          now=T0, error="cancelled")
    await asyncio.sleep(0.05)
    assert len(beta.wakes) == 2  # the claim and the finish said nothing


async def test_a_node_connects_again_after_the_server_restarts(
        cluster: Cluster, pg_own_server: Server) -> None:
    admin(pg_own_server.url, "CREATE DATABASE restarting")
    url = with_database(pg_own_server.url, "restarting")
    await migrate_database(DatabaseConfig(url=url))
    alpha = await cluster.start("alpha", listen=True, url=url)
    beta = await cluster.start("beta", listen=True, url=url)
    link = beta.coordination.link
    pg_own_server.shut_down("fast")
    await wait_until(lambda: not link.connected, "disconnected")
    with pytest.raises(StoreUnavailable, match=r"not connected|cannot"):
        await beta.coordination.heartbeat()
    pg_own_server.start_again()
    await wait_until(lambda: link.connected and alpha.coordination.link.connected,
                     "connected again")
    assert link.connects == 2
    await wait_until(lambda: beta.wakes, "woken")
    assert beta.wakes == [WakeUp(everything=True)]  # what was sent meanwhile is lost
    assert (await beta.coordination.heartbeat()).registered
    alpha.coordination.announce(Signal.WEBHOOKS)
    await wait_until(lambda: len(beta.wakes) == 2, "woken by the other node")
    assert beta.wakes[1] == WakeUp(webhooks=True)
