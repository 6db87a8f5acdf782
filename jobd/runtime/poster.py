"""A lean HTTP/1.1 client for one kind of request: POST a small body, read the status
and the start of the answer. The webhook dispatcher sends every delivery through it,
unless ``webhooks.fast_client = false`` (then aiohttp's client, with the same bounds:
:mod:`jobd.runtime.webhook_client`).

Why not aiohttp's client (which ``http`` jobs use): a webhook is always the same
request -- no redirects, cookies, proxies, compression or streaming -- and aiohttp's
general machinery costs several times more of the event loop per request
(``bench/README.md``). Responses are parsed by httptools (llhttp, the parser Node.js
uses); what is written here is only the request line, the headers, the bounds and a pool.

* Connections are kept alive and reused, per scheme, host and port, and closed once
  idle for ``max_idle_s`` (a timer runs while any is idle). A request that fails on a
  reused connection before any byte of an answer came back (the receiver closed it
  while idle) is sent once more on a new connection; receivers de-duplicate on
  ``webhook-id`` in any case.
* Addresses: unless ``allow_private``, every address a host name resolves to must be
  public (:func:`jobd.netguard.check_address`), and the connection goes to an
  address that was checked, so a second lookup cannot swap it.
* ``timeout_s`` bounds the whole request: lookup, connect, TLS, send and answer.
* An answer costs at most what :mod:`jobd.outbound` allows: a head (interim answers
  included) over :data:`~jobd.outbound.MAX_HEAD_BYTES`, with more than
  :data:`~jobd.outbound.MAX_HEADER_LINES` lines, or more than
  :data:`~jobd.outbound.MAX_INTERIM_ANSWERS` interim answers fails the request at once
  (:class:`~jobd.outbound.AnswerRefused`). Of the body, the first ``read_limit`` bytes
  are kept; one whose bytes on the wire go past :data:`~jobd.outbound.MAX_BODY_WIRE_BYTES`
  is not read to its end: the answer ends there and its connection is closed. The
  bounds cost a subtraction and a comparison per read and per header line.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import httptools
from yarl import URL

from jobd import netguard
from jobd.outbound import (
    HEAD_TOO_LARGE,
    IDLE_S,
    MAX_BODY_WIRE_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADER_LINES,
    MAX_INTERIM_ANSWERS,
    TOO_MANY_INTERIM,
    TOO_MANY_LINES,
    AnswerRefused,
)

IDLE_PER_ORIGIN = 256  # idle connections kept per origin; more are closed
_PARSE_ENDED = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class AnswerError(ConnectionError):
    """The connection failed or closed before a whole answer came back."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a URL means to this client, worked out once per URL."""

    origin: tuple[str, str, int]  # scheme, host (as in the URL), port
    host: str                     # to resolve or to connect to
    tls: bool
    head: bytes                   # "POST /path?q HTTP/1.1\r\nHost: h\r\n"


