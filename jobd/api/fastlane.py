"""``POST /jobs`` and ``GET /jobs/{jobId}`` served without aiohttp's per-request
machinery; everything else by aiohttp.

Why: on this machine aiohttp's server costs ~85 us of the event loop per request
before a handler runs (its "hello" tops out near 10k req/s, a bare httptools one
near 55k; ``bench/README.md``), and creating a job and polling its state are the
two hot endpoints. The logic is the same functions either way
(:mod:`jobd.api.routes`: ``admit``, ``prepare``, ``insert``, ``created`` and
``job_state``), and so are the error bodies (:mod:`jobd.api.problems`).

The listening socket's protocol is :class:`FastLaneProtocol`. It answers a request
itself only when its head is ``POST /jobs HTTP/1.1`` with one ``Content-Length``
of at most ``server.max_body_bytes``, or ``GET /jobs/{jobId} HTTP/1.1`` (an id of
letters, digits, ``_`` and ``-``) with no body; with none of
``Transfer-Encoding``, ``Content-Encoding``, ``Expect`` or ``Upgrade``; and
every header line in the strict form of RFC 9112 (``_FIELD``: no folding, no bytes
outside visible ASCII, spaces and tabs). That is a subset of what llhttp and
aiohttp accept, read the same way (``tests/api/test_fastlane_head.py`` checks it
against llhttp on generated heads), and reading it takes a third of llhttp's time
from Python (its callbacks). Anything else -- another path or method, HTTP/1.0, a
query string, a chunked or oversized body, a malformed request -- and the
connection is handed over, with every byte not yet answered, to aiohttp's own
protocol for the rest of its life, so aiohttp gives those their usual answers
(404, 413, 400 ...). Requests on one connection are answered one at a time, in
order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import cast

from jobd.api.context import ApiContext
from jobd.api.problems import INTERNAL_ERROR, PROBLEM_JSON, error_body, error_headers
from jobd.api.routes import Answer, admit, created, insert, job_state, prepare
from jobd.errors import JobdError
from jobd.models import IdempotentResult

log = logging.getLogger("jobd.api")

REQUEST_LINE = b"POST /jobs HTTP/1.1\r\n"
GET_JOB = b"GET /jobs/"        # the start of GET /jobs/{jobId} HTTP/1.1
_PREFIXES = (REQUEST_LINE, GET_JOB)
_GET_LINE = re.compile(rb"GET /jobs/([A-Za-z0-9_-]{1,128}) HTTP/1\.1\r\n")
# One header line as RFC 9110/9112 write it: a token, a colon, a value of visible ASCII,
# spaces and tabs, CRLF. No obs-fold, no obs-text, no bare CR or LF: a head with
# anything else is not one this lane takes (aiohttp's own parser decides it).
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([\t\x20-\x7e]*)\r\n")
_REFUSED_FIELDS = (b"transfer-encoding", b"content-encoding", b"expect", b"upgrade")
MAX_HEAD_BYTES = 16 * 1024     # a longer head goes to aiohttp (which refuses it)
PAUSE_BYTES = 1024 * 1024      # unanswered bytes buffered before reading pauses
IDLE_TIMEOUT_S = 75.0          # as aiohttp's keep-alive timeout
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


@dataclass(slots=True)
class _Request:
    authorization: str
    idempotency_key: str | None
    body: bytes
    keep_alive: bool
    job_id: str | None = None  # GET /jobs/{job_id}; None: POST /jobs


class FastLane:
    """The protocol factory for the API's listening socket, and what its connections share."""

    def __init__(self, ctx: ApiContext, fallback: Callable[[], asyncio.BaseProtocol]) -> None:
        self.ctx = ctx
        self.fallback = fallback  # aiohttp's protocol factory (``AppRunner.server``)
        self.connections: set[FastLaneProtocol] = set()
        self.pending: set[asyncio.Future[IdempotentResult]] = set()  # jobs being committed
        self.served = 0
        self.handed_over = 0
        self._date = (0, b"")

    def __call__(self) -> FastLaneProtocol:
        return FastLaneProtocol(self)

    def http_date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]

    def answer(self, request: _Request, reply: Callable[[Answer], None]) -> None:
        """Answer ``request`` through ``reply``: a job's state or a refusal at once, a
        new job once the writer has committed it. No task: the checks run here, and the
        201 is written from the writer's future's callback (a task per request cost
        ~10 us of the event loop, measured)."""
        if request.job_id is not None:
            try:
                answer = job_state(self.ctx, request.authorization, request.job_id)
            except Exception as exc:
                answer = self._refusal(exc, {})
            reply(answer)
            return
        rate_headers: dict[str, str] = {}
        try:
            caller, now, key = admit(self.ctx, authorization=request.authorization,
                                     idempotency_key=request.idempotency_key,
                                     content_length=len(request.body), rate_headers=rate_headers)
            submission = prepare(self.ctx, caller, now, key, request.body)
            future = insert(self.ctx, submission)
        except Exception as exc:
            reply(self._refusal(exc, rate_headers))
            return
        self.pending.add(future)

        def committed(done: asyncio.Future[IdempotentResult]) -> None:
            self.pending.discard(done)
            try:
                answer = created(self.ctx, submission, done.result(), rate_headers)
            except Exception as exc:
                answer = self._refusal(exc, rate_headers)
            reply(answer)

        future.add_done_callback(committed)

    @staticmethod
    def _refusal(exc: Exception, rate_headers: dict[str, str]) -> Answer:
        if isinstance(exc, JobdError):
            error = exc
        else:
            log.error("unhandled error in the fast lane", exc_info=exc)
            error = INTERNAL_ERROR
        headers = {"Content-Type": PROBLEM_JSON, **error_headers(error), **rate_headers}
        return Answer(error.status, headers, error_body(error))

    def close_idle(self, idle_s: float = IDLE_TIMEOUT_S) -> None:
        """Close connections with nothing in flight for ``idle_s`` (0: all idle ones)."""
        now = time.monotonic()
        for conn in list(self.connections):
            if not conn.busy and now - conn.last_active >= idle_s:
                conn.close()

    async def run_idle_sweeper(self) -> None:
        while True:
            await asyncio.sleep(IDLE_TIMEOUT_S / 4)
            self.close_idle()

    async def shutdown(self, timeout_s: float) -> None:
        """After the listener closed: let answers in flight finish, then close everything."""
        self.close_idle(0)
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=timeout_s)
            await asyncio.sleep(0)  # their callbacks write the answers
        for conn in list(self.connections):
            conn.close()


