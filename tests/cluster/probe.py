"""The cluster tests' job type ``probe``: each execution appends two lines to
``$CLUSTER_PROBE_DIR/<node>.log``, ``S <job id> <attempt> <node> <monotonic time>`` when it
starts and ``E ...`` (same fields) when it ends, each one ``write`` of one short line with
O_APPEND: whole lines, even from a process killed in the middle. It sleeps
``payload.sleep`` seconds between the two if asked to. (CLOCK_MONOTONIC is the same for
every process of the host, so the nodes' times can be compared.)"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from jobd.handlers.base import AnyPayload, JobContext

PROBE_DIR_ENV = "CLUSTER_PROBE_DIR"
_files: dict[str, int] = {}


def _write(node: str, line: str) -> None:
    fd = _files.get(node)
    if fd is None:
        path = Path(os.environ[PROBE_DIR_ENV]) / f"{node}.log"
        fd = _files[node] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, line.encode())


async def probe(payload: AnyPayload, ctx: JobContext) -> dict[str, Any]:
    node = ctx.services.config.cluster.name
    run = f"{ctx.job_id} {ctx.attempt} {node}"
    _write(node, f"S {run} {time.monotonic():.6f}\n")
    sleep = (payload.model_extra or {}).get("sleep")
    if isinstance(sleep, (int, float)) and sleep > 0:
        await asyncio.sleep(sleep)
    _write(node, f"E {run} {time.monotonic():.6f}\n")
    return {"node": node}
