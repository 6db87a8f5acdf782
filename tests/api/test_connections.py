"""Connections as a bounded resource, on both paths: at most ``server.max_connections``
open (the one idle longest makes room, or a new one gets a 503), a request that does not
arrive within ``server.read_timeout`` and a connection idle for ``server.idle_timeout``
closed, whether the fast lane or aiohttp holds it. The daemon's own file limit:
``tests/e2e/test_connection_limits_e2e.py``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobd.api.fastlane import FastLane
from jobd.config import Config
from tests.api.conftest import PROBLEM, Api, LogLines, read_answer
from tests.conftest import Databases, make_config

LIMIT = 4
SLOW = {"read_timeout": 60, "idle_timeout": 60}   # (nothing times out during the test)


@pytest.fixture
def config(tmp_path: Path, request: pytest.FixtureRequest, database: Databases) -> Config:
    server = {"max_connections": LIMIT, "read_timeout": 0.5, "idle_timeout": 0.5,
              **getattr(request, "param", {})}
    return make_config(tmp_path, server=server)


def lane_of(api: Api) -> FastLane:
    assert api.lane is not None
    return api.lane


def post_bytes(api: Api, key: str) -> bytes:
    body = orjson.dumps(api.body())
    return (f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.key}\r\n"
            f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def connect(api: Api) -> AsyncIterator[Callable[..., Awaitable[Conn]]]:
    opened: list[asyncio.StreamWriter] = []

    async def open_one(send: bytes = b"") -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        opened.append(writer)
        if send:
            writer.write(send)
            await writer.drain()
        return reader, writer

    yield open_one
    for writer in opened:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not).
    (A reset counts as closed: the client may have written after the server's FIN.)"""
    try:
        return await asyncio.wait_for(reader.read(), timeout_s)
    except ConnectionResetError:
        return b""


async def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def until_counted(api: Api, n: int) -> None:
    await wait_until(lambda: len(lane_of(api).connections) == n)


# The limit ----------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [SLOW], indirect=True)
async def test_at_the_limit_the_connection_idle_longest_makes_room(
        api: Api, connect: Callable[..., Awaitable[Conn]], log_lines: LogLines) -> None:
    idle = [await connect() for _ in range(LIMIT)]
    await until_counted(api, LIMIT)
    reader, _ = await connect(post_bytes(api, "late"))  # the oldest idle one goes
    status, _, _ = await read_answer(reader)
    assert status == 201
    assert await closed_by_server(idle[0][0]) == b""
    for _ in range(20):  # a flood of new connections: each closes the one idle longest
        await connect()
    await wait_until(lambda: lane_of(api).connections.evicted >= 21)
    assert len(lane_of(api).connections) <= LIMIT
    warnings = [line for line in log_lines.at_least(logging.WARNING) if "limit" in line]
    assert len(warnings) == 1, warnings  # one line, not one per connection
    assert "limit 4)" in warnings[0]


@pytest.mark.parametrize("config", [SLOW], indirect=True)
async def test_at_the_limit_with_none_idle_a_new_connection_gets_a_503(
        api: Api, connect: Callable[..., Awaitable[Conn]]) -> None:
    """Connections whose request is being answered (here: aiohttp reading a chunked body
    that has not all arrived) are never closed to make room."""
    head = (f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.key}\r\n"
            "Idempotency-Key: slow\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n").encode()
    busy = [await connect(head) for _ in range(LIMIT)]
    await wait_until(lambda: len(lane_of(api).connections) == LIMIT
                     and all(c.idle_since() is None for c in lane_of(api).connections))
    reader, _ = await connect(post_bytes(api, "refused"))
    status, headers, body = await read_answer(reader)
    assert (status, headers["content-type"]) == (503, PROBLEM)
    assert orjson.loads(body)["code"] == "too_many_connections"
    assert headers["retry-after"] == "1"
    assert await closed_by_server(reader) == b""
    lane_of(api).connections.sweep(time.monotonic() + 3600)  # busy: not timed out either
    assert len(lane_of(api).connections) == LIMIT
    busy[0][1].write(b"0\r\n\r\n")  # the body ends: that request is answered after all
    status, _, _ = await read_answer(busy[0][0])
    assert status == 400  # ({} is not a job; what matters is that it was answered)


# Timeouts -----------------------------------------------------------------------------------
@pytest.mark.parametrize("send", [b"", b"POST /jobs HTTP/1.1\r\nHost: x\r\n", b"GET /heal",
                                  b"GET /healthz HTTP/1.1\r\nHo"])
