"""The fast lane's framing (:func:`jobd.api.framing.frame`): what it takes must be a
request that aiohttp's parser (llhttp, with aiohttp's own checks and the daemon's limits)
takes too and reads the same way, however the bytes are split; everything else it leaves
to aiohttp. Checked on fixed cases and on generated streams of requests, valid and
hostile, cut at random points."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
from aiohttp._http_parser import HttpRequestParser
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from jobd.api.connections import handler_args
from jobd.api.framing import (
    MAX_FIELD_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    NEED_MORE,
    NOT_MINE,
    Request,
    Verdict,
    frame,
    read_head,
    ready_to_hand_over,
)
from jobd.config import ServerConfig

REQUEST_LINE = b"POST /jobs HTTP/1.1\r\n"
MAX_BODY = 64


# What the references read ---------------------------------------------------------------
@dataclass
class Llhttp:
    """What llhttp (httptools) makes of one whole request."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    keep_alive: bool = False
    parser: httptools.HttpRequestParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()  # (llhttp forgets it afterwards)


def llhttp(raw: bytes) -> Llhttp | None:
    seen = Llhttp()
    seen.parser = httptools.HttpRequestParser(seen)
    try:
        seen.parser.feed_data(raw)
    except httptools.HttpParserError:
        return None
    finally:
        seen.parser = None
    return seen if seen.complete else None


@dataclass
class Message:
    """One request as aiohttp's server reads it."""

    method: str
    path: str
    headers: Any
    keep_alive: bool
    body: bytes


_LIMITS = {k: v for k, v in handler_args(ServerConfig()).items() if k.startswith("max_")}


