"""Fixtures for the HTTP API: the real aiohttp app over a real store (``store``: the
backend the test config names).

``api`` wires ``create_app(ApiContext(...))`` and its listening socket exactly as the
daemon does, but with a :class:`FakeClock` and recorders in place of the
scheduler/worker hooks.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from jobd import credentials
from jobd.api.app import create_app
from jobd.api.context import ApiContext
from jobd.api.fastlane import FastLane
from jobd.clock import FakeClock
from jobd.config import Config
from jobd.handlers.registry import build_registry
from jobd.models import NewTenant
from jobd.store.backend import Backend
from tests.conftest import T0, NewTenantFactory
from tests.stores import stored_rows

# The API clock starts a little after the tenants were created (at T0).
NOW0 = T0 + 1000.0
PROBLEM = "application/problem+json"
JOB_ID = re.compile(r"^job_[A-Za-z0-9_-]{16,}$")
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


def parse_time(text: str) -> float:
    """Unix seconds of an RFC 3339 ``...Z`` string (asserts the format)."""
    assert isinstance(text, str) and RFC3339_Z.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


async def eventually(attempt: Callable[[], Awaitable[Reply]], status: int,
                     timeout_s: float = 2.0) -> Reply:
    """Repeat ``attempt`` until it answers ``status``.

    SPEC §1 lets the daemon take up to its poll interval (0.05 s in tests) to notice a
    change made with the CLI, so the API may serve a tenant's old limits that long.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await attempt()
        if reply.status == status or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(0.01)


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw)

    def problem(self, status: int, code: str) -> dict[str, Any]:
        """Assert an RFC 9457 problem with this status and code; return its body."""
        assert self.status == status, (self.status, self.raw)
        assert self.content_type == PROBLEM, self.headers
        body = self.json
        assert body["status"] == status
        assert body["code"] == code, body
        assert isinstance(body["type"], str) and body["type"]
        assert isinstance(body["title"], str) and body["title"]
        assert isinstance(body["detail"], str)
        return body

    def error_fields(self) -> list[str]:
        body = self.problem(400, "validation_error")
        assert isinstance(body.get("errors"), list) and body["errors"], body
        return [e["field"] for e in body["errors"]]