@functools.lru_cache(maxsize=1024)
def target(url: str) -> Target:
    parsed = URL(url)
    scheme, host, port = parsed.scheme, parsed.raw_host, parsed.port
    if scheme not in ("http", "https") or not host or port is None:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    host_header = parsed.raw_authority.rpartition("@")[2]
    path = parsed.raw_path_qs or "/"
    head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
    if parsed.user is not None:  # credentials in the URL are sent as Basic auth
        token = base64.b64encode(f"{parsed.user}:{parsed.password or ''}".encode()).decode()
        head += f"Authorization: Basic {token}\r\n"
    return Target(origin=(scheme, host, port), host=host, tls=scheme == "https",
                  head=head.encode("ascii"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = time.monotonic()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._status = 0
        self._framed = False  # Content-Length or chunked: the body's end is known
        self._excerpt = bytearray()
        self._limit = 0
        # the bounds of :mod:`jobd.outbound`, counted down; _status < 200: in the head
        self._room = 0        # bytes the answer may still take: its heads, then its body
        self._lines = 0       # header lines the head being read may still have
        self._interim = 0     # interim answers that may still come
        self.answered_any = False  # a byte of this request's answer arrived
        self.reusable = True

    # lifecycle ----------------------------------------------------------------------
    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.transport = None
        if self._status >= 200 and not self._framed:  # a body that ends with the connection
            self._finish()
        else:
            self._fail(AnswerError("the connection closed before an answer" +
                                   (f": {exc}" if exc else "")))

    def eof_received(self) -> bool:
        return False  # close our side too

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # one request --------------------------------------------------------------------
    def request(self, data: bytes, read_limit: int) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._status, self._framed, self._limit = 0, False, read_limit
        self._room, self._lines, self._interim = (MAX_HEAD_BYTES, MAX_HEADER_LINES,
                                                  MAX_INTERIM_ANSWERS)
        self._excerpt.clear()
        self.answered_any = False
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing was asked: the receiver is misbehaving
            self.close()
            return
        self.answered_any = True
        room = self._room - len(data)
        if room < 0:
            self._past_room(data)
            return
        self._room = room
        try:
            self._parser.feed_data(data)
        except _PARSE_ENDED as exc:
            self._parse_ended(exc)

    def _past_room(self, data: bytes) -> None:
        """``data`` goes past the answer's room: parse what fits, then refuse a head that
        is still not over, or end the answer where its body's room ends."""
        allowed, self._room = self._room, 0
        self._feed(data[:allowed])  # if the head ends there, the body's room is added
        if self._waiter is None:  # answered (or failed) within it
            if len(data) > allowed:  # and more came after the answer
                self.close()
            return
        if self._status < 200:  # still in the head
            self.close()
            self._fail(AnswerRefused(HEAD_TOO_LARGE))
        elif self._room > 0:
            self.data_received(data[allowed:])
        else:  # not worth reading on: the answer ends here, and so does the connection
            self._finish()
            self.close()

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except _PARSE_ENDED as exc:
            self._parse_ended(exc)

    def _parse_ended(self, exc: Exception) -> None:
        self.close()
        if isinstance(exc, httptools.HttpParserUpgrade):  # 101 Switching Protocols: no
            self._status = self._parser.get_status_code()  # answer to a POST, a failure
            self._finish()
            return
        refused = exc.__context__  # raised by a callback below
        self._fail(refused if isinstance(refused, AnswerRefused)
                   else AnswerError(f"malformed HTTP answer: {exc}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._lines -= 1
        if self._lines < 0:
            raise AnswerRefused(TOO_MANY_LINES)
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._status >= 200:  # the final head: the body's room
            self._room += MAX_BODY_WIRE_BYTES

    def on_body(self, body: bytes) -> None:
        room = self._limit - len(self._excerpt)
        if room > 0:
            self._excerpt += body[:room]

    def on_message_complete(self) -> None:
        if self._status < 200:  # 1xx: an interim answer; the real one follows
            self._interim -= 1
            if self._interim < 0:
                raise AnswerRefused(TOO_MANY_INTERIM)
            self._status, self._framed, self._lines = 0, False, MAX_HEADER_LINES
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._finish()

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, bytes(self._excerpt)))
        self._status = 0
        self.idle_since = time.monotonic()

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class Poster:
    def __init__(self, *, allow_private: bool, max_idle_s: float = IDLE_S,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._allow_private = allow_private
        self._max_idle_s = max_idle_s
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None  # while any connection is idle

    async def post(self, url: str, body: bytes, headers: Iterable[tuple[str, str]], *,
                   timeout_s: float, read_limit: int) -> tuple[int, bytes]:
        """POST ``body``; return the status and up to ``read_limit`` bytes of the answer.
        Raises ``TimeoutError``, :class:`netguard.BlockedAddress`, ``OSError`` (including
        :class:`AnswerError`) or ``ValueError`` (a URL this client cannot send to)."""
        where = target(url)
        lines = [where.head]
        lines.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
        data = b"".join(lines)
        deadline = asyncio.get_running_loop().time() + timeout_s
        conn = self._take_idle(where.origin)
        if conn is not None:
            try:
                return await self._exchange(conn, where, data, read_limit, deadline)
            except AnswerError:
                if conn.answered_any:
                    raise
                # the receiver had closed it while idle: once more on a new connection
        conn = await self._connect(where, deadline)
        return await self._exchange(conn, where, data, read_limit, deadline)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in self._busy:
            conn.close()
        self._busy.clear()

    def sweep(self) -> float | None:
        """Close idle connections past ``max_idle_s``, forget closed ones and origins with
        nothing left (receivers come and go); return when the next one falls due, if any.
        Runs on a timer while any connection is idle (:meth:`_sweep_when_due`)."""
        now = time.monotonic()
        oldest: float | None = None
        for origin, conns in list(self._idle.items()):
            keep = deque(c for c in conns if c.open and now - c.idle_since < self._max_idle_s)
            for conn in conns:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[origin] = keep
                since = min(c.idle_since for c in keep)
                oldest = since if oldest is None else min(oldest, since)
            else:
                del self._idle[origin]
        return None if oldest is None else oldest + self._max_idle_s

    def _sweep_when_due(self) -> None:
        self._sweeper = None
        due = self.sweep()
        if due is not None:  # at most ~20 sweeps per idle period, however they fall due
            delay = max(due - time.monotonic(), self._max_idle_s / 20)
            self._sweeper = asyncio.get_running_loop().call_later(delay, self._sweep_when_due)

    @property
    def idle_connections(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    # connections ------------------------------------------------------------------
    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        conns = self._idle.get(origin)
        now = time.monotonic()
        while conns:
            conn = conns.pop()  # the most recently used is the least likely to be stale
            if conn.open and now - conn.idle_since < self._max_idle_s:
                return conn
            conn.close()
        return None

    def _put_back(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        if not (conn.reusable and conn.open):
            conn.close()
            return
        conns = self._idle.setdefault(origin, deque())
        conns.append(conn)
        if len(conns) > IDLE_PER_ORIGIN:
            conns.popleft().close()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._max_idle_s,
                                                                  self._sweep_when_due)

    async def _exchange(self, conn: _Connection, where: Target, data: bytes, read_limit: int,
                        deadline: float) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        self._busy.add(conn)
        answer = conn.request(data, read_limit)
        timer = loop.call_at(deadline, _expire, conn, answer)
        try:
            result = await answer
        except BaseException:
            conn.close()
            raise
        finally:
            timer.cancel()
            self._busy.discard(conn)
        self._put_back(where.origin, conn)
        return result

    async def _connect(self, where: Target, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(deadline):
            addresses = await self._addresses(where)
            tls: ssl.SSLContext | None = None
            if where.tls:
                tls = self._ssl or _default_tls()
            failure: OSError | None = None
            for address in addresses:
                try:
                    _, conn = await loop.create_connection(
                        _Connection, host=address, port=where.origin[2], ssl=tls,
                        server_hostname=where.host if tls else None)
                    return conn
                except OSError as exc:
                    failure = exc
            raise failure or OSError(f"no address to connect to for {where.host!r}")

    async def _addresses(self, where: Target) -> list[str]:
        literal = netguard.parse_ip_literal(where.host)
        if literal is not None:
            if not self._allow_private:
                netguard.check_address(literal)
            return [str(literal)]
        infos = await asyncio.get_running_loop().getaddrinfo(
            where.host, where.origin[2], type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self._allow_private:
            for address in addresses:  # all of them, as the resolver guard does
                try:
                    netguard.check_address(address)
                except netguard.BlockedAddress as exc:
                    raise netguard.BlockedAddress(
                        f"host {where.host!r} resolves to a blocked address: {exc}") from None
        return addresses


def _expire(conn: _Connection, answer: asyncio.Future[tuple[int, bytes]]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())
    conn.close()


@functools.lru_cache(maxsize=1)
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()