def aiohttp_reads(raw: bytes) -> Message | None:
    """The one complete request aiohttp's parser reads in ``raw``, with the limits the
    daemon gives it; None if it refuses the bytes or they are not exactly one request."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16, **_LIMITS)
        try:
            messages, _upgraded, tail = parser.feed_data(raw)
        except HttpProcessingError:
            return None
        if len(messages) != 1 or tail:
            return None
        message, payload = messages[0]
        if not payload.is_eof():
            return None
        return Message(message.method, message.path, message.headers, not message.should_close,
                       payload.read_nowait())
    finally:
        loop.close()


# The lane, fed chunk by chunk ----------------------------------------------------------------
def lane_reads(chunks: list[bytes]) -> tuple[list[tuple[bytes, Request]], Verdict]:
    """The requests the lane takes from a stream arriving in ``chunks`` (each with the bytes
    it took), and why it stopped: NOT_MINE (handed over) or NEED_MORE (waiting)."""
    buf = bytearray()
    taken: list[tuple[bytes, Request]] = []
    for chunk in chunks:
        buf += chunk
        while True:
            got = frame(buf, MAX_BODY)
            if got is NOT_MINE:
                return taken, NOT_MINE
            if got is NEED_MORE:
                break
            assert isinstance(got, Request)
            taken.append((bytes(buf[:got.size]), got))
            del buf[:got.size]
    return taken, NEED_MORE


def check_taken(raw: bytes, request: Request) -> None:
    """``raw`` (what the lane took as ``request``) is one request aiohttp and llhttp both
    take, read the same way."""
    seen = aiohttp_reads(raw)
    assert seen is not None, f"the lane took a request aiohttp refuses: {raw[:200]!r}"
    assert seen.method == ("GET" if request.job_id else "POST")
    assert seen.path == (f"/jobs/{request.job_id}" if request.job_id else "/jobs")
    assert seen.body == request.body
    assert seen.keep_alive is request.keep_alive
    assert seen.headers.get("Authorization", "") == request.authorization
    assert seen.headers.get("Idempotency-Key") == request.idempotency_key
    raw_llhttp = llhttp(raw)
    assert raw_llhttp is not None and raw_llhttp.body == request.body
    assert raw_llhttp.keep_alive is request.keep_alive


# Fixed cases -------------------------------------------------------------------------------
def post(lines: bytes, body: bytes = b"") -> bytes:
    return REQUEST_LINE + lines + b"\r\n" + body


def test_an_ordinary_request_is_taken_and_read_as_aiohttp_reads_it() -> None:
    raw = post(b"Host: x\r\nAuthorization: Bearer k1\r\nContent-Type: application/json\r\n"
               b"Idempotency-Key:  key-1\t\r\nContent-Length: 2\r\n", b"{}")
    got = frame(raw + b"GET /jobs/", MAX_BODY)
    assert isinstance(got, Request) and got.size == len(raw)
    assert (got.authorization, got.idempotency_key, got.body, got.keep_alive, got.job_id) == (
        "Bearer k1", "key-1", b"{}", True, None)
    check_taken(raw, got)


def test_get_a_job() -> None:
    raw = b"GET /jobs/job_x-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\n"
    got = frame(raw, MAX_BODY)
    assert isinstance(got, Request) and got.job_id == "job_x-1"
    check_taken(raw, got)


@pytest.mark.parametrize("raw", [b"", b"P", b"POST /jo", b"GET /jobs/", b"GET /jobs/job_1",
                                 REQUEST_LINE + b"Host: x\r\nContent-Length: 2\r\n",
                                 post(b"Host: x\r\nContent-Length: 2\r\n", b"{")])
def test_a_request_still_arriving_needs_more(raw: bytes) -> None:
    assert frame(raw, MAX_BODY) is NEED_MORE


@pytest.mark.parametrize("lines", [
    b"Host: x\r\n folded: on\r\n",              # obs-fold
    b"Host: x\r\nX-A: a\nb\r\n",                 # a bare LF in a value
    b"Host: x\r\nX-A: a\rb\r\n",                 # a bare CR
    b"Host: x\r\nBad Header\r\n",                # no colon
    b"Host : x\r\n",                             # space before the colon
    b"Ho(st: x\r\n",                             # not a token
    b"Host: caf\xc3\xa9\r\n",                    # obs-text
    b"Host: x\x7f\r\n",                          # DEL
    b"Host: x\x00\r\n",                          # NUL
    b"Host: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n",
    b"Host: x\r\nContent-Length: +2\r\n",
    b"Host: x\r\nContent-Length: -2\r\n",
    b"Host: x\r\nContent-Length: 2 2\r\n",
    b"Host: x\r\nContent-Length:\r\n",
    b"Host: x\r\nContent-Length: " + b"0" * 18 + b"2\r\n",   # more digits than the lane reads
    b"Host: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n",  # (int() refuses over 4,300)
    b"Host: x\r\nTransfer-Encoding: chunked\r\n",
    b"Host: x\r\ntransfer-encoding: identity\r\n",
    b"Host: x\r\nContent-Encoding: gzip\r\n",
    b"Host: x\r\nExpect: 100-continue\r\n",
    b"Host: x\r\nUpgrade: websocket\r\n",
    b"Host: x\r\nSec-WebSocket-Key1: 1\r\n",
    b"Host: x\r\nHost: y\r\n",                   # aiohttp refuses a second Host
    b"Host: x\r\nhost: x\r\n",
    b"Host: x\r\nContent-Type: a\r\nContent-Type: b\r\n",
    b"Host: x\r\nUser-Agent: a\r\nuser-agent: b\r\n",
    b"Authorization: Bearer k\r\n",              # and one missing (HTTP/1.1)
    b"Host: x\r\n" + b"X-A: a\r\n" * MAX_HEADERS,  # more header lines than aiohttp takes
    b"Host: x\r\nX-A: " + b"a" * (MAX_FIELD_BYTES - 3) + b"\r\n",  # a line over its limit
    b"Host: x\r\nX-A: b",                         # a line without its CRLF
])
def test_heads_the_lane_leaves_to_aiohttp(lines: bytes) -> None:
    assert read_head(lines) is None
    assert frame(post(lines + b"Content-Length: 0\r\n"), MAX_BODY) is NOT_MINE


def test_the_limits_themselves_are_taken() -> None:
    lines = (b"Host: x\r\nContent-Length: 0\r\n" + b"X-A: a\r\n" * (MAX_HEADERS - 3)
             + b"X-B: " + b"b" * (MAX_FIELD_BYTES - 4) + b"\r\n")
    got = frame(post(lines), MAX_BODY)
    assert isinstance(got, Request)
    check_taken(post(lines), got)


def test_a_head_over_the_lanes_limit_is_not_read_even_when_it_arrives_at_once() -> None:
    """A head over MAX_HEAD_BYTES goes to aiohttp however it arrives: the lane never
    reads (nor searches) past that many bytes for it."""
    fill = b"X-A: " + b"a" * 8000 + b"\r\n"
    big = post(b"Host: x\r\nContent-Length: 0\r\n" + fill * 3)
    assert len(big) > MAX_HEAD_BYTES and frame(big, MAX_BODY) is NOT_MINE
    huge = post(b"Host: x\r\nContent-Length: 0\r\n" + b"X-A: a\r\n" * 100_000)
    assert frame(huge, MAX_BODY) is NOT_MINE
    assert frame(huge[:MAX_HEAD_BYTES], MAX_BODY) is NOT_MINE
    assert frame(huge[:MAX_HEAD_BYTES - 1], MAX_BODY) is NEED_MORE


@pytest.mark.parametrize(("value", "keep_alive"), [
    (b"close", False), (b"Close", False), (b"keep-alive, close", False), (b" close ", False),
    (b"keep-alive", True), (b"closed", True), (b"upgrade", True),
])
def test_connection_close_as_aiohttp_reads_it(value: bytes, keep_alive: bool) -> None:
    raw = post(b"Host: x\r\nContent-Length: 0\r\nConnection: " + value + b"\r\n")
    got = frame(raw, MAX_BODY)
    assert isinstance(got, Request) and got.keep_alive is keep_alive
    check_taken(raw, got)


def test_the_first_of_repeated_headers_counts() -> None:
    raw = post(b"Host: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n"
               b"Idempotency-Key: one\r\nidempotency-key: two\r\nContent-Length: 0\r\n")
    got = frame(raw, MAX_BODY)
    assert isinstance(got, Request)
    assert (got.authorization, got.idempotency_key) == ("Bearer a", "one")
    check_taken(raw, got)


def test_a_body_over_max_body_bytes_is_not_the_lanes() -> None:
    raw = post(b"Host: x\r\nContent-Length: %d\r\n" % (MAX_BODY + 1), b"x" * (MAX_BODY + 1))
    assert frame(raw, MAX_BODY) is NOT_MINE
    assert frame(raw[:30], MAX_BODY) is NEED_MORE  # (the head is not there yet)


# Generated streams ----------------------------------------------------------------------------
TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NAMES = st.one_of(
    st.sampled_from([b"Authorization", b"authorization", b"Idempotency-Key", b"IDEMPOTENCY-KEY",
                     b"Content-Length", b"content-length", b"Connection", b"Host", b"host",
                     b"X-Trace", b"Content-Type", b"User-Agent", b"Server", b"ETag",
                     b"Max-Forwards", b"Content-Range", b"Content-Location"]),
    st.lists(st.sampled_from(list(TOKEN_CHARS)), min_size=1, max_size=6).map(bytes),
)
ODD_NAMES = st.one_of(st.sampled_from([b"Transfer-Encoding", b"Expect", b"Upgrade",
                                       b"Content-Encoding", b"Sec-WebSocket-Key1", b"", b"X A",
                                       b"X(A"]),
                      st.binary(max_size=6))
VALUES = st.one_of(
    st.sampled_from([b"0", b" 2 ", b"00", b"002", b"close", b"keep-alive, close", b"Bearer k",
                     b"", b"x", b"chunked"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e) | st.just("\t"),
            max_size=10).map(str.encode),
    st.integers(MAX_FIELD_BYTES - 30, MAX_FIELD_BYTES + 5).map(lambda n: b"v" * n),
)
ODD_VALUES = st.lists(st.sampled_from([b"a", b" ", b"\r", b"\n", b"\x00", b"\x7f", b"\x80",
                                       b"\xff", b"+1", b"-1", b"1 1", b"9" * 25]),
                      min_size=1, max_size=4).map(b"".join)
GOOD_LINE = st.tuples(NAMES, st.sampled_from([b":", b": ", b":\t", b":  "]), VALUES,
                      st.just(b"\r\n"))
ODD_LINE = st.tuples(NAMES | ODD_NAMES, st.sampled_from([b":", b" :", b"", b": "]),
                     VALUES | ODD_VALUES, st.sampled_from([b"\r\n", b"\n", b"\r", b" \r\n"]))
REQUEST_LINES = st.one_of(
    st.just(REQUEST_LINE),
    st.sampled_from([b"job_1", b"job_x-Y_z", b"a" * 128, b"a" * 129, b"job_1/", b"job_%41",
                     b"job_1?x=1", b""]).map(lambda i: b"GET /jobs/" + i + b" HTTP/1.1\r\n"),
    st.sampled_from([b"POST /jobs HTTP/1.0\r\n", b"POST /jobs/ HTTP/1.1\r\n",
                     b"post /jobs HTTP/1.1\r\n", b"GET /healthz HTTP/1.1\r\n",
                     b"DELETE /jobs/job_1 HTTP/1.1\r\n", b"POST /jobs HTTP/1.1\n",
                     b"\r\nPOST /jobs HTTP/1.1\r\n"]),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request, often the lane's, often hostile: a request line, header lines (most
    well formed; a Host and a Content-Length most of the time, a filler of up to 150
    lines now and then) and a body."""
    line = draw(st.one_of(st.just(REQUEST_LINE), st.just(REQUEST_LINE), REQUEST_LINES))
    fields = draw(st.lists(st.one_of(*[GOOD_LINE] * 6, ODD_LINE), max_size=5))
    lines = [name + sep + value + end for name, sep, value, end in fields]
    body = draw(st.binary(max_size=8))
    if draw(st.integers(0, 9)):
        lines.insert(draw(st.integers(0, len(lines))), b"Host: h\r\n")
    if draw(st.integers(0, 9)):
        length = draw(st.sampled_from([len(body), len(body), 0, MAX_BODY + 1]))
        lines.append(b"Content-Length: %d\r\n" % length)
    if not draw(st.integers(0, 9)):
        lines.extend([b"X-Fill: f\r\n"] * draw(st.integers(MAX_HEADERS - 8, MAX_HEADERS + 20)))
    return line + b"".join(lines) + b"\r\n" + body


