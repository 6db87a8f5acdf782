"""The ``http`` job type against hostile targets: whatever a target answers, an attempt
costs at most the bounds of :mod:`jobd.outbound` and fails (retryably) at once past them."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from jobd.handlers.http import HttpRequestError, HttpTimeoutError, run_http
from jobd.outbound import BoundedResponseHandler, client_session
from tests.handlers.test_http_handler import make_ctx, payload
from tests.peers import BOUNDARIES, REFUSED_HEADS, Hostile, hostile_server


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    async with hostile_server() as h:
        yield h


@pytest.fixture(params=["daemon's session", "own session"])
async def session(request: pytest.FixtureRequest) -> AsyncIterator[aiohttp.ClientSession | None]:
    """As the daemon runs it (one session for every job), and without one."""
    if request.param == "own session":
        yield None
        return
    made = client_session(allow_private=True)
    yield made
    await made.close()


@pytest.mark.parametrize(("path", "reason"), sorted(REFUSED_HEADS.items()))
async def test_a_head_past_its_bounds_fails_the_attempt_at_once(hostile, session, path,
                                                                reason) -> None:
    started = time.monotonic()
    job = payload(url=hostile.url(path), method="get", timeoutSeconds=10)
    with pytest.raises(HttpRequestError, match=re.escape(reason)) as raised:
        await run_http(job, make_ctx(http=session))
    assert time.monotonic() - started < 2
    assert not isinstance(raised.value, HttpTimeoutError)


@pytest.mark.parametrize(("path", "body"), [("/chunk-ext", ""), ("/trailer", "ok"),
                                            ("/big-body", "a" * 512)])
async def test_a_body_past_its_bound_ends_there_and_only_an_excerpt_is_kept(
        hostile, session, path, body) -> None:
    started = time.monotonic()
    job = payload(url=hostile.url(path), method="get", timeoutSeconds=10)
    assert await run_http(job, make_ctx(http=session)) == {"status": 200, "body": body}
    assert time.monotonic() - started < 2


async def test_a_head_that_drips_in_times_out(hostile) -> None:
    cpu_before = time.process_time()
    with pytest.raises(HttpTimeoutError, match=re.escape("timed out after 0.5s")):
        await run_http(payload(url=hostile.url("/drip"), timeoutSeconds=0.5), make_ctx())
    assert time.process_time() - cpu_before < 0.3


@pytest.mark.parametrize(("answer", "refused"), BOUNDARIES)
async def test_the_bounds_are_those_of_the_webhook_client(answer, refused) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    try:
        if refused is None:
            result = await run_http(payload(url=url, method="get"), make_ctx())
            assert result == {"status": 200, "body": "ok"}
        else:
            with pytest.raises(HttpRequestError, match=re.escape(refused)):
                await run_http(payload(url=url, method="get"), make_ctx())
    finally:
        server.close()


async def test_every_connection_of_the_session_is_bounded(hostile) -> None:
    """aiohttp has no public hook for its protocol class: this fails if the one used
    stops working."""
    async with (client_session(allow_private=True) as session,
                session.get(hostile.url("/big-body")) as resp):
        assert resp.status == 200
        assert resp.connection is not None
        assert isinstance(resp.connection.protocol, BoundedResponseHandler)