@dataclass
class Api:
    client: aiohttp.ClientSession
    ctx: ApiContext
    store: Backend
    config: Config
    clock: FakeClock
    tenant: NewTenant
    make_tenant: NewTenantFactory
    created: list[float] = field(default_factory=list)       # on_job_created(due)
    cancels: list[str] = field(default_factory=list)         # on_cancel_requested(job_id)
    webhooks_queued: list[bool] = field(default_factory=list)  # on_webhook_queued()
    rate_limited: list[str] = field(default_factory=list)    # on_rate_limited(tenant_id)
    lane: FastLane | None = None  # the listening socket's protocol factory

    @property
    def port(self) -> int:
        assert self.client._base_url is not None and self.client._base_url.port is not None
        return self.client._base_url.port

    @property
    def key(self) -> str:
        return self.tenant.api_key

    def auth(self, api_key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key or self.key}"}

    def body(self, **fields: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"tenantId": self.tenant.tenant.id, "type": "noop", "payload": {}}
        data.update(fields)
        return data

    async def post_job(self, body: Any = None, *, key: str | None = "key-1",
                       api_key: str | None = None, headers: dict[str, str] | None = None,
                       raw: Any = None, auth: bool = True) -> Reply:
        """POST /jobs. ``body`` is JSON-encoded (default: a valid noop job); ``raw`` is sent as is."""
        hdrs: dict[str, str] = {"Content-Type": "application/json"}
        if auth:
            hdrs.update(self.auth(api_key))
        if key is not None:
            hdrs["Idempotency-Key"] = key
        hdrs.update(headers or {})
        data = raw if raw is not None else orjson.dumps(self.body() if body is None else body)
        resp = await self.client.post("/jobs", data=data, headers=hdrs)
        return Reply(resp.status, resp.headers, await resp.read())

    async def request(self, method: str, path: str, *, api_key: str | None = None,
                      auth: bool = True, headers: dict[str, str] | None = None) -> Reply:
        hdrs = self.auth(api_key) if auth else {}
        hdrs.update(headers or {})
        resp = await self.client.request(method, path, headers=hdrs)
        return Reply(resp.status, resp.headers, await resp.read())

    async def get_job(self, job_id: str, **kw: Any) -> Reply:
        return await self.request("GET", f"/jobs/{job_id}", **kw)

    async def delete_job(self, job_id: str, **kw: Any) -> Reply:
        return await self.request("DELETE", f"/jobs/{job_id}", **kw)

    def job_rows(self, tenant_id: str | None = None) -> list[Mapping[str, Any]]:
        """Rows of the jobs table, read on a fresh connection (what is durably there)."""
        if tenant_id is None:
            return stored_rows(self.config.database, "SELECT * FROM jobs ORDER BY seq")
        return stored_rows(self.config.database,
                           "SELECT * FROM jobs WHERE tenant_id = ? ORDER BY seq", tenant_id)

    def job_count(self, tenant_id: str | None = None) -> int:
        return len(self.job_rows(tenant_id))


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer from a raw connection: (status, headers in lower case, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return int(lines[0].split()[1]), headers, body


async def exchange(api: Api, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a new connection; the final answer (past an interim 100)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(raw)
    answer = await read_answer(reader)
    if answer[0] == 100:  # aiohttp's interim answer to Expect
        answer = await read_answer(reader)
    writer.close()
    return answer


class LogLines(logging.Handler):
    """Every log record of a test, at every level, as the text a log would show."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []
        self.secrets: list[str] = []  # API keys and webhook secrets made meanwhile
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.texts.append(self.format(record))

    def at_least(self, level: int) -> list[str]:
        return [text for record, text in zip(self.records, self.texts, strict=True)
                if record.levelno >= level]


@pytest.fixture(autouse=True)
def log_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogLines]:
    """Every API test: no API key or webhook secret made during it is in any of its log
    records, at any level (tracebacks included)."""
    lines = LogLines()
    secrets = lines.secrets

    def recorded(make: Callable[[], str]) -> Callable[[], str]:
        def make_and_record() -> str:
            secret = make()
            secrets.append(secret)
            return secret
        return make_and_record

    monkeypatch.setattr(credentials, "new_api_key", recorded(credentials.new_api_key))
    monkeypatch.setattr(credentials, "new_webhook_secret",
                        recorded(credentials.new_webhook_secret))
    root = logging.getLogger()
    level = root.level
    root.addHandler(lines)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(lines)
        root.setLevel(level)
    leaked = [(secret[:12], text[:300]) for secret in secrets for text in lines.texts
              if secret in text]
    assert not leaked, f"a key or secret made by this test is in its log: {leaked}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW0)


@pytest.fixture(params=["aiohttp", "fastlane"])
async def api(request: pytest.FixtureRequest, config: Config, store: Backend,
              new_tenant: NewTenantFactory, clock: FakeClock) -> AsyncIterator[Api]:
    """Every API test runs twice, served as the daemon serves it: with
    ``server.fast_lane = false`` (aiohttp answers every request), and with the fast lane
    (POST /jobs and GET /jobs/{id} by the lane, the rest handed to aiohttp)."""
    server = config.server.model_copy(update={"fast_lane": request.param == "fastlane"})
    config = config.model_copy(update={"server": server})
    tenant = await new_tenant("acme")
    holder: dict[str, Api] = {}
    ctx = ApiContext(
        config=config, store=store, registry=build_registry(use_entry_points=False), clock=clock,
        on_job_created=lambda job, _started: holder["api"].created.append(job.run_at),
        on_cancel_requested=lambda job_id: holder["api"].cancels.append(job_id),
        on_webhook_queued=lambda: holder["api"].webhooks_queued.append(True),
        on_rate_limited=lambda tenant_id: holder["api"].rate_limited.append(tenant_id),
    )
    ctx.ready = True
    runner = web.AppRunner(create_app(ctx), access_log=None, handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    lane = FastLane(ctx, fallback=runner.server)
    listener = await asyncio.get_running_loop().create_server(lane, "127.0.0.1", 0)
    sweeper = asyncio.create_task(lane.run_idle_sweeper())
    port = listener.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
        api = holder["api"] = Api(client=session, ctx=ctx, store=store, config=config,
                                  clock=clock, tenant=tenant, make_tenant=new_tenant, lane=lane)
        yield api
    sweeper.cancel()
    listener.close()
    await lane.shutdown(1)
    await runner.cleanup()
