"""A real ``jobd serve``, logging at debug, given malformed requests that carry a tenant's
API key: each gets a 4xx problem+json that does not quote the request, the log has no
line above info for any of them, and the key appears nowhere in the log."""

from __future__ import annotations

import json
import socket

import pytest

from tests.support import request


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            lengths = [line for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")]
            if lengths and len(body) >= int(lengths[0].split(b":")[1]):
                break
        return answer


def _hostile(key: bytes) -> list[bytes]:
    def post(auth: bytes = b"Bearer " + key, extra: bytes = b"", body: bytes = b"{}",
             length: bytes | None = None) -> bytes:
        length = str(len(body)).encode() if length is None else length
        return (b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth
                + b"\r\nIdempotency-Key: h\r\nContent-Length: " + length + b"\r\n" + extra
                + b"\r\n" + body)

    deep = b'{"tenantId": "acme", "type": "noop", "payload": {"a": ' + b"[" * 500 + b"]" * 500 + b"}}"
    return [
        post(auth=b"Bearer " + key + b"\x00"),                # NUL: aiohttp quoted the line
        post(auth=b"Bearer " + key + b"\xff"),                # a 500 and a traceback each
        post(extra=b"Bad Header\r\n"),
        post(extra=b"Host: again\r\n"),
        post(extra=b"X-Long: " + b"a" * 9000 + b"\r\n"),
        post(length=b"1" * 5000),                              # int() refused it in the lane
        post(length=b"+2"),
        post(body=deep),                                       # a 500: orjson writes 254 levels
        b"POST /jobs HTTP/9.9\r\nAuthorization: Bearer " + key + b"\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + key + b"\r\n\r\n",
        b"GET /jobs/job_\xff HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key + b"\r\n\r\n",
    ]


@pytest.mark.parametrize("fast_lane", [True, False])
def test_malformed_requests_get_a_problem_and_leave_no_trace_of_the_key(make_env, fast_lane,
                                                                        no_secret_in_logs):
    env = make_env(logging={"level": "debug"}) if fast_lane else make_env(
        logging={"level": "debug"}, server={"fast_lane": False})
    env.daemon.start()
    assert {env.client.api_key, env.webhook_secret} <= no_secret_in_logs  # (checked after it)
    key = env.client.api_key.encode()
    for raw in _hostile(key):
        answer = _exchange(env.port, raw)
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        assert 400 <= status < 500, (raw[:80], answer[:300])
        assert b"content-type: application/problem+json" in head.lower(), answer[:300]
        assert json.loads(body)["status"] == status
        assert key not in answer
    status, _, _ = env.client.submit("noop", key="still-fine")
    assert status == 201
    assert request("GET", env.daemon.base + "/healthz")[0] == 200
    assert env.daemon.terminate() == 0
    log = env.daemon.log()
    assert env.client.api_key not in log and env.webhook_secret not in log
    loud = [line for line in log.splitlines()
            if any(level in line for level in (" WARNING ", " ERROR ", " CRITICAL "))
            and "allow_private_networks" not in line]
    assert not loud, loud
    assert "Traceback" not in log
