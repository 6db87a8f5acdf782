"""The fast lane itself: which requests it serves, hand-over to aiohttp on the same
connection, pipelining, framing it refuses, closing. (Every other API test also runs
through the lane: see the ``api`` fixture.)"""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest

from jobd.api.fastlane import FastLane
from tests.api.conftest import JOB_ID, Api, exchange, read_answer

pytestmark = pytest.mark.parametrize("api", ["fastlane"], indirect=True)


def lane_of(api: Api) -> FastLane:
    assert api.lane is not None
    return api.lane


def port_of(api: Api) -> int:
    return api.port


def post_bytes(api: Api, key: str, *, extra: str = "", body: bytes | None = None) -> bytes:
    body = orjson.dumps(api.body()) if body is None else body
    return (f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.key}\r\n"
            f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def get_bytes(api: Api, job_id: str, *, extra: str = "") -> bytes:
    return (f"GET /jobs/{job_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.key}\r\n"
            f"{extra}\r\n").encode()


async def test_post_and_get_jobs_are_served_by_the_lane_and_the_rest_handed_to_aiohttp(
        api: Api) -> None:
    lane = lane_of(api)
    created = await api.post_job()
    assert created.status == 201 and JOB_ID.match(created.json["jobId"])
    got = await api.get_job(created.json["jobId"])  # the same kept-alive connection
    assert got.status == 200 and got.json["jobId"] == created.json["jobId"]
    assert (lane.served, lane.handed_over) == (2, 0)
    cancelled = await api.delete_job(created.json["jobId"])  # not the lane's
    assert cancelled.status == 200 and lane.handed_over == 1
    again = await api.post_job(key="key-2")  # now on aiohttp's side of that connection
    assert again.status == 201 and lane.served == 2
    assert (await api.get_job(again.json["jobId"])).status == 200 and lane.served == 2
    assert api.job_count() == 2


async def test_pipelined_requests_are_answered_in_order(api: Api) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api))
    writer.write(post_bytes(api, "p1") + post_bytes(api, "p2") + post_bytes(api, "p1")
                 + get_bytes(api, "job_nope") + post_bytes(api, "p3")
                 + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post_bytes(api, "p4"))
    answers = [await read_answer(reader) for _ in range(7)]
    writer.close()
    assert [status for status, _, _ in answers] == [201, 201, 201, 404, 201, 200, 201]
    first, second, replay = (orjson.loads(body)["jobId"] for _, _, body in answers[:3])
    assert first != second and replay == first
    assert answers[2][1]["idempotent-replayed"] == "true"
    assert orjson.loads(answers[3][2])["code"] == "not_found"
    assert (lane_of(api).served, lane_of(api).handed_over) == (5, 1)
    assert api.job_count() == 4


async def test_a_request_arriving_byte_by_byte(api: Api) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api))
    for byte in post_bytes(api, "slow"):
        writer.write(bytes([byte]))
        await writer.drain()
    status, headers, body = await read_answer(reader)
    writer.close()
    assert status == 201 and headers["location"] == f"/jobs/{orjson.loads(body)['jobId']}"
    assert lane_of(api).served == 1


@pytest.mark.parametrize("extra", [
    "Transfer-Encoding: chunked\r\n",  # (the body below is then sent chunked)
    "Expect: 100-continue\r\n",
])
async def test_framing_the_lane_does_not_take_goes_to_aiohttp(api: Api, extra: str) -> None:
    body = orjson.dumps(api.body())
    if "chunked" in extra:
        raw = (f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.key}\r\n"
               f"Idempotency-Key: c\r\n{extra}\r\n{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    else:
        raw = post_bytes(api, "c", extra=extra, body=body)
    assert (await exchange(api, raw))[0] == 201
    assert (lane_of(api).served, lane_of(api).handed_over) == (0, 1)
    assert api.job_count() == 1


