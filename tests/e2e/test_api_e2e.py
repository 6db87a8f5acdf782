"""The API of a real ``jobd serve`` (uvloop): POST /jobs on the fast lane and the other
endpoints on aiohttp, mixed on one kept-alive connection, in turn and pipelined."""

from __future__ import annotations

import http.client
import json
import socket


def _post(conn: http.client.HTTPConnection, key: str, api_key: str, tenant: str) -> tuple[int, dict]:
    body = json.dumps({"tenantId": tenant, "type": "noop", "payload": {"k": key}})
    conn.request("POST", "/jobs", body, {"Authorization": f"Bearer {api_key}",
                                         "Idempotency-Key": key,
                                         "Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_one_connection_mixes_the_fast_lane_and_aiohttp(make_env):
    env = make_env()
    env.daemon.start()
    client = env.client
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    try:
        status, created = _post(conn, "a", client.api_key, client.tenant_id)
        assert status == 201
        sock = conn.sock
        conn.request("GET", f"/jobs/{created['jobId']}",
                     headers={"Authorization": f"Bearer {client.api_key}"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["jobId"] == created["jobId"]
        status, again = _post(conn, "b", client.api_key, client.tenant_id)
        assert status == 201 and again["jobId"] != created["jobId"]
        status, replay = _post(conn, "a", client.api_key, client.tenant_id)
        assert status == 201 and replay["jobId"] == created["jobId"]
        assert conn.sock is sock  # all on the one connection
    finally:
        conn.close()
    for job_id in (created["jobId"], again["jobId"]):
        client.wait_status(job_id, "succeeded")


def test_pipelined_requests_on_the_real_daemon(make_env):
    env = make_env()
    env.daemon.start()
    client = env.client

    def post(key: str) -> bytes:
        body = json.dumps({"tenantId": client.tenant_id, "type": "noop", "payload": {}}).encode()
        return (f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {client.api_key}\r\n"
                f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    with socket.create_connection(("127.0.0.1", env.port), timeout=10) as sock:
        sock.sendall(post("p1") + post("p2") + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     + post("p3"))
        reader = sock.makefile("rb")
        answers = [_read_answer(reader) for _ in range(4)]
    assert [status for status, _ in answers] == [201, 201, 200, 201]
    ids = [json.loads(body)["jobId"] for status, body in answers if status == 201]
    assert len(set(ids)) == 3
    for job_id in ids:
        client.wait_status(job_id, "succeeded")


def _read_answer(reader) -> tuple[int, bytes]:
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, reader.read(length)