@st.composite
def split(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), parts=st.lists(requests(), min_size=1, max_size=4))
def test_what_the_lane_takes_aiohttp_reads_the_same_way_however_it_arrives(
        data: st.DataObject, parts: list[bytes]) -> None:
    stream = b"".join(parts)
    chunks = data.draw(split(stream))
    taken, verdict = lane_reads(chunks)
    assert (taken, verdict) == lane_reads([stream]), "the split changed what the lane did"
    for raw, request in taken:
        check_taken(raw, request)
    assert sum(len(raw) for raw, _ in taken) <= len(stream)


@pytest.mark.parametrize(("some_taken", "verdict"), [(True, NOT_MINE), (True, NEED_MORE),
                                                     (False, NOT_MINE)])
def test_the_generator_reaches_both_verdicts_with_and_without_taken_requests(
        some_taken: bool, verdict: Verdict) -> None:
    """(So that the property above is not vacuous.)"""
    def outcome(parts: list[bytes]) -> bool:
        taken, stopped = lane_reads([b"".join(parts)])
        return bool(taken) is some_taken and stopped is verdict

    find(st.lists(requests(), min_size=1, max_size=3), outcome,
         settings=settings(max_examples=5000, database=None, deadline=None))


def chunks_of(raw: bytes, size: int) -> Iterator[bytes]:
    return (raw[i:i + size] for i in range(0, len(raw), size))


