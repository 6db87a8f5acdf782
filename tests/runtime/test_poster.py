"""The webhook client against real servers on 127.0.0.1 that answer from a script:
keep-alive, interim answers, bodies of every framing, stale connections, timeouts,
address checks, TLS, the idle timer. (What both webhook clients share, the bounds on an
answer included, is in test_webhook_client.py.)"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme
import uvloop

from jobd import netguard
from jobd.outbound import MAX_BODY_WIRE_BYTES
from jobd.runtime.poster import AnswerError, Poster
from tests.peers import Server, ok, scripted_server
from tests.runtime.conftest import until


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with scripted_server() as srv:
        yield srv


@pytest.fixture
async def poster() -> AsyncIterator[Poster]:
    p = Poster(allow_private=True)
    yield p
    await p.close()


async def post(poster: Poster, url: str, body: bytes = b'{"a":1}', *, timeout_s: float = 5,
               read_limit: int = 1024) -> tuple[int, bytes]:
    return await poster.post(url, body, [("Content-Type", "application/json"), ("X-Id", "m1")],
                             timeout_s=timeout_s, read_limit=read_limit)


async def test_the_request_carries_host_path_query_headers_and_body(poster, server) -> None:
    assert await post(poster, server.url("/in/hook?a=1&b=%20"), b'{"x": 2}') == (200, b"ok")
    [raw] = server.requests
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /in/hook?a=1&b=%20 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"Content-Type: application/json" in lines and b"X-Id: m1" in lines
    assert b"Content-Length: 8" in lines and body == b'{"x": 2}'
    assert not any(line.lower().startswith(b"authorization") for line in lines)


async def test_credentials_in_the_url_become_basic_auth(poster, server) -> None:
    url = server.url().replace("http://", "http://user:p%40ss@")
    await post(poster, url)
    token = base64.b64encode(b"user:p@ss").decode()
    assert f"Authorization: Basic {token}".encode() in server.requests[0]
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in server.requests[0]


async def test_connections_are_kept_alive_and_reused(poster, server) -> None:
    for _ in range(5):
        assert (await post(poster, server.url()))[0] == 200
    assert len(server.requests) == 5
    assert server.connections == 1


async def test_concurrent_posts_use_separate_connections(poster, server) -> None:
    results = await asyncio.gather(*[post(poster, server.url()) for _ in range(4)])
    assert [status for status, _ in results] == [200] * 4
    assert server.connections == 4
    await asyncio.gather(*[post(poster, server.url()) for _ in range(4)])
    assert server.connections == 4  # all four were put back and reused


async def test_connection_close_is_not_reused(poster, server) -> None:
    server.answer = lambda n: ok(extra="Connection: close\r\n")
    await post(poster, server.url())
    await post(poster, server.url())
    assert server.connections == 2


async def test_an_idle_connection_past_max_idle_is_not_reused(server) -> None:
    poster = Poster(allow_private=True, max_idle_s=0)
    try:
        await post(poster, server.url())
        await post(poster, server.url())
    finally:
        await poster.close()
    assert server.connections == 2


async def test_a_connection_the_receiver_closed_while_idle_is_replaced(poster, server) -> None:
    await post(poster, server.url())
    server.drop_idle_connections()
    await asyncio.sleep(0)  # let the close reach us (or not: the resend covers both)
    assert await post(poster, server.url()) == (200, b"ok")
    assert server.connections == 2


async def test_a_reused_connection_that_hangs_up_unanswered_is_sent_again_once(
        poster, server) -> None:
    server.answer = lambda n: ok() if n == 0 else None
    assert await post(poster, server.url()) == (200, b"ok")
    assert await post(poster, server.url()) == (200, b"ok")  # on a second connection
    assert (server.connections, len(server.requests)) == (2, 3)


async def test_a_new_connection_that_hangs_up_unanswered_is_an_error(poster, server) -> None:
    server.answer = lambda n: None
    with pytest.raises(AnswerError, match="closed before an answer"):
        await post(poster, server.url())
    assert (server.connections, len(server.requests)) == (1, 1)


async def test_interim_answers_are_skipped(poster, server) -> None:
    server.answer = lambda n: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")
    assert await post(poster, server.url()) == (200, b"final")
    assert await post(poster, server.url()) == (200, b"final")
    assert server.connections == 1


async def test_a_chunked_answer_is_read_and_the_connection_kept(poster, server) -> None:
    server.answer = lambda n: (b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert await post(poster, server.url()) == (500, b"hello world")
    assert await post(poster, server.url()) == (500, b"hello world")
    assert server.connections == 1


async def test_an_answer_that_ends_with_the_connection(poster, server) -> None:
    server.close_after = True
    server.answer = lambda n: b"HTTP/1.0 202 Accepted\r\n\r\nuntil the end"
    assert await post(poster, server.url()) == (202, b"until the end")
    assert await post(poster, server.url()) == (202, b"until the end")
    assert server.connections == 2


async def test_only_read_limit_bytes_are_kept_and_a_huge_body_is_not_drained(
        poster, server) -> None:
    server.answer = lambda n: ok(b"x" * 5000)
    assert await post(poster, server.url(), read_limit=10) == (200, b"x" * 10)
    assert await post(poster, server.url(), read_limit=10) == (200, b"x" * 10)
    assert server.connections == 1  # a small body is read to its end: reusable
    server.answer = lambda n: ok(b"y" * MAX_BODY_WIRE_BYTES * 4)
    assert await post(poster, server.url(), read_limit=3) == (200, b"yyy")
    server.answer = lambda n: ok()
    await post(poster, server.url())
    await post(poster, server.url())
    assert server.connections == 2  # the one that had the huge answer was dropped


async def test_a_malformed_answer_is_an_error(poster, server) -> None:
    server.answer = lambda n: b"this is not HTTP\r\n\r\n"
    with pytest.raises(AnswerError, match="malformed"):
        await post(poster, server.url())


async def test_an_answer_cut_short_is_an_error(poster, server) -> None:
    server.close_after = True
    server.answer = lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"
    with pytest.raises(AnswerError):
        await post(poster, server.url())


async def test_a_silent_receiver_times_out_and_its_connection_is_dropped(poster, server) -> None:
    server.answer = lambda n: b""  # never answers
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await post(poster, server.url(), timeout_s=0.2)
    assert 0.15 < loop.time() - started < 2
    server.answer = lambda n: ok()
    assert (await post(poster, server.url()))[0] == 200
    assert server.connections == 2


async def test_nothing_listening_is_an_os_error(poster, server) -> None:
    url = server.url()
    with pytest.raises(OSError):
        await post(poster, url.replace(str(server.port), "1"))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "0x7f.1"])
async def test_private_addresses_are_refused_before_connecting(server, host) -> None:
    poster = Poster(allow_private=False)
    try:
        with pytest.raises(netguard.BlockedAddress):
            await post(poster, f"http://{host}:{server.port}/hook")
    finally:
        await poster.close()
    assert server.connections == 0


async def test_tls_with_a_trusted_certificate(tmp_path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    srv = Server()
    listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0, ssl=server_ctx)
    srv.port = listener.sockets[0].getsockname()[1]
    url = f"https://localhost:{srv.port}/hook"
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    try:
        poster = Poster(allow_private=True, ssl_context=trusting)
        try:
            assert await post(poster, url) == (200, b"ok")
            assert await post(poster, url) == (200, b"ok")
        finally:
            await poster.close()
        assert srv.connections == 1
        untrusting = Poster(allow_private=True)  # the system's CAs do not know this one
        try:
            with pytest.raises(ssl.SSLError):
                await post(untrusting, url)
        finally:
            await untrusting.close()
    finally:
        listener.close()


def test_under_uvloop_as_the_daemon_runs_it() -> None:

    async def scenario() -> tuple[int, list[int]]:
        srv = Server()
        listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
        srv.port = listener.sockets[0].getsockname()[1]
        poster = Poster(allow_private=True)
        try:
            statuses = [(await post(poster, srv.url()))[0] for _ in range(3)]
            srv.answer = lambda n: b""
            with pytest.raises(TimeoutError):
                await post(poster, srv.url(), timeout_s=0.1)
            return srv.connections, statuses
        finally:
            await poster.close()
            listener.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == (1, [200, 200, 200])


async def test_a_sweep_closes_stale_idle_connections_and_forgets_their_origin(server) -> None:
    poster = Poster(allow_private=True, max_idle_s=3600)
    try:
        await asyncio.gather(*[post(poster, server.url()) for _ in range(3)])
        assert poster.idle_connections == 3
        poster.sweep()
        assert poster.idle_connections == 3  # all fresh
        server.drop_idle_connections()
        for _ in range(100):
            poster.sweep()
            if poster.idle_connections == 0:
                break
            await asyncio.sleep(0.01)  # let the closes arrive
        assert poster.idle_connections == 0 and poster._idle == {}
    finally:
        await poster.close()


async def test_a_sweep_closes_connections_idle_past_max_idle(server) -> None:
    poster = Poster(allow_private=True, max_idle_s=0)
    try:
        await post(poster, server.url())
        [conn] = [c for conns in poster._idle.values() for c in conns]
        poster.sweep()
        assert poster.idle_connections == 0 and not conn.open
    finally:
        await poster.close()


async def test_the_idle_timer_keeps_connections_in_use_and_stops_when_none_is_idle(
        server) -> None:
    poster = Poster(allow_private=True, max_idle_s=0.2)
    try:
        for _ in range(4):  # used again before it falls due: kept
            await post(poster, server.url())
            await asyncio.sleep(0.1)
        assert server.connections == 1 and poster.idle_connections == 1
        await until(lambda: poster.idle_connections == 0, "not closed once idle")
        await until(lambda: poster._sweeper is None, "the timer runs on with nothing idle")
    finally:
        await poster.close()
