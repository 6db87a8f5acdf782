"""Leases: a heartbeat for the jobs this process runs, and rescue for the ones nobody holds.

The heartbeat extends the leases of live jobs (and notices cancellations asked
for by the CLI), and jobs whose lease ran out are rescued (with several nodes: by
the leader only). What a dead process left running is put back at the next start,
by :meth:`jobd.runtime.cluster.Membership.recover_own`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from jobd.clock import Clock
from jobd.config import WorkersConfig
from jobd.runtime.workers import WorkerPool
from jobd.store.backend import Backend
from jobd.supervisor import Supervisor

log = logging.getLogger("jobd.lifeline")


class Lifeline:
    def __init__(self, *, store: Backend, pool: WorkerPool, clock: Clock,
                 config: WorkersConfig) -> None:
        self._store = store
        self._pool = pool
        self._clock = clock
        self._config = config
        self._stop = asyncio.Event()
        self.leads: Callable[[], bool] | None = None  # None: this process always leads

    @property
    def interval_s(self) -> float:
        return min(self._config.poll_interval, self._config.lease_seconds / 3)

    async def run_once(self) -> None:
        now = self._clock.now()
        cancel_ids = await self._store.extend_leases(
            self._pool.running_ids(), owner=self._pool.owner,
            expires=now + self._config.lease_seconds)
        for job_id in cancel_ids:
            self._pool.cancel(job_id)
        if self.leads is not None and not self.leads():
            return
        counts = await self._store.rescue_jobs(now=now, all_running=False)
        if any(counts.values()):
            log.warning("rescued jobs whose lease expired: %d to retry, %d fatal",
                        counts["retry"], counts["fatal"])
            self._pool.wake()

    async def run(self, supervisor: Supervisor | None = None) -> None:
        """:meth:`run_once` every :attr:`interval_s` until :meth:`stop`."""
        await (supervisor or Supervisor()).every("lifeline", self.run_once, self.interval_s,
                                                 self._stop)

    def stop(self) -> None:
        self._stop.set()
