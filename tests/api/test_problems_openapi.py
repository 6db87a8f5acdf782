"""/healthz, /openapi.json and the problem+json rendering of every error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobd.api.schemas import JobCreateRequest
from tests.api.conftest import PROBLEM, Api
from tests.conftest import sqlite_only

# --------------------------------------------------------------------- healthz


async def test_healthz_ok_without_auth(api: Api) -> None:
    r = await api.request("GET", "/healthz", auth=False)
    assert r.status == 200
    assert r.content_type == "application/json"
    assert r.json == {"status": "ok"}


async def test_healthz_503_until_ready(api: Api) -> None:
    api.ctx.ready = False
    r = await api.request("GET", "/healthz", auth=False)
    assert r.status == 503
    assert r.content_type == PROBLEM
    assert r.json["status"] == 503
    api.ctx.ready = True
    assert (await api.request("GET", "/healthz", auth=False)).status == 200


@sqlite_only("fails the fdatasync of SQLite's writer; PostgreSQL's disk is the server's")
async def test_a_failed_fsync_answers_503_and_makes_healthz_fail(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await api.post_job(key="before")).status == 201

    def eio(fd: int) -> None:
        raise OSError(5, "Input/output error")
    monkeypatch.setattr("jobd.store.sqlite.backend.os.fdatasync", eio)
    r = await api.post_job(key="lost")
    assert r.status == 503
    assert r.content_type == PROBLEM
    assert r.json["code"] == "store_unavailable"
    assert "sync failed" in r.json["detail"]

    monkeypatch.undo()  # the disk "comes back": still nothing is reported done
    assert (await api.post_job(key="after")).status == 503
    health = await api.request("GET", "/healthz", auth=False)
    assert health.status == 503
    assert health.json["code"] == "storage_failed"


# --------------------------------------------------------------------- OpenAPI


@pytest.fixture
async def doc(api: Api) -> dict[str, Any]:
    r = await api.request("GET", "/openapi.json", auth=False)
    assert r.status == 200
    assert r.content_type == "application/json"
    return dict(r.json)


async def test_openapi_document_shape(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    paths = doc["paths"]
    assert "post" in paths["/jobs"]
    assert {"get", "delete"} <= set(paths["/jobs/{jobId}"])
    for method in ("get", "delete"):
        params = paths["/jobs/{jobId}"][method]["parameters"]
        assert {"name": "jobId", "in": "path"}.items() <= params[0].items()
    post = paths["/jobs"]["post"]
    assert {"201", "400", "401", "409", "413", "429"} <= set(post["responses"])
    header = next(p for p in post["parameters"] if p["name"] == "Idempotency-Key")
    assert header["in"] == "header" and header["required"] is True
    assert header["schema"]["maxLength"] == 255
    assert "application/problem+json" in post["responses"]["409"]["content"]


async def test_openapi_job_create_request_schema(doc: dict[str, Any]) -> None:
    schema = doc["components"]["schemas"]["JobCreateRequest"]
    assert {"tenantId", "type", "payload"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    # The document is generated from the model that validates requests.
    assert set(props) == set(JobCreateRequest.model_fields)
    assert props["payload"]["type"] == "object"
    max_attempts = next(s for s in props["maxAttempts"].get("anyOf", [props["maxAttempts"]])
                        if s.get("type") == "integer")
    assert (max_attempts["minimum"], max_attempts["maximum"]) == (1, 100)


async def test_openapi_refs_all_resolve(doc: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    schemas = doc["components"]["schemas"]
    prefix = "#/components/schemas/"
    for ref in refs:
        assert ref.startswith(prefix), ref
        assert ref[len(prefix):] in schemas, ref
    assert {"JobCreatedResponse", "JobResponse", "Problem"} <= set(schemas)


async def test_openapi_and_healthz_need_no_auth_but_jobs_do(api: Api) -> None:
    assert (await api.request("GET", "/openapi.json", auth=False)).status == 200
    (await api.request("GET", "/jobs/job_x", auth=False)).problem(401, "unauthorized")


# -------------------------------------------------------------------- problems


@pytest.mark.parametrize("path", ["/nope", "/jobs/", "/jobs/a/b", "/openapi.yaml"])
async def test_unknown_route_is_404_problem(api: Api, path: str) -> None:
    (await api.request("GET", path)).problem(404, "not_found")


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "/jobs"), ("GET", "/jobs"), ("PATCH", "/jobs/job_x"), ("POST", "/healthz"),
    ("DELETE", "/openapi.json"),
])
async def test_wrong_method_is_405_problem(api: Api, method: str, path: str) -> None:
    r = await api.request(method, path)
    assert r.status == 405, r.raw
    assert r.content_type == PROBLEM
    assert r.json["status"] == 405
    assert api.job_count() == 0


async def test_405_keeps_allow_header(api: Api) -> None:
    r = await api.request("PUT", "/jobs")
    assert r.status == 405
    assert "POST" in r.headers.get("Allow", "")


async def test_handler_crash_is_a_500_problem_without_traceback(
        api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def explode(*_args: object, **_kw: object) -> None:
        raise RuntimeError("secret-internal-detail /etc/passwd")

    monkeypatch.setattr(api.store, "job_state", explode)
    r = await api.get_job("job_anything")
    body = r.problem(500, "internal_error")
    text = r.raw.decode()
    assert "Traceback" not in text
    assert "secret-internal-detail" not in text
    assert "RuntimeError" not in text
    assert set(body) <= {"type", "title", "status", "detail", "code"}
    # ...but the operator's log has it.
    assert any("secret-internal-detail" in (rec.exc_text or str(rec.exc_info))
               for rec in caplog.records)


@pytest.mark.parametrize("when", ["at once", "after the commit"])
async def test_store_failure_on_create_is_a_problem(api: Api, monkeypatch: pytest.MonkeyPatch,
                                                    when: str) -> None:
    def broken(*_args: object, **_kw: object) -> asyncio.Future[None]:
        if when == "at once":
            raise RuntimeError("disk on fire")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_exception(RuntimeError("disk on fire"))
        return future

    monkeypatch.setattr(api.store, "insert_job", broken)
    r = await api.post_job()
    r.problem(500, "internal_error")
    assert "disk on fire" not in r.raw.decode()
    assert api.created == []


async def test_problem_type_is_a_uri_per_code(api: Api) -> None:
    a = (await api.get_job("job_x")).problem(404, "not_found")
    b = (await api.post_job(key=None)).problem(400, "missing_idempotency_key")
    assert a["type"] != b["type"]
    for body in (a, b):
        assert body["type"].startswith(("http://", "https://"))
        assert body["type"].endswith(body["code"])
