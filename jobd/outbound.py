"""What one answer from an outbound HTTP peer may cost, whatever the peer sends.

The bounds are the same for both clients jobd has: the webhook client
(:mod:`jobd.runtime.poster`) and aiohttp's, which ``http`` jobs use and webhooks fall
back to with ``webhooks.fast_client = false`` (:func:`client_session`).

* The head -- the status line and the header lines, of the final answer and of the
  interim (1xx) answers before it, together -- is at most :data:`MAX_HEAD_BYTES`.
* A head has at most :data:`MAX_HEADER_LINES` header lines (trailers count with it).
* At most :data:`MAX_INTERIM_ANSWERS` interim answers (``100 Continue``...) come first.

Past any of these the attempt fails at once with :class:`AnswerRefused` and the
connection is closed. After the head, at most :data:`MAX_BODY_WIRE_BYTES` of body
are read, as they come over the wire (chunk framing, extensions and trailers
included): the answer then ends there, with its status and the excerpt read so far,
and its connection is closed. Time is bounded by the caller's timeout; connections
idle for :data:`IDLE_S` are closed.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

from jobd import netguard

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADER_LINES = 100
MAX_INTERIM_ANSWERS = 10
MAX_BODY_WIRE_BYTES = 64 * 1024
IDLE_S = 15.0  # an outbound connection idle this long is closed

HEAD_TOO_LARGE = f"response head over {MAX_HEAD_BYTES} bytes"
TOO_MANY_LINES = f"response head over {MAX_HEADER_LINES} header lines"
TOO_MANY_INTERIM = f"more than {MAX_INTERIM_ANSWERS} interim (1xx) answers"


class AnswerRefused(aiohttp.ClientError):
    """An answer went past one of the bounds above; its connection was closed.
    (A ``ClientError``, so that aiohttp passes it on as it is and does not retry.)"""


_HEAD, _BODY, _STOPPED = 0, 1, 2  # BoundedResponseHandler's states
_AIOHTTP_TOO_MANY_LINES = ("Too many headers received", "Too many trailers received")


class BoundedResponseHandler(ResponseHandler):
    """aiohttp's client protocol with the bounds above. aiohttp counts the header lines
    itself (``max_headers``, given by :func:`client_session`); this counts the bytes
    before its parser sees them, and the interim answers as the parser hands them on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._state = _BODY  # until a request begins, only the bytes are counted
        self._room = MAX_HEAD_BYTES + MAX_BODY_WIRE_BYTES  # bytes the answer may still take
        self._interim = 0
        self._body: StreamReader | None = None

    def set_response_params(self, **kwargs: Any) -> None:  # a request begins
        self._state, self._room, self._interim, self._body = _HEAD, MAX_HEAD_BYTES, 0, None
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        if self._state == _STOPPED:
            return
        room = self._room - len(data)
        if room >= 0:
            self._room = room
            super().data_received(data)
            return
        allowed, self._room = self._room, 0
        super().data_received(data[:allowed])  # if the head ends there, the body's room is added
        if self._state == _HEAD:
            self._refuse(HEAD_TOO_LARGE)
        elif self._state == _BODY:
            if self._room > 0:
                self.data_received(data[allowed:])
            else:
                self._cut_short()

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        if self._state == _HEAD:
            message, body = data
            if 100 <= message.code < 200 and message.code != 101:
                self._interim += 1
                if self._interim > MAX_INTERIM_ANSWERS:
                    self._refuse(TOO_MANY_INTERIM)
                    return
            else:
                self._state, self._body = _BODY, body
                self._room += MAX_BODY_WIRE_BYTES
        elif self._state == _STOPPED:
            return
        super().feed_data(data, size)

    def set_exception(self, exc: BaseException, *cause: BaseException) -> None:
        if isinstance(exc, HttpProcessingError) and exc.message in _AIOHTTP_TOO_MANY_LINES:
            exc = AnswerRefused(TOO_MANY_LINES)
        super().set_exception(exc, *cause)
        if self._state == _BODY and self._body is not None and not self._body.is_eof():
            self._body.set_exception(exc)  # a reader of the body would wait for the timeout

    def _refuse(self, reason: str) -> None:
        self._state = _STOPPED
        if self.transport is not None:
            self.transport.close()
        self.set_exception(AnswerRefused(reason))

    def _cut_short(self) -> None:
        """The body went past its room: what came is the whole answer; the connection is
        not read further, and closed when the response is released."""
        self._state = _STOPPED
        self.force_close()
        if self.transport is not None:
            self.transport.pause_reading()
        if self._body is not None:
            self._body.feed_eof()


# aiohttp's own limit on one line, set past what the bounds above let through
_NEVER_FIRST = MAX_HEAD_BYTES + MAX_BODY_WIRE_BYTES + 1


def client_session(allow_private: bool, *, idle_s: float = IDLE_S) -> aiohttp.ClientSession:
    """An aiohttp session for outbound requests: every address checked
    (:func:`netguard.guarded_connector`), the bounds above, idle connections closed after
    ``idle_s``, no proxies or ``.netrc`` from the environment. Call it in a running loop."""
    connector = netguard.guarded_connector(allow_private, keepalive_timeout=idle_s)
    # aiohttp has no public hook for its protocol class; its connectors build every
    # connection's protocol with this factory (tests/handlers/test_http_bounds.py
    # fails if that stops being so).
    factory = functools.partial(BoundedResponseHandler, loop=asyncio.get_running_loop())
    connector._factory = cast("functools.partial[ResponseHandler]", factory)
    return aiohttp.ClientSession(connector=connector, trust_env=False,
                                 max_line_size=_NEVER_FIRST, max_field_size=_NEVER_FIRST,
                                 max_headers=MAX_HEADER_LINES)
