"""The API's open connections as one bounded resource.

Every connection the listening socket accepts is counted here, whether the fast lane
serves it or aiohttp does (:class:`AiohttpConnection`, aiohttp's protocol with jobd's
bookkeeping and problem+json for requests it cannot parse). :class:`Connections`

- admits at most ``server.max_connections`` at once (lowered to fit the open-file limit:
  :func:`connection_limit`); at the limit a new connection closes the one idle longest,
  or is refused with a 503 when none is idle, and a warning says so (one line per
  :data:`WARN_INTERVAL_S` at most);
- closes, in one periodic sweep (no timer per request), a connection whose request has
  not arrived whole within ``server.read_timeout`` and one idle for
  ``server.idle_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler

from jobd.api.framing import MAX_FIELD_BYTES, MAX_HEADERS, MAX_LINE_BYTES
from jobd.api.problems import INTERNAL_ERROR, from_error
from jobd.config import Config, ServerConfig
from jobd.errors import MalformedRequest
from jobd.logs import LogThrottle

log = logging.getLogger("jobd.api")

# Files the daemon keeps open besides API connections: stdio, the event loop's, the
# listening socket, the database's files and connections, log files, headroom
FILES_RESERVED = 64
MIN_CONNECTIONS = 16
WARN_INTERVAL_S = 10.0


def connection_limit(config: Config, open_files: int | None = None) -> int:
    """``server.max_connections``, lowered if the open-file limit (RLIMIT_NOFILE) cannot
    hold that many beside the daemon's other files: its database and logs, a connection
    per worker (``http`` jobs) and per webhook in flight."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    wanted = config.server.max_connections
    if open_files == resource.RLIM_INFINITY:
        return wanted
    room = open_files - FILES_RESERVED - config.workers.concurrency - config.webhooks.concurrency
    return min(wanted, max(MIN_CONNECTIONS, room))


class Connection(Protocol):
    """What :class:`Connections` asks of one connection's protocol."""

    def idle_since(self) -> float | None:
        """Monotonic time since which nothing is in flight; None while busy."""

    def expired(self, now: float, read_timeout_s: float, idle_timeout_s: float) -> bool:
        """Whether the sweep should close it now (called once per sweep)."""

    def close(self) -> None: ...


class Connections:
    def __init__(self, server: ServerConfig, limit: int) -> None:
        self.limit = limit
        if limit < server.max_connections:
            log.info("accepting at most %d connections: server.max_connections (%d) lowered to "
                     "fit the open-file limit (RLIMIT_NOFILE, ulimit -n)", limit,
                     server.max_connections)
        self.read_timeout_s = server.read_timeout
        self.idle_timeout_s = server.idle_timeout
        self.sweep_interval_s = min(server.read_timeout, server.idle_timeout) / 4
        self._open: dict[Connection, None] = {}  # in the order they were opened
        self._candidates: list[tuple[float, int, Connection]] = []  # oldest idle last
        self.evicted = 0      # closed at the limit to make room
        self.refused = 0      # refused at the limit: none was idle
        self.timed_out = 0    # closed by the sweep
        self._reported = (0, 0)
        self._throttle = LogThrottle(WARN_INTERVAL_S)

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Any:
        return iter(list(self._open))

    def add(self, conn: Connection) -> None:
        self._open[conn] = None

    def discard(self, conn: Connection) -> None:
        self._open.pop(conn, None)

    def admit(self) -> bool:
        """Room for one more connection: True, after closing the one idle longest if the
        limit is reached; False if none is idle (the new one is then refused)."""
        if len(self._open) < self.limit:
            return True
        victim = self._oldest_idle()
        if victim is None:
            self.refused += 1
        else:
            self.evicted += 1
            self.discard(victim)
            victim.close()
        self._report(time.monotonic())
        return victim is not None

    def _oldest_idle(self) -> Connection | None:
        """The connection idle longest, from a list sorted once and used until it runs
        out (a flood of new connections at the limit costs no scan per connection);
        an entry whose connection closed or became busy since is skipped."""
        for attempt in range(2):
            while self._candidates:
                since, _, conn = self._candidates.pop()
                if conn in self._open and conn.idle_since() == since:
                    return conn
            if attempt == 0:
                idle = [(idle_since, id(conn), conn) for conn in self._open
                        if (idle_since := conn.idle_since()) is not None]
                idle.sort(key=lambda entry: entry[0], reverse=True)
                self._candidates = idle
        return None

    def _report(self, now: float) -> None:
        evicted, refused = self.evicted - self._reported[0], self.refused - self._reported[1]
        if not (evicted or refused) or not self._throttle.ready(now):
            return
        self._reported = (self.evicted, self.refused)
        log.warning("connection limit reached (%d open, limit %d): closed %d idle connection(s) "
                    "and refused %d new one(s) since the last such line",
                    len(self._open), self.limit, evicted, refused)

    def sweep(self, now: float | None = None) -> None:
        """Close the connections whose request is overdue or that idled too long."""
        now = time.monotonic() if now is None else now
        for conn in list(self._open):
            if conn.expired(now, self.read_timeout_s, self.idle_timeout_s):
                self.timed_out += 1
                self.discard(conn)
                conn.close()
        self._report(now)

    def close_idle(self, idle_s: float) -> None:
        """Close every connection with nothing in flight for ``idle_s`` (0: all idle ones)."""
        now = time.monotonic()
        for conn in list(self._open):
            since = conn.idle_since()
            if since is not None and now - since >= idle_s:
                self.discard(conn)
                conn.close()

    async def run_sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            self.sweep()


