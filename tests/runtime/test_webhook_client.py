"""``webhooks.fast_client``: the hand-written poster and aiohttp's client, side by side on
the same receivers, must behave alike -- the request a receiver sees, keep-alive, interim
answers, timeouts, address checks, and the bounds on an answer to the byte."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import AsyncIterator

import pytest

from jobd import netguard
from jobd.outbound import AnswerRefused
from jobd.runtime.poster import AnswerError, Poster
from jobd.runtime.webhook_client import SessionPoster, WebhookClient, webhook_client
from tests.peers import (
    BOUNDARIES,
    REFUSED_HEADS,
    Hostile,
    Server,
    hostile_server,
    ok,
    scripted_server,
)
from tests.runtime.conftest import until


@pytest.fixture(params=[True, False], ids=["fast", "aiohttp"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[WebhookClient]:
    made = webhook_client(fast=request.param, allow_private=True)
    yield made
    await made.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with scripted_server() as srv:
        yield srv


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    async with hostile_server() as h:
        yield h


async def post(client: WebhookClient, url: str, *, timeout_s: float = 5,
               read_limit: int = 1024) -> tuple[int, bytes]:
    return await client.post(url, b'{"a":1}', [("Content-Type", "application/json"),
                                               ("User-Agent", "jobd/test"), ("X-Id", "m1")],
                             timeout_s=timeout_s, read_limit=read_limit)


def test_the_setting_picks_the_client() -> None:
    assert isinstance(webhook_client(fast=True, allow_private=False), Poster)
    assert isinstance(webhook_client(fast=False, allow_private=False), SessionPoster)


async def test_the_receiver_sees_the_same_request(client, server) -> None:
    url = server.url("/in?a=1").replace("http://", "http://user:p%40ss@")
    assert await post(client, url) == (200, b"ok")
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /in?a=1 HTTP/1.1" and body == b'{"a":1}'
    token = base64.b64encode(b"user:p@ss").decode()
    for line in (f"Host: 127.0.0.1:{server.port}", f"Authorization: Basic {token}",
                 "Content-Type: application/json", "User-Agent: jobd/test", "X-Id: m1",
                 "Content-Length: 7"):
        assert line.encode() in lines, (line, lines)


async def test_keep_alive_interim_answers_and_no_redirects(client, server) -> None:
    server.answer = lambda n: (b"HTTP/1.1 100 Continue\r\n\r\n" +
                               ok(b"moved", "Location: http://127.0.0.1:1/x\r\n").replace(
                                   b"200 OK", b"302 Found"))
    for _ in range(3):
        assert await post(client, server.url()) == (302, b"moved")
    assert server.connections == 1 and len(server.requests) == 3


async def test_a_switch_of_protocols_is_a_status_like_any_other_and_logs_nothing(
        client, server, caplog) -> None:
    server.answer = lambda n: (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               b"Connection: Upgrade\r\n\r\nnot http any more")
    with caplog.at_level(logging.WARNING):
        assert await post(client, server.url()) == (101, b"")
        assert await post(client, server.url()) == (101, b"")
        await asyncio.sleep(0.05)
    assert server.connections == 2  # not reused
    assert caplog.records == []


async def test_a_connection_closed_while_idle_is_replaced(client, server) -> None:
    await post(client, server.url())
    server.drop_idle_connections()
    await asyncio.sleep(0.05)
    assert await post(client, server.url()) == (200, b"ok")
    assert server.connections == 2


async def test_a_receiver_that_hangs_up_unanswered_is_an_error(client, server) -> None:
    server.answer = lambda n: None
    with pytest.raises(AnswerError, match="closed before an answer"):
        await post(client, server.url())


async def test_a_silent_receiver_times_out(client, server) -> None:
    server.answer = lambda n: b""
    started = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        await post(client, server.url("/secret?token=s3cr3t"), timeout_s=0.3)
    assert 0.25 < time.monotonic() - started < 1.5
    assert "s3cr3t" not in str(raised.value)


async def test_private_addresses_are_refused(server) -> None:
    for fast in (True, False):
        strict = webhook_client(fast=fast, allow_private=False)
        try:
            with pytest.raises(Exception) as raised:
                await post(strict, f"http://localhost:{server.port}/hook")
            seen: BaseException | None = raised.value
            while seen is not None and not isinstance(seen, netguard.BlockedAddress):
                seen = seen.__cause__ or seen.__context__
            assert seen is not None, raised.value
        finally:
            await strict.close()
    assert server.connections == 0


@pytest.mark.parametrize(("answer", "refused"), BOUNDARIES)
async def test_the_bounds_are_the_same_to_the_byte(client, server, answer, refused) -> None:
    server.answer = lambda n: answer
    if refused is None:
        assert await post(client, server.url()) == (200, b"ok")
    else:
        with pytest.raises(AnswerRefused, match=re.escape(refused)):
            await post(client, server.url())


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.parametrize(("path", "reason"), sorted(REFUSED_HEADS.items()))
async def test_a_head_past_its_bounds_fails_at_once_and_drops_the_connection(
        client, hostile, path, reason) -> None:
    rss_before, started = rss_mb(), time.monotonic()
    with pytest.raises(AnswerRefused, match=re.escape(reason)):
        await post(client, hostile.url(path), timeout_s=10)
    assert time.monotonic() - started < 2
    await until(lambda: hostile.hung_up == 1, "the connection was kept")
    assert rss_mb() - rss_before < 32


@pytest.mark.parametrize(("path", "excerpt"), [("/chunk-ext", b""), ("/trailer", b"ok"),
                                               ("/big-body", b"a" * 100)])
async def test_a_body_past_its_bound_ends_the_answer_there(client, hostile, path,
                                                          excerpt) -> None:
    started = time.monotonic()
    assert await post(client, hostile.url(path), timeout_s=10, read_limit=100) == (200, excerpt)
    assert time.monotonic() - started < 2
    await until(lambda: hostile.hung_up == 1, "the connection was kept")


async def test_a_head_that_drips_in_times_out_without_costing_the_loop(client, hostile) -> None:
    cpu_before, started = time.process_time(), time.monotonic()
    with pytest.raises(TimeoutError):
        await post(client, hostile.url("/drip"), timeout_s=0.5)
    assert 0.45 < time.monotonic() - started < 1.5
    assert time.process_time() - cpu_before < 0.3


async def test_an_idle_connection_is_closed_after_its_idle_time(server) -> None:
    for client in (Poster(allow_private=True, max_idle_s=0.3),
                   SessionPoster(allow_private=True, max_idle_s=0.3)):
        try:
            await post(client, server.url())
            sent = time.monotonic()
            writer = server.writers[-1]
            await until(writer.is_closing, "the idle connection was not closed", timeout_s=3)
            assert 0.25 < time.monotonic() - sent < 1.3, type(client)
        finally:
            await client.close()
