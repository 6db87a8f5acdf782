"""A node's own connection to PostgreSQL: its heartbeats, and the wake-ups between nodes.

One connection per node beside the pool, never a pooled one: it LISTENs (the pool does
not reset a connection it lends, so a pooled one must never listen), and its small
statements (heartbeats, NOTIFY) do not queue behind a busy pool. It commits without
waiting for the WAL flush (``synchronous_commit = off``): a heartbeat or a wake-up lost
in a crash of the server costs nothing, and each NOTIFY would otherwise wait for one.

Wake-ups go out on channel ``jobd`` as ``<origin> <signal> [<signal> ...]`` (origin: the
sender's lease owner name; ``-`` for the database's own triggers and for processes that
are not nodes, such as the CLI; signals:
:class:`~jobd.store.cluster.Signal`, ``cancel:<job id>``). A node's own are skipped.

* Out: :meth:`Link.announce` sends at once if nothing was sent in the last
  :data:`NOTIFY_GAP_S`; what is announced meanwhile goes out together at the end of it:
  at most one NOTIFY per gap, however many jobs a node creates.
* In: notifications that arrive together are merged into one :class:`WakeUp` handed to
  the handler on the next turn of the event loop.
* Lost: the server restarted or the network failed (the driver's termination callback,
  or a statement that failed for want of a connection, or took longer than it may):
  :meth:`Link.run` connects again, backing off from :data:`RECONNECT_FIRST_S` to
  :data:`RECONNECT_MAX_S`, LISTENs again and hands out a wake-up for ``everything``
  (notifications sent meanwhile are lost). Polling stays the fallback throughout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from jobd.config import DatabaseConfig
from jobd.errors import StoreUnavailable
from jobd.store.cluster import Signal, WakeHandler, WakeUp
from jobd.store.postgres.connection import CONNECT_TIMEOUT_S, session_settings, unavailable
from jobd.store.postgres.failures import DATABASE_ERRORS, GONE

log = logging.getLogger("jobd.cluster")

CHANNEL = "jobd"
DATABASE_ORIGIN = "-"   # notifications sent by the database's triggers, or the CLI
NOTIFY_GAP_S = 0.005    # at most one NOTIFY a node sends per gap
RECONNECT_FIRST_S = 0.05
RECONNECT_MAX_S = 1.0
MAX_CANCELS = 10_000    # pending cancel ids kept; beyond: look at every running job


def payload(origin: str, signals: set[str]) -> str:
    return " ".join([origin, *sorted(signals)])


def parse(text: str) -> tuple[str, WakeUp]:
    """(origin, what it asks for); words not understood are left out."""
    origin, _, rest = text.partition(" ")
    wake = WakeUp()
    for word in rest.split():
        kind, _, argument = word.partition(":")
        if kind == Signal.JOBS:
            wake.jobs = True
        elif kind == Signal.WEBHOOKS:
            wake.webhooks = True
        elif kind == Signal.TENANTS:
            wake.tenants = True
        elif kind == Signal.CANCEL and argument:
            wake.cancels.add(argument)
    return origin, wake


def merge(into: WakeUp, other: WakeUp) -> None:
    into.jobs |= other.jobs
    into.webhooks |= other.webhooks
    into.tenants |= other.tenants
    into.everything |= other.everything
    into.cancels |= other.cancels
    if len(into.cancels) > MAX_CANCELS:
        into.cancels.clear()
        into.everything = True


class Link:
    """The node's own connection. See the module docstring."""

    def __init__(self, config: DatabaseConfig, origin: str, *,
                 statement_timeout_s: float) -> None:
        if config.url is None:
            raise StoreUnavailable("database.url is not set: the database is SQLite")
        self._config = config
        self._url = config.url
        self._origin = origin
        self._timeout_s = statement_timeout_s
        self._conn: asyncpg.Connection | None = None
        self._using = asyncio.Lock()    # one statement at a time on one connection
        self._connecting = asyncio.Lock()
        self._lost = asyncio.Event()
        self._closed = False
        self._handler: WakeHandler | None = None
        self._incoming = WakeUp()
        self._flush_soon = False
        self._outgoing: set[str] = set()
        self._sender: asyncio.Task[None] | None = None
        self.connects = 0
        self.notifies_sent = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def sending(self) -> bool:
        """Announcements are being sent (or wait out the gap)."""
        return self._sender is not None

    def on_wake(self, handler: WakeHandler) -> None:
        self._handler = handler

    # the connection ----------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and LISTEN, unless connected (StoreUnavailable if it cannot)."""
        async with self._connecting:
            if self.connected or self._closed:
                return
            settings = {**session_settings(self._config), "synchronous_commit": "off"}
            try:
                conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT_S,
                                             server_settings=settings)
            except (*DATABASE_ERRORS, ValueError) as exc:
                raise unavailable(exc, self._url, doing="cannot connect to") from None
            try:
                await conn.add_listener(CHANNEL, self._notified)
            except DATABASE_ERRORS as exc:
                conn.terminate()
                raise unavailable(exc, self._url, doing="cannot listen on") from None
            conn.add_termination_listener(self._terminated)
            self._conn = conn
            self._lost.clear()
            self.connects += 1
            if self.connects > 1:  # what was sent while we were away is lost
                self._received(WakeUp(everything=True))

    async def run(self) -> None:
        """Stay connected until :meth:`close`: connect again whenever it is lost."""
        failures = 0
        while not self._closed:
            try:
                await self.connect()
            except StoreUnavailable as exc:
                if failures == 0:
                    log.warning("%s; connecting again", exc.detail)
                failures += 1
                await asyncio.sleep(min(RECONNECT_MAX_S,
                                        RECONNECT_FIRST_S * 2 ** min(failures - 1, 10)))
                continue
            if failures:
                log.info("connected to the database again: wake-ups and heartbeats go on")
            failures = 0
            await self._lost.wait()
            self._drop()

    async def close(self) -> None:
        self._closed = True
        self._lost.set()
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_S)
            except (*DATABASE_ERRORS, TimeoutError):
                conn.terminate()

    def _terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:
            self._lost.set()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    @asynccontextmanager
    async def _using_connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._using:
            conn = self._conn
            if conn is None or conn.is_closed():
                raise StoreUnavailable("not connected to the database (connecting again)")
            try:
                yield conn
            except (*GONE, asyncpg.QueryCanceledError) as exc:
                # No answer in time, or no connection: it may be half dead (a network
                # that drops packets); a new one is made rather than trusted again.
                self._lost.set()
                raise unavailable(exc, self._url) from None
            except asyncpg.PostgresError as exc:
                raise unavailable(exc, self._url) from None

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """One statement on this connection, within the link's statement timeout."""
        async with self._using_connection() as conn:
            return await conn.fetchrow(query, *args, timeout=self._timeout_s)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self._using_connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args, timeout=self._timeout_s)
            return rows

    # wake-ups out ------------------------------------------------------------------

    def announce(self, *signals: str) -> None:
        self._outgoing.update(signals)
        if self._sender is None and not self._closed:
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        """Send what was announced, then wait out the gap; again while there is more."""
        try:
            while self._outgoing and not self._closed:
                signals, self._outgoing = self._outgoing, set()
                try:
                    await self.fetch("SELECT pg_notify($1, $2)", CHANNEL,
                                     payload(self._origin, signals))
                    self.notifies_sent += 1
                except StoreUnavailable:
                    pass  # the others poll meanwhile, and are woken for everything later
                await asyncio.sleep(NOTIFY_GAP_S)
        finally:
            self._sender = None

    # wake-ups in -------------------------------------------------------------------

    def _notified(self, _conn: Any, _pid: int, _channel: str, text: str) -> None:
        origin, wake = parse(text)
        if origin != self._origin and wake:
            self._received(wake)

    def _received(self, wake: WakeUp) -> None:
        merge(self._incoming, wake)
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        wake, self._incoming = self._incoming, WakeUp()
        if self._handler is not None and wake:
            try:
                self._handler(wake)
            except Exception:
                log.exception("a wake-up handler failed")

