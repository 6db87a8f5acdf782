"""Retention in the background: finished jobs past ``jobs.retention_days``, delivered
webhooks of the same age, a small batch per transaction. A job holds its
Idempotency-Key, so a job whose key is still live is kept. Where several nodes share a
database, only the leader prunes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from jobd.clock import Clock
from jobd.config import Config
from jobd.store.backend import Backend
from jobd.supervisor import Supervisor

log = logging.getLogger("jobd.pruner")
INTERVAL_S = 300.0
BATCH = 500  # rows deleted per transaction: short ones, so other writes go in between


def job_cutoff(now: float, *, retention_s: float, idempotency_ttl_s: float) -> float:
    """Finished jobs completed before this go. A job holds its Idempotency-Key, so it is
    kept at least as long as the key is live, even with a retention shorter than that."""
    return now - max(retention_s, idempotency_ttl_s)


class Pruner:
    def __init__(self, *, store: Backend, clock: Clock, config: Config,
                 interval_s: float = INTERVAL_S) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._interval_s = interval_s
        self._stop = asyncio.Event()
        self.leads: Callable[[], bool] | None = None  # None: this process always leads

    async def run_once(self) -> dict[str, int]:
        """One pass, by the leader only where nodes share a database."""
        if self.leads is not None and not self.leads():
            return {"jobs": 0, "deliveries": 0}
        now = self._clock.now()
        retention_s = self._config.jobs.retention_days * 86_400
        jobs_before = job_cutoff(now, retention_s=retention_s,
                                 idempotency_ttl_s=self._config.idempotency.ttl_hours * 3600)
        counts = {
            "jobs": await self._drain(self._store.prune_jobs, jobs_before),
            "deliveries": await self._drain(self._store.prune_deliveries, now - retention_s),
        }
        if any(counts.values()):
            log.info("pruned %(jobs)d jobs, %(deliveries)d deliveries", counts)
        return counts

    async def _drain(self, prune: Callable[..., Awaitable[int]], before: float) -> int:
        done = 0
        while not self._stop.is_set():
            n = await prune(before=before, batch=BATCH)
            if not n:
                break
            done += n
            await asyncio.sleep(0)  # let other writes in between batches
        return done

    async def run(self, supervisor: Supervisor | None = None) -> None:
        """:meth:`run_once` every ``interval_s`` until :meth:`stop`."""
        await (supervisor or Supervisor()).every("pruner", self.run_once, self._interval_s,
                                                 self._stop)

    def stop(self) -> None:
        self._stop.set()
