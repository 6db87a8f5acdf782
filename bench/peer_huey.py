"""The peer the brief measures jobd against: Huey on SQLite, on this machine, now.

The brief quotes ~1,900 noop jobs/s end to end for Huey on "this kind of machine";
this VM's speed moves by 2x from one day to the next, so ``make bench`` measures Huey
beside jobd in the same run. Huey is called as a library (no HTTP), with its SQLite
storage in WAL mode and ``fsync=True`` (synchronous = FULL, as jobd's bench runs), and
its results stored (its default). Its consumer runs in its own process with threads.

``python bench/peer_huey.py enqueue N`` prints enqueue jobs/s (no consumer running);
``python bench/peer_huey.py e2e N WORKERS`` starts a consumer with WORKERS threads,
enqueues N noop tasks and prints jobs/s from the first enqueue to the last task's end
(each task returns the time it ran; read back once all have run). Output: one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from huey import SqliteHuey

DB = os.environ.get("PEER_HUEY_DB", "")
huey = SqliteHuey("bench", filename=DB or ":memory:", fsync=True)


@huey.task()
def noop() -> float:
    return time.time()


def consume(workers: int) -> None:
    consumer = huey.create_consumer(workers=workers, worker_type=os.environ.get("PEER_HUEY_KIND", "thread"),
                                    periodic=False, initial_delay=0.001, max_delay=0.01,
                                    check_worker_health=False)
    consumer.run()


def enqueue_rate(total: int) -> dict[str, float]:
    started = time.perf_counter()
    for _ in range(total):
        noop()
    return {"enqueue_per_s": total / (time.perf_counter() - started)}


def end_to_end(total: int, workers: int) -> dict[str, float]:
    env = {**os.environ, "PEER_HUEY_DB": DB}
    consumer = subprocess.Popen([sys.executable, __file__, "consume", str(workers)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # the consumer's start-up is not part of the figure
        first = time.time()
        handles = [noop() for _ in range(total)]
        deadline = time.monotonic() + 600
        while huey.storage.result_store_size() < total:
            if time.monotonic() > deadline or consumer.poll() is not None:
                raise RuntimeError("huey's consumer did not finish the tasks")
            time.sleep(0.05)
        last = max(float(h.get()) for h in handles)
    finally:
        consumer.terminate()
        consumer.wait(timeout=30)
    return {"jobs_per_s": total / (last - first), "workers": workers}


def main() -> None:
    what = sys.argv[1]
    if what == "consume":
        consume(int(sys.argv[2]))
        return
    if not DB:  # a fresh file for this measurement, removed afterwards
        with tempfile.TemporaryDirectory(prefix="peer-huey-") as tmp:
            os.environ["PEER_HUEY_DB"] = str(Path(tmp) / "huey.db")
            result = subprocess.run([sys.executable, __file__, *sys.argv[1:]], check=True,
                                    capture_output=True, text=True)
            print(result.stdout.strip())
        return
    total = int(sys.argv[2])
    figures = enqueue_rate(total) if what == "enqueue" else end_to_end(total, int(sys.argv[3]))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
