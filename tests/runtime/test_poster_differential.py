"""The webhook client's answer handling against llhttp's own reading of the same bytes.

Answers are generated (interim answers, header lines of any size, bodies framed by
Content-Length, by chunks or by the end of the connection), cut at random points and fed
to one of the poster's connections. An answer within the bounds of :mod:`jobd.outbound`
must come out as httptools (llhttp) reads it whole: the same status, the same body
excerpt. One past a bound must be refused with that bound's reason, however it was cut.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobd.outbound import (
    HEAD_TOO_LARGE,
    MAX_HEAD_BYTES,
    MAX_HEADER_LINES,
    MAX_INTERIM_ANSWERS,
    TOO_MANY_INTERIM,
    TOO_MANY_LINES,
    AnswerRefused,
)
from jobd.runtime.poster import _Connection
from tests.peers import BOUNDARIES


class Transport:
    """What a connection needs of its transport; closing stops delivery, as a real one."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@dataclass
class Generated:
    answer: bytes
    heads: list[bytes]  # of the interim answers, then the final one
    lines: list[int]    # header lines of each head
    unframed: bool      # the body ends with the connection

    def refusals(self) -> set[str]:
        """The reasons a bounded reader may give (empty: it must accept)."""
        reasons = set()
        if sum(len(head) for head in self.heads) > MAX_HEAD_BYTES:
            reasons.add(HEAD_TOO_LARGE)
        if max(self.lines) > MAX_HEADER_LINES:
            reasons.add(TOO_MANY_LINES)
        if len(self.heads) - 1 > MAX_INTERIM_ANSWERS:
            reasons.add(TOO_MANY_INTERIM)
        return reasons


def header_lines(draw: st.DrawFn, count: int, big: bool) -> bytes:
    size = st.integers(0, 9000 if big else 40)
    return b"".join(b"X-%d: %s\r\n" % (i, b"v" * draw(size)) for i in range(count))


@st.composite
def answers(draw: st.DrawFn) -> Generated:
    big = draw(st.booleans())  # a few lines of up to 9,000 bytes, or many short ones
    many = st.integers(0, 12 if big else MAX_HEADER_LINES + 3)
    heads, lines = [], []
    for _ in range(draw(st.integers(0, MAX_INTERIM_ANSWERS + 2))):
        count = draw(many)
        status = draw(st.sampled_from([b"100 Continue", b"102 Processing", b"103 Early Hints"]))
        heads.append(b"HTTP/1.1 " + status + b"\r\n" + header_lines(draw, count, big) + b"\r\n")
        lines.append(count)
    status = draw(st.sampled_from([200, 202, 204, 299, 302, 404, 500, 503]))
    body = draw(st.binary(max_size=3000))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if status == 204:
        body, framing = b"", "length"
    count = draw(many)
    head = b"HTTP/1.1 %d Whatever\r\n" % status + header_lines(draw, count, big)
    if framing == "length":
        head += b"Content-Length: %d\r\n" % len(body)
        wire = body
    elif framing == "chunked":
        head += b"Transfer-Encoding: chunked\r\n"
        sizes = draw(st.lists(st.integers(1, 700), max_size=8))
        wire, rest = b"", body
        for size in sizes:
            piece, rest = rest[:size], rest[size:]
            if piece:
                wire += b"%x\r\n%s\r\n" % (len(piece), piece)
        if rest:
            wire += b"%x\r\n%s\r\n" % (len(rest), rest)
        wire += b"0\r\n\r\n"
    else:
        head += b"Connection: close\r\n"
        wire = body
    head += b"\r\n"
    lines.append(count + 1)
    heads.append(head)
    return Generated(b"".join(heads) + wire, heads, lines, unframed=framing == "close")


class Whole:
    """httptools, fed the whole answer at once, unbounded: the reference."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body = b""
        self.complete = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = self.status >= 200


def reference(answer: bytes) -> tuple[int, bytes]:
    whole = Whole()
    whole.parser.feed_data(answer)
    assert whole.complete or whole.status >= 200  # an unframed body ends with the connection
    return whole.status, whole.body


@dataclass
class Outcome:
    result: tuple[int, bytes] | None = None
    refused: str | None = None
    error: BaseException | None = None
    pieces_fed: int = 0
    notes: list[str] = field(default_factory=list)


def through_the_poster(answer: bytes, cuts: list[int], read_limit: int) -> Outcome:
    async def scenario() -> Outcome:
        conn = _Connection()
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        waiter = conn.request(b"POST / HTTP/1.1\r\n\r\n", read_limit)
        outcome = Outcome()
        bounds = sorted({0, *cuts, len(answer)})
        for start, end in itertools.pairwise(bounds):
            if transport.closed:
                break
            conn.data_received(answer[start:end])
            outcome.pieces_fed += 1
        if not waiter.done():  # the receiver closes the connection
            conn.connection_lost(None)
        try:
            outcome.result = waiter.result()
        except AnswerRefused as exc:
            outcome.refused = str(exc)
        except Exception as exc:
            outcome.error = exc
        return outcome

    return asyncio.run(scenario())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated=answers(), data=st.data(), read_limit=st.integers(0, 2048))
def test_the_poster_reads_what_llhttp_reads_or_refuses_for_a_bound(
        generated: Generated, data: st.DataObject, read_limit: int) -> None:
    size = len(generated.answer)
    cuts = data.draw(st.lists(st.integers(0, size), max_size=12))
    outcome = through_the_poster(generated.answer, cuts, read_limit)
    reasons = generated.refusals()
    if reasons:
        assert outcome.refused in reasons, (outcome, reasons)
        return
    assert outcome.error is None and outcome.refused is None, outcome
    status, body = reference(generated.answer)
    assert outcome.result == (status, body[:read_limit])


@pytest.mark.parametrize(("answer", "refused"), BOUNDARIES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_each_bound_is_exact_however_the_answer_is_cut(answer: bytes, refused: str | None,
                                                       data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(answer)), max_size=6))
    outcome = through_the_poster(answer, cuts, 10)
    if refused is None:
        assert outcome.result == (200, b"ok"), outcome
    else:
        assert outcome.refused == refused, outcome