async def test_a_first_request_that_does_not_arrive_in_time_is_closed(
        api: Api, connect: Callable[..., Awaitable[Conn]], send: bytes) -> None:
    reader, _ = await connect(send)
    started = time.monotonic()
    assert await closed_by_server(reader) == b""
    assert 0.4 < time.monotonic() - started < 3  # read_timeout 0.5 (and one sweep)
    assert lane_of(api).connections.timed_out == 1


async def test_a_body_that_does_not_arrive_in_time_is_closed(
        api: Api, connect: Callable[..., Awaitable[Conn]]) -> None:
    """The lane's sweep closes it; aiohttp (``server.fast_lane = false``) answers 408."""
    reader, _ = await connect(post_bytes(api, "cut")[:-5])
    answer = await closed_by_server(reader)
    if not api.config.server.fast_lane:
        assert answer.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in answer
    assert api.job_count() == 0


async def test_a_later_request_that_trickles_in_is_closed_too(
        api: Api, connect: Callable[..., Awaitable[Conn]]) -> None:
    reader, writer = await connect(post_bytes(api, "first"))
    assert (await read_answer(reader))[0] == 201
    writer.write(b"POST /jobs HTTP/1.1\r\n")
    for _ in range(100):
        if reader.at_eof():
            break
        writer.write(b"X-Slow: 1\r\n")
        await asyncio.sleep(0.05)
    assert await closed_by_server(reader) == b""


async def test_a_kept_alive_connection_is_closed_after_idle_timeout_on_both_paths(
        api: Api, connect: Callable[..., Awaitable[Conn]]) -> None:
    """Held by the lane after a POST /jobs; by aiohttp after a request the lane hands over
    (its own keep-alive timeout was 3,630 s)."""
    lane_reader, _ = await connect(post_bytes(api, "k"))
    aiohttp_reader, _ = await connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    for reader in (lane_reader, aiohttp_reader):
        assert (await read_answer(reader))[0] in (200, 201)
    started = time.monotonic()
    for reader in (lane_reader, aiohttp_reader):
        assert await closed_by_server(reader) == b""
    assert time.monotonic() - started < 3  # idle_timeout 0.5
    await until_counted(api, 0)


@pytest.mark.parametrize("config", [{"read_timeout": 20, "idle_timeout": 60}], indirect=True)
async def test_the_sweep_closes_what_is_overdue_and_nothing_else(
        api: Api, connect: Callable[..., Awaitable[Conn]]) -> None:
    """The sweep's rules, with its clock moved instead of waiting. (A connection aiohttp
    holds is closed once two sweeps idle_timeout apart saw it idle, and by aiohttp's own
    keep-alive timer.)"""
    connections = lane_of(api).connections
    served, _ = await connect(post_bytes(api, "a"))
    assert (await read_answer(served))[0] == 201
    await connect(b"POST /jobs HTTP/1.1\r\n")   # a first request, part of it
    await until_counted(api, 2)
    now = time.monotonic()
    connections.sweep(now + 10)
    assert len(connections) == 2            # neither is overdue yet
    connections.sweep(now + 21)
    assert len(connections) == 1            # the first request, 20 s after connecting
    connections.sweep(now + 50)
    assert len(connections) == 1            # the kept-alive one, idle less than 60 s
    connections.sweep(now + 200)
    assert len(connections) == 0            # and now more
    assert connections.timed_out == 2


# The switch -----------------------------------------------------------------------------------
async def test_fast_lane_false_hands_every_connection_to_aiohttp(api: Api) -> None:
    lane = lane_of(api)
    created = await api.post_job()
    assert created.status == 201
    assert (await api.get_job(created.json["jobId"])).status == 200
    if api.config.server.fast_lane:
        assert (lane.served, lane.handed_over) == (2, 0)
    else:
        assert lane.served == 0 and lane.handed_over >= 1
        assert "Server" in (await api.request("GET", "/healthz", auth=False)).headers


def test_the_switch_and_the_limits_are_config_keys(tmp_path: Path) -> None:
    config = make_config(tmp_path, server={"fast_lane": False, "max_connections": 10,
                                           "read_timeout": 1.5, "idle_timeout": 30})
    server: Any = config.server
    assert (server.fast_lane, server.max_connections, server.read_timeout,
            server.idle_timeout) == (False, 10, 1.5, 30)