class FastLaneProtocol(asyncio.Protocol):
    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._paused = False          # reading, while too much waits unanswered
        self._write_paused = False    # answering, while the client does not read
        self._close_after = False
        self._advancing = False       # inside _advance (a refusal answers synchronously)
        self.busy = False
        self.last_active = time.monotonic()

    # connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._lane.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._lane.connections.discard(self)

    def eof_received(self) -> bool:
        if self.busy:  # answer what was asked, then close
            self._close_after = True
            return True
        return False

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not (self.busy or self._write_paused):
            self._advance()
        elif len(self._buffer) > PAUSE_BYTES and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True

    def pause_writing(self) -> None:
        """The client is not reading its answers: take no further request until it does."""
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume_reading()
        self._advance()

    def _resume_reading(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    # requests -----------------------------------------------------------------------
    def _advance(self) -> None:
        """Take the next requests, one at a time. A refusal is answered at once, from
        inside ``answer``, and its ``_reply`` calls this again: that call returns at
        once and the loop here goes on, so pipelined refusals do not nest."""
        if self._advancing:
            return
        self._advancing = True
        try:
            while self._transport is not None and not self.busy and not self._write_paused:
                request = self._take_request()
                if request is None:
                    return
                self.busy = True
                self._lane.answer(request, functools.partial(self._reply, request.keep_alive))
        finally:
            self._advancing = False

    def _take_request(self) -> _Request | None:
        """The next request if it is one for this lane and complete; None to wait for
        more bytes, or after handing the connection to aiohttp."""
        buf = self._buffer
        if not buf:
            return None
        job_id = None
        if buf.startswith(REQUEST_LINE):
            line_end = len(REQUEST_LINE)
        elif buf.startswith(GET_JOB):
            line_end = buf.find(b"\r\n") + 2
            if line_end == 1:  # the request line is still arriving
                if len(buf) > MAX_HEAD_BYTES:
                    self._hand_over()
                return None
            path = _GET_LINE.fullmatch(buf, 0, line_end)
            if path is None:
                self._hand_over()
                return None
            job_id = path.group(1).decode()
        else:
            if not any(p.startswith(bytes(buf[:len(p)])) for p in _PREFIXES):
                self._hand_over()
            return None  # (or the request line is still arriving)
        end = buf.find(b"\r\n\r\n", line_end - 2)
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                self._hand_over()
            return None
        head = _read_head(bytes(buf[line_end:end + 2]))
        length = 0 if head is None or head.length is None else head.length
        # POST: one Content-Length, within the limit; GET: no body
        framed = head is not None and (head.length is not None if job_id is None else not length)
        if not framed or length > self._lane.ctx.config.server.max_body_bytes:
            self._hand_over()  # aiohttp answers it (a 400 for a malformed one)
            return None
        assert head is not None
        total = end + 4 + length
        if len(buf) < total:
            return None
        body = bytes(buf[end + 4:total])
        del buf[:total]
        return _Request(authorization=head.authorization, idempotency_key=head.idempotency_key,
                        body=body, keep_alive=head.keep_alive, job_id=job_id)

    def _reply(self, request_keep_alive: bool, answer: Answer) -> None:
        self._lane.served += 1
        transport = self._transport
        if transport is None:  # the client left; the job (if any) is created all the same
            return
        keep_alive = request_keep_alive and not self._close_after
        transport.write(self._render(answer, keep_alive))
        if not keep_alive:
            transport.close()
            return
        self.busy = False
        self.last_active = time.monotonic()
        if not self._write_paused:
            self._resume_reading()
        self._advance()

    def _render(self, answer: Answer, keep_alive: bool) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (answer.status, _REASONS.get(answer.status, b"")),
                 "".join([f"{name}: {value}\r\n"
                          for name, value in answer.headers.items()]).encode("latin-1")]
        lines.append(b"Content-Length: %d\r\nDate: %s\r\n" % (len(answer.body),
                                                            self._lane.http_date()))
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        lines.append(answer.body)
        return b"".join(lines)

    def _hand_over(self) -> None:
        """aiohttp's protocol takes this connection, and every byte not yet answered."""
        transport = self._transport
        assert transport is not None and not self.busy
        self._resume_reading()  # (events reach the new protocol: it is set below, at once)
        self._transport = None
        self._lane.connections.discard(self)
        self._lane.handed_over += 1
        protocol = self._lane.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            with contextlib.suppress(Exception):  # aiohttp closes what it cannot parse
                cast(asyncio.Protocol, protocol).data_received(data)


