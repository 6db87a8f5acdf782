"""How the fast lane frames a request: one pure function, :func:`frame`, from the bytes a
connection has received so far to a :class:`Request` the lane answers, :data:`NEED_MORE`,
or :data:`NOT_MINE` (aiohttp takes the connection and those bytes).

The lane takes a request only when it is ``POST /jobs HTTP/1.1`` with one
``Content-Length`` of at most ``server.max_body_bytes``, or ``GET /jobs/{jobId} HTTP/1.1``
(an id of letters, digits, ``_`` and ``-``) with no body, and its head is one that aiohttp
would take and read the same way, in a stricter form:

- every header line is a token, a colon and a value of visible ASCII, spaces and tabs,
  ending in CRLF (:data:`_FIELD`: no folding, no other bytes);
- one ``Host``, and no second copy of any header aiohttp allows only once
  (:data:`SINGLETON_FIELDS`); none of ``Transfer-Encoding``, ``Content-Encoding``,
  ``Expect``, ``Upgrade`` or ``Sec-WebSocket-Key1``;
- at most :data:`MAX_HEADERS` header lines, each at most :data:`MAX_FIELD_BYTES` long
  (name and value) and the whole head at most :data:`MAX_HEAD_BYTES`: aiohttp's own
  limits (``handler_args`` in :mod:`jobd.api.connections`) are the same or larger;
- a ``Content-Length`` of at most :data:`MAX_LENGTH_DIGITS` digits.

Anything else -- another path or method, HTTP/1.0, a query string, a chunked or oversized
body, a malformed head -- is not the lane's, and aiohttp gives it its usual answer (in
problem+json: :mod:`jobd.api.connections`). ``tests/api/test_framing.py`` checks, on
generated requests split at random points, that what the lane takes aiohttp's parser
reads the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

REQUEST_LINE = b"POST /jobs HTTP/1.1\r\n"
GET_JOB = b"GET /jobs/"  # the start of GET /jobs/{jobId} HTTP/1.1
_PREFIXES = (REQUEST_LINE, GET_JOB)
_GET_LINE = re.compile(rb"GET /jobs/([A-Za-z0-9_-]{1,128}) HTTP/1\.1\r\n")
# One header line as RFC 9110/9112 write it: a token, a colon, a value of visible ASCII,
# spaces and tabs, CRLF. No obs-fold, no obs-text, no bare CR or LF. Anchored to the start
# of a line: unanchored, the search tried every position of a long run of token bytes
# again (quadratic: seconds of the event loop for one 16 KiB head).
_FIELD = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):([\t\x20-\x7e]*+)\r\n", re.MULTILINE)
_REFUSED_FIELDS = (b"transfer-encoding", b"content-encoding", b"expect", b"upgrade",
                   b"sec-websocket-key1")
# The headers aiohttp refuses to see twice in a request (RFC 9110 singletons)
SINGLETON_FIELDS = frozenset((b"content-length", b"content-location", b"content-range",
                              b"content-type", b"etag", b"host", b"max-forwards", b"server",
                              b"transfer-encoding", b"user-agent"))
_NOT_A_REQUEST = re.compile(rb"[^\r\n!#$%&'*+.^_`|~0-9A-Za-z-]")  # not a method's first byte
MAX_HEAD_BYTES = 16 * 1024     # request line, header lines and the blank line
MAX_FIELD_BYTES = 8190         # one header's name and value (aiohttp's max_field_size)
MAX_LINE_BYTES = 8190          # the request line (aiohttp's max_line_size)
MAX_HEADERS = 128              # header lines (aiohttp's max_headers)
MAX_LENGTH_DIGITS = 18         # a Content-Length of more is not the lane's
_SHORT_HEAD = 1024             # (a head this short holds few line feeds anyway)


class Verdict(Enum):
    NEED_MORE = "need more"    # the request is still arriving
    NOT_MINE = "not mine"      # aiohttp takes the connection


NEED_MORE = Verdict.NEED_MORE
NOT_MINE = Verdict.NOT_MINE


@dataclass(slots=True)
class Request:
    authorization: str
    idempotency_key: str | None
    body: bytes
    keep_alive: bool
    size: int                  # bytes of the buffer this request took (head and body)
    job_id: str | None = None  # GET /jobs/{job_id}; None: POST /jobs


def frame(buf: bytes | bytearray, max_body_bytes: int) -> Request | Verdict:
    """The first request in ``buf`` if it is the lane's and complete; else whether to wait
    for more bytes or to hand the connection over. Pure: the same bytes give the same
    answer however they arrived."""
    job_id = None
    if buf.startswith(REQUEST_LINE):
        line_end = len(REQUEST_LINE)
    elif buf.startswith(GET_JOB):
        line_end = buf.find(b"\r\n", 0, MAX_HEAD_BYTES) + 2
        if line_end == 1:  # the request line is still arriving
            return NOT_MINE if len(buf) >= MAX_HEAD_BYTES else NEED_MORE
        path = _GET_LINE.fullmatch(buf, 0, line_end)
        if path is None:
            return NOT_MINE
        job_id = path.group(1).decode()
    elif any(p.startswith(bytes(buf[:len(p)])) for p in _PREFIXES):
        return NEED_MORE  # the request line is still arriving (or nothing yet)
    else:
        return NOT_MINE
    end = buf.find(b"\r\n\r\n", line_end - 2, MAX_HEAD_BYTES)
    if end < 0:
        return NOT_MINE if len(buf) >= MAX_HEAD_BYTES else NEED_MORE
    head = read_head(bytes(buf[line_end:end + 2]))
    if head is None:
        return NOT_MINE
    length = head.length
    if job_id is None:  # POST: one Content-Length, within the limit
        if length is None or length > max_body_bytes:
            return NOT_MINE
    elif length:  # GET: no body
        return NOT_MINE
    total = end + 4 + (length or 0)
    if len(buf) < total:
        return NEED_MORE
    return Request(authorization=head.authorization, idempotency_key=head.idempotency_key,
                   body=bytes(buf[end + 4:total]), keep_alive=head.keep_alive, size=total,
                   job_id=job_id)


def ready_to_hand_over(buf: bytes | bytearray) -> bool:
    """Whether a connection that is not the lane's can go to aiohttp: once a request
    head has arrived whole (or grown past what the lane reads), or at once for bytes that
    cannot start an HTTP request (TLS, say), which aiohttp refuses at once. Until then the
    connection stays here, timed out like any (``server.read_timeout``)."""
    return (len(buf) >= MAX_HEAD_BYTES or _NOT_A_REQUEST.match(buf) is not None
            or buf.find(b"\r\n\r\n") >= 0)


@dataclass(slots=True)
class Head:
    """What the lane reads from a request's header lines."""

    length: int | None          # Content-Length; None: none sent
    authorization: str
    idempotency_key: str | None
    keep_alive: bool


