"""``POST /jobs`` and ``GET /jobs/{jobId}`` served without aiohttp's per-request
machinery; everything else by aiohttp.

Why: aiohttp's server spends several times more of the event loop on a request before
a handler runs than the request's own work here (``bench/README.md`` has the figures:
its "hello" against a bare httptools one), and creating a job and polling its state are
the two hot endpoints. The logic is the same functions either way
(:mod:`jobd.api.routes`: ``admit``, ``prepare``, ``insert``, ``created`` and
``job_state``), and so are the error bodies (:mod:`jobd.api.problems`).

Every connection the listening socket accepts starts with :class:`FastLaneProtocol`.
It answers a request itself only when :func:`jobd.api.framing.frame` says it is the
lane's (a strict subset of what aiohttp takes, read the same way); anything else --
another path or method, HTTP/1.0, a query string, a chunked or oversized body, a
malformed request -- and, once that request's head has arrived, the connection is
handed over, with every byte not yet answered, to aiohttp's own protocol for the rest
of its life, so aiohttp gives those their usual answers (404, 413, 400 ...). Requests
on one connection are answered one at a time, in order. With ``server.fast_lane =
false`` the lane answers nothing: every connection is handed over once its first head
has arrived. Either way the connections are counted and timed out by
:class:`jobd.api.connections.Connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any, cast

from aiohttp import web

from jobd.api.auth import Caller, authorized, bearer_key
from jobd.api.connections import AiohttpConnection, Connections, connection_limit, handler_args
from jobd.api.context import ApiContext
from jobd.api.framing import NOT_MINE, Request, frame, ready_to_hand_over
from jobd.api.futures import when_done
from jobd.api.problems import (
    INTERNAL_ERROR,
    PROBLEM_JSON,
    error_body,
    error_headers,
)
from jobd.api.routes import Answer, admit, created, insert, job_state, prepare, take_token
from jobd.errors import JobdError, TooManyConnections
from jobd.models import Delivery, IdempotentResult, Job
from jobd.ratelimit import Decision

log = logging.getLogger("jobd.api")

PAUSE_BYTES = 1024 * 1024      # unanswered bytes buffered before reading pauses
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


class FastLane:
    """The protocol factory for the API's listening socket, and what its connections share."""

    def __init__(self, ctx: ApiContext, fallback: web.Server) -> None:
        self.ctx = ctx
        server = ctx.config.server
        self.max_body_bytes = server.max_body_bytes
        self.connections = Connections(server, connection_limit(ctx.config))
        # aiohttp's protocol for a connection handed over (``fallback``: ``AppRunner.server``)
        self.fallback = functools.partial(AiohttpConnection, fallback, self.connections,
                                          **handler_args(server))
        self._protocol = FastLaneProtocol if server.fast_lane else HandOverProtocol
        self.pending: set[asyncio.Future[Any]] = set()  # store calls an answer waits for
        self.served = 0
        self.handed_over = 0
        self._date = (0, b"")

    def __call__(self) -> asyncio.Protocol:
        if not self.connections.admit():
            return RefusedProtocol(self)
        return self._protocol(self)

    def http_date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]

    def answer(self, request: Request, reply: Callable[[Answer], None]) -> None:
        """Answer ``request`` through ``reply``, without a task: the checks run here, and
        what waits for the store (a tenant not in the cache, a job's state, a new job's
        commit) goes on in the callback of the store's future, or at once when that
        future is done already."""
        rate_headers: dict[str, str] = {}
        try:
            key = bearer_key(request.authorization)
            caller = None if request.job_id is not None else self.ctx.tenants.cached(key)
            found = self.ctx.tenants.lookup(key) if caller is None else None
        except Exception as exc:
            reply(self._refusal(exc, rate_headers))
            return
        if found is None:
            self._create(request, reply, rate_headers, caller)
            return
        self._wait(found, functools.partial(
            self._get if request.job_id is not None else self._create, request, reply,
            rate_headers))

    def _wait(self, future: asyncio.Future[Any], then: Callable[[Any], None]) -> None:
        """``then(future)`` once it is done (now if it is), counted as pending meanwhile."""
        if not future.done():
            self.pending.add(future)
            future.add_done_callback(self.pending.discard)
        when_done(future, then)

    def _get(self, request: Request, reply: Callable[[Answer], None], rate_headers: dict[str, str],
             found: asyncio.Future[Caller | None]) -> None:
        assert request.job_id is not None
        try:
            tenant = authorized(found.result()).tenant
            state = self.ctx.store.job_state(request.job_id, tenant.id)
        except Exception as exc:
            reply(self._refusal(exc, rate_headers))
            return
        self._wait(state, functools.partial(self._state, request.job_id, reply))

    def _state(self, job_id: str, reply: Callable[[Answer], None],
               state: asyncio.Future[tuple[Job, list[Delivery]] | None]) -> None:
        try:
            answer = job_state(job_id, state.result())
        except Exception as exc:
            answer = self._refusal(exc, {})
        reply(answer)

    def _create(self, request: Request, reply: Callable[[Answer], None],
                rate_headers: dict[str, str],
                found: Caller | asyncio.Future[Caller | None] | None) -> None:
        """Take a token for a new job (its caller cached, or as just looked up), then
        :meth:`_admit` it, at once or when the shared bucket answers."""
        try:
            caller = authorized(found.result() if isinstance(found, asyncio.Future) else found)
            now = self.ctx.clock.now()
            decision = take_token(self.ctx, caller, now)
        except Exception as exc:
            reply(self._refusal(exc, rate_headers))
            return
        if isinstance(decision, Decision):
            self._admit(request, reply, rate_headers, caller, now, decision)
            return
        self._wait(decision, functools.partial(self._decided, request, reply, rate_headers,
                                               caller, now))

    def _decided(self, request: Request, reply: Callable[[Answer], None],
                 rate_headers: dict[str, str], caller: Caller, now: float,
                 decision: asyncio.Future[Decision]) -> None:
        try:
            decided = decision.result()
        except Exception as exc:
            reply(self._refusal(exc, rate_headers))
            return
        self._admit(request, reply, rate_headers, caller, now, decided)

    def _admit(self, request: Request, reply: Callable[[Answer], None],
               rate_headers: dict[str, str], caller: Caller, now: float,
               decision: Decision) -> None:
        """Admit, check and insert a new job; answer once the insert is committed."""
        try:
            key = admit(self.ctx, caller, decision, idempotency_key=request.idempotency_key,
                        content_length=len(request.body), rate_headers=rate_headers)
            submission = prepare(self.ctx, caller, now, key, request.body)
            future = insert(self.ctx, submission)
        except Exception as exc:
            reply(self._refusal(exc, rate_headers))
            return

        def committed(done: asyncio.Future[IdempotentResult]) -> None:
            try:
                answer = created(self.ctx, submission, done.result(), rate_headers)
            except Exception as exc:
                answer = self._refusal(exc, rate_headers)
            reply(answer)

        self._wait(future, committed)

    @staticmethod
    def _refusal(exc: Exception, rate_headers: dict[str, str]) -> Answer:
        if isinstance(exc, JobdError):
            error = exc
        else:
            log.error("unhandled error in the fast lane", exc_info=exc)
            error = INTERNAL_ERROR
        headers = {"Content-Type": PROBLEM_JSON, **error_headers(error), **rate_headers}
        return Answer(error.status, headers, error_body(error))

    def render(self, answer: Answer, keep_alive: bool) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (answer.status, _REASONS.get(answer.status, b"")),
                 "".join([f"{name}: {value}\r\n"
                          for name, value in answer.headers.items()]).encode("latin-1")]
        lines.append(b"Content-Length: %d\r\nDate: %s\r\n" % (len(answer.body), self.http_date()))
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        lines.append(answer.body)
        return b"".join(lines)

    def close_idle(self, idle_s: float) -> None:
        """Close connections with nothing in flight for ``idle_s`` (0: all idle ones)."""
        self.connections.close_idle(idle_s)

    async def run_idle_sweeper(self) -> None:
        """Close connections whose request is overdue or that idled too long."""
        await self.connections.run_sweeper()

    async def shutdown(self, timeout_s: float) -> None:
        """After the listener closed: let answers in flight finish, then close everything
        the lane holds (aiohttp's connections are aiohttp's runner's to close)."""
        self.close_idle(0)
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=timeout_s)
            await asyncio.sleep(0)  # their callbacks write the answers
        for conn in self.connections:
            if isinstance(conn, FastLaneProtocol):
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
        self.opened_at = time.monotonic()
        self.last_active = 0.0        # when the last answer was written (0: none yet)
        self._mark = (0.0, 0.0)       # (since, last_active): a request arriving, as swept

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

    def idle_since(self) -> float | None:
        return None if self.busy else self.last_active or self.opened_at

    def expired(self, now: float, read_timeout_s: float, idle_timeout_s: float) -> bool:
        """A request must arrive whole within ``read_timeout_s``: the first one counted
        from the connection's opening, a later one from when the sweep first saw part of
        it (so between one and one and a quarter of that). A connection with nothing to
        answer and nothing arriving is closed after ``idle_timeout_s``."""
        if self.busy:
            return False
        if not self.last_active:
            return now - self.opened_at >= read_timeout_s
        if not self._buffer:
            return now - self.last_active >= idle_timeout_s
        if self._mark[1] != self.last_active:
            self._mark = (now, self.last_active)
            return False
        return now - self._mark[0] >= read_timeout_s

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

    def _take_request(self) -> Request | None:
        """The next request if it is one for this lane and complete; None to wait for
        more bytes, or after handing the connection to aiohttp (once the head of the
        request that is not the lane's has arrived)."""
        buf = self._buffer
        if not buf:
            return None
        request = frame(buf, self._lane.max_body_bytes)
        if isinstance(request, Request):
            del buf[:request.size]
            return request
        if request is NOT_MINE and ready_to_hand_over(buf):
            self._hand_over()
        return None

    def _reply(self, request_keep_alive: bool, answer: Answer) -> None:
        self._lane.served += 1
        transport = self._transport
        if transport is None:  # the client left; the job (if any) is created all the same
            return
        keep_alive = request_keep_alive and not self._close_after
        transport.write(self._lane.render(answer, keep_alive))
        if not keep_alive:
            transport.close()
            return
        self.busy = False
        self.last_active = time.monotonic()
        if not self._write_paused:
            self._resume_reading()
        self._advance()

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
                protocol.data_received(data)


class HandOverProtocol(FastLaneProtocol):
    """``server.fast_lane = false``: every connection goes to aiohttp once its first
    request's head has arrived (until then it is timed out and counted like any)."""

    def _take_request(self) -> Request | None:
        if ready_to_hand_over(self._buffer):
            self._hand_over()
        return None


class RefusedProtocol(asyncio.Protocol):
    """A connection over ``server.max_connections`` with none idle to close: a 503, closed."""

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        error = TooManyConnections(f"more than {self._lane.connections.limit} connections are "
                                   "open and none is idle; try again")
        answer = Answer(error.status, {"Content-Type": PROBLEM_JSON, **error_headers(error)},
                        error_body(error))
        cast(asyncio.Transport, transport).write(self._lane.render(answer, keep_alive=False))
        transport.close()