def test_byte_by_byte_is_the_same_as_at_once() -> None:
    one = post(b"Host: x\r\nContent-Length: 2\r\n", b"{}")
    stream = one + b"GET /jobs/job_1 HTTP/1.1\r\nHost: x\r\n\r\n" + one + b"GET /healthz"
    taken, verdict = lane_reads(list(chunks_of(stream, 1)))
    assert (taken, verdict) == lane_reads([stream])
    assert len(taken) == 3 and verdict is NOT_MINE


def test_reading_a_head_takes_time_in_proportion_to_its_size() -> None:
    """One long run of token bytes (no colon) in a 16 KiB head: searched for header lines
    in the whole head, it took seconds (quadratic); read line by line, well under one."""
    head = b"a" * (MAX_HEAD_BYTES - 100) + b"\r\n"
    started = time.perf_counter()
    assert read_head(head) is None
    assert frame(post(b"Host: x\r\n" + head), MAX_BODY) is NOT_MINE
    assert time.perf_counter() - started < 0.25


@pytest.mark.parametrize(("buf", "ready"), [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", False),         # its head is still arriving
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"DELETE /jobs/x HTTP/1.1\r\nHost: x\r\n\r\n{", True),
    (b"x" * (MAX_HEAD_BYTES - 1), False),
    (b"x" * MAX_HEAD_BYTES, True),                                # more than the lane reads
    (b"\x16\x03\x01\x02\x00", True),                              # TLS: no request at all
    (b"\x00", True), (b" GET", True), (b"\xffGET", True),
    (b"\r\nGET /", False),                                        # (an empty line first is allowed)
])
def test_when_a_connection_that_is_not_the_lanes_goes_to_aiohttp(buf: bytes, ready: bool) -> None:
    assert ready_to_hand_over(buf) is ready