def read_head(fields: bytes) -> Head | None:
    """The header lines of a request (each with its CRLF; not the request line, not the
    blank line), or None if this lane does not take them (see the module's docstring).
    Values lose the spaces and tabs around them and the first of a repeated header
    counts, as in aiohttp; a ``close`` in any Connection header ends the connection
    after the answer, as in llhttp. Every byte must belong to a field: the lengths of the
    non-overlapping matches, in order, add up to the whole only if nothing lies between
    them. (The hot path of POST /jobs: equality tests on names, no hashing, unless the
    head is unusual.)"""
    if len(fields) > _SHORT_HEAD and fields.count(b"\n") > MAX_HEADERS:
        return None  # (each line feed is a place a match may start: bounds the work)
    lines = _FIELD.findall(fields)
    length: int | None = None
    authorization: bytes | None = None
    key: bytes | None = None
    keep_alive = True
    hosts = 0
    others: list[bytes] = []
    covered = 0
    for name, value in lines:
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
            if length is not None or not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
                return None
            length = int(value)
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            if _asks_to_close(value):
                keep_alive = False
        elif name in _REFUSED_FIELDS:
            return None
        else:
            others.append(name)
    if covered != len(fields) or hosts != 1 or not _within_aiohttps_rules(lines, others, covered):
        return None
    return Head(length, (authorization or b"").decode("ascii"),
                None if key is None else key.decode("ascii"), keep_alive)


def _within_aiohttps_rules(lines: list[tuple[bytes, bytes]], others: list[bytes],
                           size: int) -> bool:
    """At most MAX_HEADERS lines, none longer than MAX_FIELD_BYTES, and no second copy
    of a header aiohttp allows once among ``others`` (names the lane does not read)."""
    if len(lines) > MAX_HEADERS:
        return False
    if size > MAX_FIELD_BYTES and max(len(n) + len(v) for n, v in lines) > MAX_FIELD_BYTES:
        return False
    if len(others) < 2 or len(set(others)) == len(others):
        return True
    seen: set[bytes] = set()
    for name in others:
        if name in SINGLETON_FIELDS:
            if name in seen:
                return False
            seen.add(name)
    return True


def _asks_to_close(value: bytes) -> bool:
    return b"close" in [token.strip(b" \t").lower() for token in value.split(b",")]