async def via_aiohttp(api: Api, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """``raw``'s answer from aiohttp: on a connection a first request handed over."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + raw)
    assert (await read_answer(reader))[0] == 200
    answer = await read_answer(reader)
    writer.close()
    return answer


async def test_the_lane_answers_get_jobs_as_aiohttp_does(api: Api) -> None:
    hooked = await api.post_job(api.body(webhookUrl="http://127.0.0.1:9/hook"), key="h")
    globex = await api.make_tenant("globex")
    other = await api.post_job({"tenantId": "globex", "type": "noop", "payload": {}}, key="g",
                               api_key=globex.api_key)
    cases = [get_bytes(api, hooked.json["jobId"]),       # 200, with its webhook's state
             get_bytes(api, other.json["jobId"]),        # another tenant's job: 404
             get_bytes(api, "job_nope"),                 # 404
             get_bytes(api, hooked.json["jobId"]).replace(api.key.encode(), b"wrong")]  # 401
    for raw in cases:
        served = lane_of(api).served
        lane = await exchange(api, raw)
        assert lane_of(api).served == served + 1
        reference = await via_aiohttp(api, raw)
        assert lane[0] == reference[0]
        assert lane[1]["content-type"] == reference[1]["content-type"]
        assert orjson.loads(lane[2]) == orjson.loads(reference[2])
    assert [(await exchange(api, raw))[0] for raw in cases] == [200, 404, 404, 401]


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /jobs/{id}?verbose=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n",
     200),
    (b"GET /jobs/{id} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n", 200),
    (b"GET /jobs/{id}/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n", 404),
    (b"GET /jobs/%6Aob_x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n", 404),
    (b"GET /jobs/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
     b"Content-Length: 2\r\n\r\n{{}}", 200),
    (b"GET /jobs/{id} HTTP/1.1\r\nAuthorization: Bearer {key}\r\nBad Header\r\n\r\n", 400),
])
async def test_get_requests_the_lane_does_not_take_go_to_aiohttp(api: Api, raw: bytes,
                                                                 status: int) -> None:
    created = await api.post_job()
    raw = raw.decode().format(id=created.json["jobId"], key=api.key).encode()
    assert (await exchange(api, raw))[0] == status
    assert (lane_of(api).served, lane_of(api).handed_over) == (1, 1)


async def test_a_malformed_request_gets_a_400_problem_from_aiohttp(api: Api) -> None:
    raw = b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nBad Header\r\n\r\n{}"
    status, headers, body = await exchange(api, raw)
    assert (status, headers["content-type"]) == (400, "application/problem+json")
    assert orjson.loads(body)["code"] == "malformed_request" and b"Bad Header" not in body
    assert (lane_of(api).served, lane_of(api).handed_over) == (0, 1)
    assert api.job_count() == 0


async def test_a_request_that_is_not_the_lanes_goes_over_once_its_head_has_arrived(
        api: Api) -> None:
    """Until then the lane holds the connection (and times it out: test_connections.py)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    for _ in range(20):
        await asyncio.sleep(0.01)
        assert lane_of(api).handed_over == 0
    writer.write(b"\r\n")
    assert (await read_answer(reader))[0] == 200
    assert lane_of(api).handed_over == 1
    writer.close()


async def test_connection_close_is_honoured(api: Api) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api))
    writer.write(post_bytes(api, "bye", extra="Connection: close\r\n"))
    status, headers, _ = await read_answer(reader)
    assert status == 201 and headers.get("connection") == "close", (headers, lane_of(api).served)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()


async def test_an_error_answer_keeps_the_connection(api: Api) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api))
    writer.write(post_bytes(api, "bad", body=b'{"type": 1}') + post_bytes(api, "good"))
    bad, good = await read_answer(reader), await read_answer(reader)
    writer.close()
    assert bad[0] == 400 and bad[1]["content-type"] == "application/problem+json"
    assert bad[1]["ratelimit-limit"] == "1000"
    assert good[0] == 201 and lane_of(api).served == 2


async def test_many_pipelined_refusals_are_all_answered_in_order(api: Api) -> None:
    """Refusals are answered at once, without a task: 2,000 of them pipelined on one
    connection (then a good request) must not nest one call per request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api))
    bad = post_bytes(api, "bad").replace(api.key.encode(), b"jobd_sk_not-a-key")  # 401
    writer.write(bad * 2000 + post_bytes(api, "good"))
    answers = [await read_answer(reader) for _ in range(2001)]
    writer.close()
    assert [status for status, _, _ in answers] == [401] * 2000 + [201]
    assert lane_of(api).served == 2001 and lane_of(api).handed_over == 0


async def test_a_client_that_leaves_mid_request_leaves_nothing_behind(api: Api) -> None:
    lane = lane_of(api)
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(api))
    writer.write(post_bytes(api, "gone")[:-5])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if not lane.connections:
            break
        await asyncio.sleep(0.01)
    assert not lane.connections and api.job_count() == 0


async def test_idle_connections_are_closed_and_busy_ones_are_not(api: Api) -> None:
    lane = lane_of(api)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api))
    writer.write(post_bytes(api, "k"))
    await read_answer(reader)
    lane.close_idle(idle_s=3600)
    assert len(lane.connections) == 1  # idle, but not for an hour
    lane.close_idle(idle_s=0)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_client_that_does_not_read_its_answers_stops_the_lane(api: Api) -> None:
    lane = lane_of(api)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api))
    writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(post_bytes(api, "warm"))
    await read_answer(reader)
    [conn] = lane.connections
    server_side = conn._transport
    assert server_side is not None
    server_side.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server_side.set_write_buffer_limits(high=2048)
    bad = post_bytes(api, "x", body=b'{"type": 1}')  # each answer: a 400 of ~400 bytes
    writer.write(bad * 2000)
    served = -1
    for _ in range(200):  # wait until the lane stops taking requests
        if lane.served == served:
            break
        served = lane.served
        await asyncio.sleep(0.02)
    assert 1 < lane.served < 2001  # stopped: the answers wait for the client to read
    statuses = [(await read_answer(reader))[0] for _ in range(2000)]
    assert set(statuses) <= {400, 429} and lane.served == 2001  # (429 past the burst)
    writer.close()
