"""The fast lane reads a request's header lines itself (``_read_head``). What it takes
must be a request llhttp parses too, read the same way; everything else it leaves to
aiohttp (``_read_head`` gives None). Checked on fixed cases and on generated heads."""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobd.api.fastlane import _read_head

REQUEST_LINE = b"POST /jobs HTTP/1.1\r\n"


@dataclass
class Llhttp:
    """What llhttp makes of one whole request."""

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

    def first(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


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


def request(lines: bytes, body: bytes = b"") -> bytes:
    return REQUEST_LINE + lines + b"\r\n" + body


def test_an_ordinary_head_is_read() -> None:
    head = _read_head(b"Host: x\r\nAuthorization: Bearer k1\r\nContent-Type: application/json\r\n"
                      b"Idempotency-Key:  key-1\t\r\nContent-Length: 2\r\n")
    assert head is not None
    assert (head.length, head.authorization, head.idempotency_key, head.keep_alive) == (
        2, "Bearer k1", "key-1", True)


def test_no_headers_at_all() -> None:
    head = _read_head(b"")
    assert head is not None and head.length is None and head.authorization == ""
    assert head.idempotency_key is None


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
    b"Content-Length: 2\r\nContent-Length: 2\r\n",
    b"Content-Length: +2\r\n",
    b"Content-Length: 2 2\r\n",
    b"Content-Length:\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"transfer-encoding: identity\r\n",
    b"Content-Encoding: gzip\r\n",
    b"Expect: 100-continue\r\n",
    b"Upgrade: websocket\r\n",
    b"Host: x\r\nX-A: b",                         # a line without its CRLF
])
def test_heads_the_lane_leaves_to_aiohttp(lines: bytes) -> None:
    assert _read_head(lines) is None


@pytest.mark.parametrize(("value", "keep_alive"), [
    (b"close", False), (b"Close", False), (b"keep-alive, close", False), (b" close ", False),
    (b"keep-alive", True), (b"closed", True), (b"upgrade", True),
])
def test_connection_close_as_llhttp_reads_it(value: bytes, keep_alive: bool) -> None:
    lines = b"Content-Length: 0\r\nConnection: " + value + b"\r\n"
    head = _read_head(lines)
    seen = llhttp(request(lines))
    assert head is not None and seen is not None
    assert head.keep_alive is keep_alive is seen.keep_alive


def test_the_first_of_repeated_headers_counts() -> None:
    head = _read_head(b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n"
                      b"Idempotency-Key: one\r\nidempotency-key: two\r\n")
    assert head is not None and (head.authorization, head.idempotency_key) == ("Bearer a", "one")


# Generated heads: most lines well formed (names from a small set, so that the ones the
# lane reads come up often, values of the field-value alphabet), some with one of the
# bytes or shapes the grammar is about.
TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
GOOD_NAMES = st.one_of(
    st.sampled_from([b"Authorization", b"authorization", b"Idempotency-Key", b"IDEMPOTENCY-KEY",
                     b"Content-Length", b"content-length", b"Connection", b"Host", b"X-Trace"]),
    st.lists(st.sampled_from(list(TOKEN_CHARS)), min_size=1, max_size=6).map(bytes),
)
ODD_NAMES = st.one_of(st.sampled_from([b"Transfer-Encoding", b"Expect", b"Upgrade",
                                       b"Content-Encoding", b"", b"X A", b"X(A"]),
                      st.binary(max_size=6))
GOOD_VALUES = st.one_of(
    st.sampled_from([b"2", b" 2 ", b"0", b"close", b"keep-alive, close", b"Bearer k", b""]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e) | st.just("\t"),
            max_size=10).map(str.encode),
)
ODD_VALUES = st.lists(st.sampled_from([b"a", b" ", b"\r", b"\n", b"\x00", b"\x7f", b"\x80",
                                       b"\xff", b"+1", b"1 1", b"chunked"]),
                      min_size=1, max_size=4).map(b"".join)
GOOD_LINE = st.tuples(GOOD_NAMES, st.sampled_from([b":", b": ", b":\t", b":  "]), GOOD_VALUES,
                      st.just(b"\r\n"))
ODD_LINE = st.tuples(GOOD_NAMES | ODD_NAMES, st.sampled_from([b":", b" :", b"", b": "]),
                     GOOD_VALUES | ODD_VALUES, st.sampled_from([b"\r\n", b"\n", b"\r", b" \r\n"]))

CONNECTION_LINE = st.tuples(st.sampled_from([b"Connection", b"connection"]), st.just(b": "),
                            st.sampled_from([b"close", b"Close ", b"keep-alive", b"x, close",
                                             b"closed", b"upgrade"]), st.just(b"\r\n"))


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.one_of(*[GOOD_LINE] * 8, CONNECTION_LINE, ODD_LINE), max_size=6))
    return b"".join(name + sep + value + end for name, sep, value, end in lines)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=heads(), body=st.binary(max_size=4))
def test_what_the_lane_takes_llhttp_reads_the_same_way(lines: bytes, body: bytes) -> None:
    head = _read_head(lines)
    if head is None:
        return  # aiohttp decides (its answers: tests/api/test_fastlane.py)
    body = body[:head.length or 0].ljust(head.length or 0, b"x")
    seen = llhttp(request(lines, body))
    assert seen is not None, "the lane took a head llhttp refuses"
    assert seen.body == body
    assert seen.keep_alive is head.keep_alive

    def stripped(name: bytes) -> bytes | None:
        value = seen.first(name)
        return None if value is None else value.strip(b" \t")

    assert (stripped(b"authorization") or b"").decode() == head.authorization
    key = stripped(b"idempotency-key")
    assert (None if key is None else key.decode()) == head.idempotency_key
    length = stripped(b"content-length")
    assert (None if length is None else int(length)) == head.length
    for refused in (b"transfer-encoding", b"content-encoding", b"expect", b"upgrade"):
        assert seen.first(refused) is None
