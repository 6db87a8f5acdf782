"""WAL checkpoints off the write path, and a bound on the WAL's size.

SQLite normally checkpoints inside the COMMIT that crosses 1,000 WAL pages,
which copies those pages into the database file and fsyncs it while the
writer waits. The daemon's writer turns that off and this thread checkpoints
instead, on its own connection, without holding up commits.

Copying is not enough to keep the file small: the WAL starts over from its beginning
only at a write that finds every frame already copied, and under steady load the writer
appends while this thread copies. So when a pass finds the log longer than
:data:`WAL_RESTART_BYTES`, it asks the writer to checkpoint once itself between two
batches (``on_long_wal``); the writer's next write then starts the log over, and
``journal_size_limit`` (set on the writer's connection) cuts the file back to that size.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from jobd.store.sqlite.failures import is_storage_error, unavailable
from jobd.supervisor import Supervisor

log = logging.getLogger("jobd.store")

INTERVAL_S = 0.5
WAL_RESTART_BYTES = 64 * 1024 * 1024
FINAL_BUSY_TIMEOUT_MS = 250  # the TRUNCATE at shutdown does not wait long for a reader


class Checkpointer:
    def __init__(self, connect: Callable[[], sqlite3.Connection], *,
                 interval_s: float | None = None,
                 on_long_wal: Callable[[], None] | None = None,
                 supervisor: Supervisor | None = None) -> None:
        self._connect = connect
        self._interval_s = interval_s or INTERVAL_S
        self._on_long_wal = on_long_wal
        self._supervisor = supervisor or Supervisor()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobd-checkpoint", daemon=True)
        self._conn: sqlite3.Connection | None = None
        self._page_size = 4096
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop after a last TRUNCATE checkpoint; False if that took past ``timeout_s``."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._supervisor.every_in_thread("checkpointer", self.run_once, self._interval_s,
                                             self._stop)
            conn = self._connection()  # leave a small WAL behind at shutdown
            conn.execute(f"PRAGMA busy_timeout = {FINAL_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except Exception as exc:  # the next start checkpoints what is left
            log.warning("final checkpoint skipped: %s", exc)
        finally:
            self._close()

    def run_once(self) -> None:
        """One PASSIVE checkpoint; ask for a restart of the log if it is long. A failure
        (a full disk) raises, after closing the connection: the next pass opens a new one."""
        try:
            conn = self._connection()
            busy, log_frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        except Exception as exc:
            self._close()
            if isinstance(exc, sqlite3.Error) and is_storage_error(exc):  # (retried, not a fault)
                raise unavailable(exc, "checkpoint failed") from exc
            raise
        self.checkpoints += 1
        if (log_frames * self._page_size > WAL_RESTART_BYTES and not busy
                and self._on_long_wal is not None):
            self._on_long_wal()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
            self._page_size = self._conn.execute("PRAGMA page_size").fetchall()[0][0]
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
