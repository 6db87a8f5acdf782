"""WAL checkpoints off the write path.

SQLite normally checkpoints inside the COMMIT that crosses 1,000 WAL pages,
which copies those pages into the database file and fsyncs it while the
writer waits. The daemon's writer turns that off and this thread checkpoints
instead, on its own connection, without holding up commits.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger("jobd.store")


class Checkpointer:
    def __init__(self, connect: Callable[[], sqlite3.Connection], *, interval_s: float = 0.5) -> None:
        self._connect = connect
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobd-checkpoint", daemon=True)
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def _run(self) -> None:
        conn = self._connect()
        try:
            while not self._stop.wait(self._interval_s):
                self._checkpoint(conn, "PASSIVE")
            self._checkpoint(conn, "TRUNCATE")  # leave a small WAL behind at shutdown
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> None:
        try:
            conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
            self.checkpoints += 1
        except sqlite3.Error as exc:  # busy now; the next round tries again
            log.debug("checkpoint (%s) skipped: %s", mode, exc)