@dataclass(slots=True)
class _Head:
    """What the lane reads from a request's header lines."""

    length: int | None          # Content-Length; None: none sent
    authorization: str
    idempotency_key: str | None
    keep_alive: bool


def _read_head(fields: bytes) -> _Head | None:
    """The header lines of a request (each with its CRLF; not the request line, not the
    blank line), or None if this lane does not take them: a line that is not a
    :data:`_FIELD`, two Content-Lengths or one that is not digits, or a
    Transfer-Encoding, Content-Encoding, Expect or Upgrade. Values lose the spaces and
    tabs around them and the first of a repeated header counts, as in aiohttp; a
    ``close`` in any Connection header ends the connection after the answer, as in
    llhttp. Every byte must belong to a field: the lengths of the non-overlapping
    matches, in order, add up to the whole only if nothing lies between them."""
    length: int | None = None
    authorization: bytes | None = None
    key: bytes | None = None
    keep_alive = True
    covered = 0
    for name, value in _FIELD.findall(fields):
        covered += len(name) + len(value) + 3
        name = name.lower()
        if name == b"authorization":
            if authorization is None:
                authorization = value.strip(b" \t")
        elif name == b"idempotency-key":
            if key is None:
                key = value.strip(b" \t")
        elif name == b"content-length":
            value = value.strip(b" \t")
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name == b"connection":
            if b"close" in [token.strip(b" \t").lower() for token in value.split(b",")]:
                keep_alive = False
        elif name in _REFUSED_FIELDS:
            return None
    if covered != len(fields):
        return None
    return _Head(length, (authorization or b"").decode("ascii"),
                 None if key is None else key.decode("ascii"), keep_alive)
