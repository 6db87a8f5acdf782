"""Input from anyone, authenticated or not, never makes a 500: every refusal is a 4xx
problem+json, and nothing is logged above warning (a log line per hostile request would
be a log flood). On both paths (the ``api`` fixture)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from tests.api.conftest import PROBLEM, Api, LogLines, exchange, read_answer


def post_raw(api: Api, *, auth: bytes | None = None, extra: bytes = b"", body: bytes = b"{}",
             length: bytes | None = None, key: bytes = b"k-raw") -> bytes:
    auth = api.key.encode() if auth is None else auth
    length = str(len(body)).encode() if length is None else length
    return (b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + auth
            + b"\r\nIdempotency-Key: " + key + b"\r\nContent-Length: " + length + b"\r\n"
            + extra + b"\r\n" + body)


def job_body(api: Api, **fields: Any) -> bytes:
    return orjson.dumps(api.body(**fields))


def quiet(log_lines: LogLines) -> None:
    loud = log_lines.at_least(logging.WARNING)
    assert not loud, loud


def problem(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> dict[str, Any]:
    got, headers, raw = answer
    assert (got, headers.get("content-type")) == (status, PROBLEM), answer
    body = orjson.loads(raw)
    assert (body["status"], body["code"]) == (status, code), body
    return dict(body)


@pytest.mark.parametrize("auth", [b"jobd_sk_\xff", b"\x80", b"jobd_sk_ok\xe9", b"\xc3\xa9t\xc3\xa9"])
async def test_an_api_key_with_bytes_over_0x7f_is_a_401(api: Api, log_lines: LogLines,
                                                        auth: bytes) -> None:
    for raw in (post_raw(api, auth=auth, body=job_body(api)),
                b"GET /jobs/job_x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + auth + b"\r\n\r\n",
                b"DELETE /jobs/job_x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + auth
                + b"\r\n\r\n"):
        problem(await exchange(api, raw), 401, "unauthorized")
    assert api.job_count() == 0
    quiet(log_lines)
    assert api.key in log_lines.secrets  # (the fixture checks they are in no log line)


@pytest.mark.parametrize("header", [b"Content-Type: application/json\xff", b"X-Anything: \xfe\xff",
                                    b"Accept: text/html\xe9", b"User-Agent: caf\xc3\xa9",
                                    b"Idempotency-Key-2: \x80"])
async def test_other_headers_with_such_bytes_do_not_matter(api: Api, log_lines: LogLines,
                                                           header: bytes) -> None:
    status, _, _ = await exchange(api, post_raw(api, extra=header + b"\r\n", body=job_body(api)))
    assert status == 201
    quiet(log_lines)


async def test_an_idempotency_key_with_such_bytes_is_a_400(api: Api, log_lines: LogLines) -> None:
    answer = await exchange(api, post_raw(api, key=b"k-\xff", body=job_body(api)))
    problem(answer, 400, "missing_idempotency_key")
    quiet(log_lines)


@pytest.mark.parametrize(("path", "status"), [(b"/jobs/job_%ff", 404), (b"/jobs/job_%ed%a0%80", 404),
                                              (b"/jobs/job_\xff", 400), (b"/jobs/%00", 404)])
async def test_odd_job_ids_are_a_404_or_a_400(api: Api, log_lines: LogLines, path: bytes,
                                              status: int) -> None:
    for method in (b"GET", b"DELETE"):
        raw = (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
               + api.key.encode() + b"\r\n\r\n")
        got, headers, _ = await exchange(api, raw)
        assert (got, headers.get("content-type")) == (status, PROBLEM)
    quiet(log_lines)


def nested(depth: int) -> bytes:
    """A JSON object nesting arrays ``depth`` levels deep (itself the first level)."""
    return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}" if depth > 1 else b"{}"


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return 0
    return 1 + max((depth_of(v) for v in value), default=0)


def test_nested_is_as_deep_as_it_says() -> None:
    for depth in (1, 2, 3, 100, 253):
        assert depth_of(orjson.loads(nested(depth))) == depth


@pytest.mark.parametrize("depth", [100, 101, 250, 254, 500, 1022, 1030])
async def test_a_deeply_nested_body_is_a_400_naming_its_field(api: Api, log_lines: LogLines,
                                                              depth: int) -> None:
    """orjson reads 1,024 levels but writes 254, and the runtime's parser reads 200: a
    body nested deeper than 100 levels is refused at once (it was a 500 from 255 up, and a
    job that failed for good when it ran from about 200)."""
    r = await api.post_job(raw=b'{"tenantId": "acme", "type": "noop", "payload": '
                           + nested(depth - 1) + b"}")  # (the body itself is one level)
    if depth <= 100:
        assert r.status == 201, r.raw
        job = await api.get_job(r.json["jobId"])
        assert job.status == 200
    else:
        fields = r.error_fields()
        assert fields == (["body"] if depth > 1024 else ["payload"])
    quiet(log_lines)


@pytest.mark.parametrize("field", ["tenantId", "priority", "webhookUrl", "unknown"])
async def test_deep_nesting_in_any_field_names_that_field(api: Api, log_lines: LogLines,
                                                          field: str) -> None:
    deep = b"[" * 300 + b"]" * 300  # (a repeated key: the last one counts)
    r = await api.post_job(raw=job_body(api)[:-1] + b', "' + field.encode() + b'": ' + deep + b"}")
    assert r.error_fields() == [field]
    quiet(log_lines)


@pytest.mark.parametrize(("field", "value"), [
    ("priority", b"1180591620717411303424"),          # past int64 (orjson: a float)
    ("priority", b"9223372036854775808"),             # past int64 (orjson: an int)
    ("priority", b"-9223372036854775809"),
    ("maxAttempts", b"18446744073709551615"),
    ("timeoutSeconds", b"1e308"),
    ("timeoutSeconds", b"-0.0"),
    ("priority", b"1.5"),
    ("maxAttempts", b"true"),
])
async def test_absurd_numbers_are_a_400_naming_the_field(api: Api, log_lines: LogLines,
                                                         field: str, value: bytes) -> None:
    r = await api.post_job(raw=b'{"tenantId": "acme", "type": "noop", "payload": {}, "'
                           + field.encode() + b'": ' + value + b"}")
    assert r.error_fields() == [field]
    assert api.job_count() == 0
    quiet(log_lines)


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
@pytest.mark.parametrize("template", [b'"timeoutSeconds": %s, "payload": {}',
                                      b'"payload": {"x": %s}'])
async def test_nan_and_infinity_are_a_400(api: Api, value: bytes, template: bytes) -> None:
    r = await api.post_job(raw=b'{"tenantId": "acme", "type": "noop", ' + template % value + b"}")
    assert r.error_fields() == ["body"]


async def test_a_payload_integer_past_int64_is_kept_as_sent(api: Api) -> None:
    r = await api.post_job(raw=b'{"tenantId": "acme", "type": "noop", '
                           b'"payload": {"n": 18446744073709551615}}')
    assert r.status == 201
    [row] = api.job_rows()
    assert orjson.loads(row["payload"]) == {"n": 18446744073709551615}


@pytest.mark.parametrize("run_at", [
    "9999-12-31T23:59:59-01:00",       # 10000-01-01T00:59:59Z
    "9999-12-31T23:59:59.9999Z",       # rounds to 10000-01-01T00:00:00.000Z
    "10000-01-01T00:00:00Z",
    "+10000-01-01T00:00:00Z",
    "2025-13-01T00:00:00Z",
    "2025-01-01T24:00:00Z",
    "2025-01-01T00:00:00+24:00",
    "2025-01-01T00:00:60Z",
])
async def test_a_run_at_that_cannot_print_with_four_digits_is_a_400(api: Api, run_at: str) -> None:
    r = await api.post_job(api.body(runAt=run_at))
    assert r.error_fields() == ["runAt"]
    assert api.job_count() == 0


@pytest.mark.parametrize(("run_at", "shown"), [
    ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
    ("9999-12-31T23:59:59+00:00", "9999-12-31T23:59:59.000Z"),
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),   # Go's zero time.Time
    ("0001-01-01T00:30:00+01:00", "0000-12-31T23:30:00.000Z"),  # (RFC 3339 has a year 0)
    ("0999-06-01T12:00:00+01:00", "0999-06-01T11:00:00.000Z"),
])
async def test_the_edges_of_run_at_are_kept_and_shown_as_rfc_3339(api: Api, run_at: str,
                                                                  shown: str) -> None:
    r = await api.post_job(api.body(runAt=run_at))
    assert r.status == 201, r.raw
    job = (await api.get_job(r.json["jobId"])).json
    assert job["runAt"] == shown
    assert job["nextRunAt"] in (None, shown)


@pytest.mark.parametrize("length", [b"+2", b"-1", b"0x2", b"2 2", b" ", b"1" * 5000,
                                    b"99999999999999999999"])
async def test_a_content_length_that_is_not_a_number_we_can_take_is_a_400(
        api: Api, log_lines: LogLines, length: bytes) -> None:
    answer = await exchange(api, post_raw(api, body=b"{}", length=length))
    body = problem(answer, 400, "malformed_request")
    assert api.key not in answer[2].decode()
    assert set(body) == {"type", "title", "status", "detail", "code"}
    quiet(log_lines)


async def test_a_content_length_with_leading_zeros_is_read_as_a_number(api: Api) -> None:
    body = job_body(api)
    for zeros in (1, 30, 5000):
        raw = post_raw(api, body=body, length=b"0" * zeros + str(len(body)).encode(),
                       key=b"zeros-%d" % zeros)
        assert (await exchange(api, raw))[0] == 201
    assert api.job_count() == 3


@pytest.mark.parametrize("raw", [
    b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nBad Header\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\x00\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: x\r\nHost: y\r\nAuthorization: Bearer {key}\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nAuthorization: Bearer {key}\r\nContent-Length: 2\r\n\r\n{{}}",
    b"POST /jobs HTTP/9.9\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n",
    b"POST /jobs\xff HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,
    b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nX-Long: "
    + b"a" * 9000 + b"\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
    + b"X-N: n\r\n" * 200 + b"\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nIdempotency-Key: c\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n",
    b"GET /jobs/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
    b"Sec-WebSocket-Key1: 1\r\n\r\n",
])
async def test_a_request_aiohttp_cannot_parse_is_a_problem_that_does_not_echo_it(
        api: Api, log_lines: LogLines, raw: bytes) -> None:
    raw = raw.replace(b"{key}", api.key.encode()).replace(b"{{}}", b"{}")
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(raw)
    answer = await read_answer(reader)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
    writer.close()
    body = problem(answer, 400, "malformed_request")
    assert api.key not in answer[2].decode() and b"Bearer" not in answer[2]
    assert "\\x" not in body["detail"] and "b'" not in body["detail"]
    assert api.job_count() == 0
    quiet(log_lines)