def handler_args(server: ServerConfig) -> dict[str, Any]:
    """aiohttp's protocol settings: its idle timeout is jobd's, it reads what is left of a
    body it did not use (so that the client gets the answer) for no longer than a request
    may take to arrive, and its limits on a head are the ones the fast lane keeps within
    (:mod:`jobd.api.framing`)."""
    return {"keepalive_timeout": server.idle_timeout, "lingering_time": server.read_timeout,
            "max_line_size": MAX_LINE_BYTES, "max_field_size": MAX_FIELD_BYTES,
            "max_headers": MAX_HEADERS, "access_log": None}


class AiohttpConnection(RequestHandler):
    """aiohttp's protocol for one connection, counted in :class:`Connections`, and
    answering a request it cannot parse with a problem+json 400 that does not echo the
    request (aiohttp's own answer is plain text quoting the bytes, and its log line a
    traceback that quotes them too: an ``Authorization`` header among them)."""

    __slots__ = ("_connections", "_mark", "opened_at", "reads")

    def __init__(self, manager: web.Server, connections: Connections, **kwargs: Any) -> None:
        super().__init__(manager, loop=asyncio.get_running_loop(), **kwargs)
        self._connections = connections
        self.opened_at = time.monotonic()
        self.reads = 0
        self._mark: tuple[float, int] | None = None  # (since, reads): idle, as the sweep saw

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connections.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._connections.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        super().data_received(data)

    def close(self) -> None:  # (aiohttp's close() waits for the request in flight)
        self.force_close()

    def _idle(self) -> bool:
        """Waiting for a request: the state aiohttp's own keep-alive timer checks."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def idle_since(self) -> float | None:
        if not self._idle():
            return None
        return self.opened_at if self._mark is None else self._mark[0]

    def expired(self, now: float, read_timeout_s: float, idle_timeout_s: float) -> bool:
        """Idle, with no byte received, for ``idle_timeout_s`` (as seen by two sweeps at
        least that far apart). aiohttp's own timer (``keepalive_timeout``) does the same
        once a request was answered; a head that trickles in after that is closed by it
        too, ``idle_timeout_s`` after that answer."""
        if not self._idle():
            self._mark = None
            return False
        if self._mark is None or self._mark[1] != self.reads:
            self._mark = (now, self.reads)
            return False
        return now - self._mark[0] >= idle_timeout_s

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was partly sent; the connection is closed")
        if status >= 500:
            log.error("unhandled error on a request from %s", request.remote, exc_info=exc)
            response = from_error(INTERNAL_ERROR)
        else:
            log.debug("malformed request from %s: %s", request.remote, type(exc).__name__)
            response = from_error(MalformedRequest(_malformed_detail(exc)))
        response.force_close()
        return response


def _malformed_detail(exc: BaseException | None) -> str:
    """What was wrong with a request aiohttp could not parse, without quoting it."""
    if isinstance(exc, LineTooLong):
        return f"a line of the request head is longer than {MAX_FIELD_BYTES} bytes"
    if isinstance(exc, BadHttpMethod):
        if exc.message == "Received HTTPS traffic on an HTTP port":
            return "this port speaks HTTP, not HTTPS"
        return "the request method is malformed"
    if isinstance(exc, BadStatusLine | InvalidURLError):
        return "the request line is malformed"
    if isinstance(exc, InvalidHeader):
        return "a header is malformed"
    if isinstance(exc, PayloadEncodingError):
        return "the body's framing is malformed (Content-Length or chunked encoding)"
    if type(exc) is BadHttpMessage and exc.message.startswith(("Duplicate '", "Too many headers",
                                                               "Missing 'Host'")):
        return str(exc.message)  # aiohttp's words, naming no more than a header's name
    return "the request is not valid HTTP/1.1"
