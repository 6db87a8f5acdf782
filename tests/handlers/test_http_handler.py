"""The ``http`` job type against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from jobd.config import load_config
from jobd.handlers.base import JobContext, PermanentError, Services
from jobd.handlers.http import (
    HTTP,
    HttpPayload,
    HttpRequestError,
    HttpStatusError,
    check_http_payload,
    run_http,
    validate_submit,
)
from jobd.netguard import BlockedAddress, guarded_connector


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


def make_app(rec: Recorder) -> web.Application:
    async def record(request: web.Request) -> dict[str, Any]:
        entry = {
            "path": request.path,
            "method": request.method,
            "headers": dict(request.headers),
            "body": await request.read(),
        }
        rec.requests.append(entry)
        return entry

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"hello": "world"})

    async def fail(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=500, text="boom\nsomething broke " + "x" * 1000)

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/target")

    async def target(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="target reached")

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(5)
        return web.Response(text="too late")

    async def big(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="é" * 100_000)

    async def echo(request: web.Request) -> web.Response:
        entry = await record(request)
        return web.json_response({"method": entry["method"],
                                  "body": entry["body"].decode()})

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/fail", fail)
    app.router.add_route("*", "/redirect", redirect)
    app.router.add_route("*", "/target", target)
    app.router.add_get("/slow", slow)
    app.router.add_get("/big", big)
    app.router.add_route("*", "/echo", echo)
    return app


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[TestServer, Recorder]]:
    rec = Recorder()
    srv = TestServer(make_app(rec), host="127.0.0.1", port=0)
    await srv.start_server()
    try:
        yield srv, rec
    finally:
        await srv.close()


def url_of(srv: TestServer, path: str) -> str:
    return f"http://127.0.0.1:{srv.port}{path}"


def make_ctx(allow_private: bool = True, http: aiohttp.ClientSession | None = None) -> JobContext:
    env = {"JOBD_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true" if allow_private else "false"}
    services = Services(config=load_config(environ=env), http=http)
    return JobContext(job_id="job-1", tenant_id="t1", attempt=1, max_attempts=3,
                      services=services)


def payload(**data: Any) -> HttpPayload:
    return HttpPayload.model_validate(data)


def error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in err["loc"]) for err in exc.errors()}


# --- handler ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_2xx_returns_status_and_body_excerpt(server: tuple[TestServer, Recorder]) -> None:
    srv, rec = server
    result = await run_http(payload(url=url_of(srv, "/ok"), method="get"), make_ctx())
    assert result == {"status": 200, "body": '{"hello": "world"}'}
    assert rec.paths() == ["/ok"]


@pytest.mark.asyncio
async def test_sends_method_headers_and_json(server: tuple[TestServer, Recorder]) -> None:
    srv, rec = server
    p = payload(url=url_of(srv, "/echo"), method="put",
                headers={"X-Token": "abc", "X-Other": "1"}, json={"a": [1, 2]})
    result = await run_http(p, make_ctx())
    assert result["status"] == 200
    (req,) = rec.requests
    assert req["method"] == "PUT"
    assert req["headers"]["X-Token"] == "abc"
    assert req["headers"]["X-Other"] == "1"
    assert req["headers"]["Content-Type"].startswith("application/json")
    assert req["body"] == b'{"a": [1, 2]}'


@pytest.mark.asyncio
async def test_default_method_is_post_with_raw_body(server: tuple[TestServer, Recorder]) -> None:
    srv, rec = server
    result = await run_http(payload(url=url_of(srv, "/echo"), body="plain text"), make_ctx())
    assert result["status"] == 200
    (req,) = rec.requests
    assert req["method"] == "POST"
    assert req["body"] == b"plain text"


@pytest.mark.asyncio
async def test_uses_shared_session_when_given(server: tuple[TestServer, Recorder]) -> None:
    srv, _ = server
    async with aiohttp.ClientSession(connector=guarded_connector(allow_private=True),
                                     trust_env=False) as session:
        result = await run_http(payload(url=url_of(srv, "/ok"), method="GET"),
                                make_ctx(http=session))
        assert not session.closed
    assert result["status"] == 200


@pytest.mark.asyncio
async def test_body_excerpt_is_bounded(server: tuple[TestServer, Recorder]) -> None:
    srv, _ = server
    result = await run_http(payload(url=url_of(srv, "/big"), method="GET"), make_ctx())
    assert result["status"] == 200
    assert 0 < len(result["body"]) <= 512
    assert set(result["body"]) <= {"é", "\ufffd"}


@pytest.mark.asyncio
async def test_500_raises_http_status_error(server: tuple[TestServer, Recorder]) -> None:
    srv, _ = server
    with pytest.raises(HttpStatusError) as info:
        await run_http(payload(url=url_of(srv, "/fail?token=secret"), method="GET"), make_ctx())
    message = str(info.value)
    assert info.value.status == 500
    assert message.startswith(f"HTTP 500 from {url_of(srv, '/fail')}: boom something broke")
    assert "secret" not in message
    assert len(message) < 300
    assert not isinstance(info.value, PermanentError)


@pytest.mark.asyncio
async def test_redirect_is_not_followed(server: tuple[TestServer, Recorder]) -> None:
    srv, rec = server
    with pytest.raises(HttpStatusError) as info:
        await run_http(payload(url=url_of(srv, "/redirect")), make_ctx())
    assert info.value.status == 302
    assert "302" in str(info.value)
    assert rec.paths() == ["/redirect"]  # /target never hit


@pytest.mark.asyncio
async def test_timeout(server: tuple[TestServer, Recorder]) -> None:
    srv, _ = server
    p = payload(url=url_of(srv, "/slow"), method="GET", timeoutSeconds=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncio.TimeoutError) as info:
        await run_http(p, make_ctx())
    assert loop.time() - started < 3
    assert "timed out" in str(info.value)


@pytest.mark.asyncio
async def test_private_address_refused_when_not_allowed(
        server: tuple[TestServer, Recorder]) -> None:
    srv, rec = server
    with pytest.raises(PermanentError) as info:
        await run_http(payload(url=url_of(srv, "/ok"), method="GET"),
                       make_ctx(allow_private=False))
    assert "loopback" in str(info.value)
    assert rec.requests == []


@pytest.mark.asyncio
async def test_connection_error_is_short_and_retryable(unused_tcp_port: int) -> None:
    p = payload(url=f"http://user:pw-secret@127.0.0.1:{unused_tcp_port}/x?key=secret",
                headers={"X-Api-Key": "hdr-secret"}, method="GET")
    with pytest.raises(HttpRequestError) as info:
        await run_http(p, make_ctx())
    message = str(info.value)
    assert message.startswith("ClientConnectorError: ")
    assert len(message) <= 300
    assert "secret" not in message
    assert not isinstance(info.value, PermanentError)


# --- submit-time check -------------------------------------------------------


def test_check_http_payload() -> None:
    p = payload(url="http://127.0.0.1:8080/hook")
    check_http_payload(p, allow_private=True)
    with pytest.raises(BlockedAddress):
        check_http_payload(p, allow_private=False)
    with pytest.raises(BlockedAddress):
        validate_submit(p, make_ctx(allow_private=False).services.config)
    validate_submit(p, make_ctx(allow_private=True).services.config)
    check_http_payload(payload(url="https://93.184.215.14/"), allow_private=False)


def test_job_type() -> None:
    assert HTTP.name == "http"
    assert HTTP.payload_model is HttpPayload
    assert HTTP.handler is run_http
    assert HTTP.submit_check is validate_submit


# --- payload validation ------------------------------------------------------


def test_payload_defaults_and_aliases() -> None:
    p = payload(url="https://example.com/x", method="patch", json={"k": 1})
    assert p.method == "PATCH"
    assert p.json_body == {"k": 1}
    assert p.headers == {}
    assert p.body is None
    assert p.timeoutSeconds is None
    assert HttpPayload(url="http://example.com", json_body=[1]).json_body == [1]
    assert p.model_dump(by_alias=True)["json"] == {"k": 1}


@pytest.mark.parametrize(("data", "field"), [
    ({"url": "http://example.com", "bogus": 1}, "bogus"),
    ({"url": "http://example.com", "method": "FETCH"}, "method"),
    ({"url": "ftp://example.com/file"}, "url"),
    ({"url": "/relative/path"}, "url"),
    ({"url": "http:///nohost"}, "url"),
    ({}, "url"),
    ({"url": "http://example.com", "timeoutSeconds": 0}, "timeoutSeconds"),
    ({"url": "http://example.com", "timeoutSeconds": 3601}, "timeoutSeconds"),
    ({"url": "http://example.com", "headers": {"X-A": "v\r\nInjected: 1"}}, "headers"),
    ({"url": "http://example.com", "headers": {"Bad Name": "v"}}, "headers"),
    ({"url": "http://u:p@example.com", "headers": {"authorization": "x"}}, ""),
])
def test_payload_validation_names_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        HttpPayload.model_validate(data)
    assert field in error_fields(info.value)


def test_json_and_body_are_exclusive() -> None:
    with pytest.raises(ValidationError) as info:
        HttpPayload.model_validate({"url": "http://example.com", "json": {}, "body": "x"})
    message = str(info.value)
    assert "json" in message and "body" in message


def test_validation_error_does_not_echo_header_values() -> None:
    with pytest.raises(ValidationError) as info:
        HttpPayload.model_validate(
            {"url": "http://example.com", "headers": {"Authorization": "s3cret\n"}})
    assert "s3cret" not in str(info.value)
    assert "Authorization" in str(info.value)


@pytest.mark.asyncio
async def test_request_aiohttp_refuses_to_build_is_permanent(unused_tcp_port: int) -> None:
    # Bypasses validation: aiohttp itself raises ValueError before any I/O.
    p = HttpPayload.model_construct(
        url=f"http://u:p@127.0.0.1:{unused_tcp_port}/", method="GET",
        headers={"Authorization": "Bearer hdr-secret"}, json_body=None, body=None,
        timeoutSeconds=None)
    with pytest.raises(PermanentError) as info:
        await run_http(p, make_ctx())
    assert "hdr-secret" not in str(info.value)
