"""This node among the others on its database: heartbeats, the leader's duties, and the
other nodes' wake-ups handed to the parts they concern.

:class:`Membership` drives a :class:`~jobd.store.cluster.Coordination`: a heartbeat every
``cluster.heartbeat_interval`` (a heartbeat that fails is tried again at the next one,
not after a growing backoff: a node that falls behind on them is soon taken for dead),
then, while this node leads, the rescue of dead nodes' work. A node taken for dead by
the others (they have its work now) stops: the supervisor gives up, and the daemon exits
for its service manager to start it again as a new instance.

It also puts back, at the start, what this node's earlier instance left running or
sending (:meth:`Membership.recover_own`), and at the end what it still holds
(:meth:`Membership.leave`). On SQLite (:class:`~jobd.store.cluster.SingleNode`) the
daemon runs no heartbeats, the start puts back everything left running or sending (only
a process before this one can hold it) and the node always leads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from jobd.clock import Clock
from jobd.config import ClusterConfig
from jobd.errors import StoreUnavailable
from jobd.store.cluster import Coordination, Recovered, WakeUp
from jobd.supervisor import Supervisor

log = logging.getLogger("jobd.cluster")

TASK = "cluster heartbeat"


def _nothing() -> None:
    return None


@dataclass(slots=True)
class Receivers:
    """Who is told what the other nodes said."""

    jobs: Callable[[], None] = _nothing             # jobs were queued: claim (the pool)
    webhooks: Callable[[], None] = _nothing         # webhooks were queued (the dispatcher)
    tenants: Callable[[], None] = _nothing          # tenants changed: forget cached API keys
    cancel: Callable[[str], object] = lambda _job_id: None  # stop this job if it runs here
    all_cancels: Callable[[], None] = _nothing      # look at every running job's cancel flag


class Membership:
    """See the module docstring."""

    def __init__(self, *, coordination: Coordination, clock: Clock, config: ClusterConfig,
                 receivers: Receivers | None = None,
                 supervisor: Supervisor | None = None) -> None:
        self._coordination = coordination
        self._clock = clock
        self._interval_s = config.heartbeat_s
        self.receivers = receivers or Receivers()
        self._supervisor = supervisor or Supervisor()
        self._stop = asyncio.Event()
        self._failing = False
        self._leading = False
        coordination.on_wake(self.woken)

    async def run_once(self) -> None:
        """One heartbeat; while leading, the rescue of dead nodes."""
        try:
            beat = await self._coordination.heartbeat()
        except StoreUnavailable as exc:
            if not self._failing:
                log.warning("heartbeat failed (%s); trying again every %.3g s, and claiming "
                            "nothing once that lasts", exc.detail, self._interval_s)
            self._failing = True
            return
        if self._failing:
            log.info("heartbeats go through again")
            self._failing = False
            self.receivers.jobs()  # claims may have been held back meanwhile
            self.receivers.webhooks()
        if not beat.registered:
            self._supervisor.give_up(TASK, "the other nodes took this node for dead and have "
                                     "its work; it stops, to start again as a new instance")
            self._stop.set()
            return
        if beat.is_leader != self._leading:
            self._leading = beat.is_leader
            log.info("this node %s", "leads now" if beat.is_leader else
                     f"no longer leads (the leader is {beat.leader})")
        if beat.is_leader:
            try:
                recovered = await self._coordination.rescue_dead(now=self._clock.now())
            except StoreUnavailable as exc:  # tried again at the next heartbeat
                log.warning("the rescue of dead nodes failed (%s)", exc.detail)
                return
            if recovered:
                self.receivers.jobs()
                self.receivers.webhooks()

    async def recover_own(self) -> Recovered:
        """At the start, before any claim: put back what this node's earlier instances
        left running or sending (on SQLite: everything, only a process before this one
        can hold it)."""
        recovered = await self._coordination.recover_own(now=self._clock.now())
        if recovered.retry or recovered.fatal:
            log.warning("recovered jobs left running by a dead process: %d to retry, %d fatal",
                        recovered.retry, recovered.fatal)
            self.receivers.jobs()
        if recovered.webhooks:
            log.warning("put back %d webhook delivery(ies) left sending when the last process "
                        "died; sending them again", recovered.webhooks)
            self.receivers.webhooks()
        return recovered

    async def leave(self) -> None:
        """At the end, after the pool and the dispatcher stopped: put back what this node
        still holds, step down and unregister (if that fails, or is cut short, the leader
        puts it back once this node is silent for its timeout)."""
        self.stop()
        try:
            recovered = await self._coordination.leave(now=self._clock.now())
        except StoreUnavailable as exc:
            log.warning("could not leave the cluster (%s); the other nodes put back what this "
                        "node held once it is silent for its timeout", exc.detail)
            return
        if recovered:
            log.info("left the cluster; put back %d job(s) and %d webhook(s) still held",
                     recovered.retry + recovered.fatal, recovered.webhooks)

    async def run(self) -> None:
        """:meth:`run_once` every heartbeat interval until :meth:`stop`."""
        await self._supervisor.every(TASK, self.run_once, self._interval_s, self._stop)

    def stop(self) -> None:
        self._stop.set()

    def woken(self, wake: WakeUp) -> None:
        """What other nodes (or the database) said, handed on."""
        r = self.receivers
        if wake.jobs or wake.everything:
            r.jobs()
        if wake.webhooks or wake.everything:
            r.webhooks()
        if wake.tenants or wake.everything:
            r.tenants()
        for job_id in wake.cancels:
            r.cancel(job_id)
        if wake.everything:
            r.all_cancels()
