"""Property-based tests of the HTTP API, generated from its own OpenAPI document.

schemathesis reads the document that ``GET /openapi.json`` serves and calls every
operation in it with generated requests, valid and invalid (its examples, coverage and
fuzzing phases), as a real tenant with a real API key, against both ways the daemon
serves the API: aiohttp's routes alone, and the fast lane in front of them
(:mod:`tests.api.served`). Every response must:

- not be a 5xx;
- match the document: a status code it declares for that operation, its content type,
  its headers and its body schema; every 4xx is ``application/problem+json`` whose
  ``status`` is the response's;
- and, for a 201, be followed by a ``GET`` of its ``Location`` that answers 200 with the
  same ``jobId`` (404 for another tenant), and by a replay of the same request that
  answers the same ``jobId`` with ``Idempotent-Replayed: true``.

A stateful run then follows the document's links (create a job, read it, cancel it).
Properties over raw HTTP cover what the document cannot generate: any bytes in the API
key, deep JSON, a Content-Length of any length, a ``runAt`` out of range.

The run is bounded so that the suite stays fast: ``FUZZ_MAX_EXAMPLES`` (default 100)
examples per operation and path, derandomized when ``CI`` is set. For a longer local
run: ``FUZZ_MAX_EXAMPLES=2000 .venv/bin/python -m pytest -q tests/api/test_fuzz_openapi.py``.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import sqlite3
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.specs.openapi import checks as openapi_checks

from jobd.api.openapi import build_openapi
from jobd.api.schemas import IDEMPOTENCY_KEY_PATTERN
from jobd.models import NewTenant
from tests.api.served import PATHS, ServedApi
from tests.api.served import Path as ServedPath
from tests.conftest import Databases, make_config

PROBLEM = "application/problem+json"
TENANT = "acme"
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "100"))
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")),
                    database=None, suppress_health_check=list(HealthCheck), print_blob=True)

KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
ON_BOTH_PATHS = pytest.mark.parametrize("path", PATHS)
# the 500s and plain-text answers that issue 18's inbound hardening removes

schema = schemathesis.openapi.from_dict(build_openapi())
# job ids the tests created, for the generated GET and DELETE requests to name real jobs too
created_ids: list[str] = []
# a stateful run's draws must not depend on what other runs created (hypothesis replays a
# run to shrink it and refuses one whose choices changed), so it leaves the ids alone
sampling = {"created_ids": True}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, backend_kind: str,
           request: pytest.FixtureRequest) -> Iterator[ServedApi]:
    """One API for the module's runs on each backend (its database kept across them)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    with Databases(backend_kind, request).installed():
        config = make_config(tmp, webhooks={"allow_private_networks": False})
        with ServedApi(config) as api:
            yield api
    if config.database.url is None:
        _assert_integrity(Path(config.database.path))


@pytest.fixture(scope="module")
def tenant(served: ServedApi) -> NewTenant:
    return served.create_tenant(TENANT)


@pytest.fixture(scope="module")
def other_tenant(served: ServedApi) -> NewTenant:
    return served.create_tenant("other")


def _auth(tenant: NewTenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.api_key}"}


def _assert_integrity(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


# -------------------------------------------------------------- generation steering

def steer(case: schemathesis.Case) -> None:
    """Half of the valid ``POST /jobs`` bodies generated are made to name the tenant of
    the key and a registered type, so that the 201 path and its invariants are reached,
    not only the refusals (a random ``tenantId`` is a 401, a random ``type`` a 400).
    Which half is a function of the body, so that a failure replays and shrinks."""
    body = case.body
    if (case.operation.label != "POST /jobs" or not isinstance(body, dict) or case.meta is None
            or case.meta.generation.mode is not schemathesis.GenerationMode.POSITIVE):
        return
    if zlib.crc32(repr(body).encode(errors="surrogatepass")) % 2:
        case.body = {**body, "tenantId": TENANT, "type": "noop"}


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext,
                            params: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Half of the generated job ids are ones the tests created (a random one is a 404)."""
    if not params or "jobId" not in params or not created_ids or not sampling["created_ids"]:
        return st.just(params)
    return st.one_of(st.just(params), st.sampled_from(list(created_ids)).map(
        lambda job_id: {**params, "jobId": job_id}))


# ----------------------------------------------------------------------- checks

def problem_for_every_error(ctx: Any, response: schemathesis.Response,
                            case: schemathesis.Case) -> None:
    """Every 4xx and 5xx is RFC 9457 problem+json whose ``status`` is the response's."""
    if response.status_code < 400:
        return
    content_type = (_header(response, "Content-Type") or "").split(";")[0].strip()
    assert content_type == PROBLEM, f"{response.status_code} answered as {content_type!r}"
    body = orjson.loads(response.content or b"null")
    assert isinstance(body, dict) and body.get("status") == response.status_code, body
    assert isinstance(body.get("code"), str) and body["code"], body


CHECKS = [problem_for_every_error]
# A body the document calls valid may still be refused: its ``type`` must be registered
# (the registry is configuration), its ``payload`` must suit that type, and an outbound
# URL must pass the address guard. So "valid data is accepted" is not checked on POST /jobs.
EXCLUDED_ON_CREATE = [openapi_checks.positive_data_acceptance]


# ------------------------------------------------------------------------ tests

@ON_BOTH_PATHS
def test_the_document_fuzzed_is_the_one_served(served: ServedApi, path: ServedPath) -> None:
    response = requests.get(served.base_url(path) + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.json() == build_openapi()


@ON_BOTH_PATHS
@schema.parametrize()
@SETTINGS
def test_every_response_matches_the_document(case: schemathesis.Case, path: ServedPath,
                                             served: ServedApi, tenant: NewTenant,
                                             other_tenant: NewTenant) -> None:
    base_url = served.base_url(path)
    headers = _auth(tenant)
    excluded = EXCLUDED_ON_CREATE if case.operation.label == "POST /jobs" else []
    steer(case)
    response = case.call(base_url=base_url, headers=headers)
    case.validate_response(response, headers=headers, additional_checks=CHECKS,
                           excluded_checks=excluded, transport_kwargs={"base_url": base_url})
    if case.operation.label == "POST /jobs" and response.status_code == 201:
        _created_job_invariants(case, response, base_url, tenant, other_tenant)


def _header(response: schemathesis.Response, name: str) -> str | None:
    values = response.headers.get(name.lower())
    return values[0] if values else None


def _created_job_invariants(case: schemathesis.Case, response: schemathesis.Response, base_url: str,
                            tenant: NewTenant, other_tenant: NewTenant) -> None:
    job_id = response.json()["jobId"]
    created_ids.append(job_id)
    location = _header(response, "Location")
    assert location == f"/jobs/{job_id}"
    got = requests.get(base_url + location, headers=_auth(tenant), timeout=10)
    assert got.status_code == 200, got.text
    assert got.json()["jobId"] == job_id
    schema["/jobs/{jobId}"]["GET"].validate_response(got)
    foreign = requests.get(base_url + location, headers=_auth(other_tenant), timeout=10)
    assert foreign.status_code == 404, foreign.text
    replay = case.call(base_url=base_url, headers=_auth(tenant))
    assert replay.status_code == 201, replay.text
    assert replay.json() == response.json()
    assert _header(replay, "Idempotent-Replayed") == "true"


@ON_BOTH_PATHS
def test_stateful_runs_follow_the_document_links(path: ServedPath, served: ServedApi,
                                                 tenant: NewTenant) -> None:
    base_url = served.base_url(path)

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each run's Idempotency-Keys are its own: a run replayed while shrinking must
            # meet the same answers, not its earlier self's jobs.
            self.run_id = uuid.uuid4().hex[:12]

        def before_call(self, case: schemathesis.Case) -> None:
            steer(case)
            key = (case.headers or {}).get("Idempotency-Key")
            if isinstance(key, str) and KEY.fullmatch(key):
                own = f"{self.run_id}-{key}"[:255].rstrip()
                case.headers = {**case.headers, "Idempotency-Key": own}

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": base_url, "headers": _auth(tenant)}

        def validate_response(self, response: schemathesis.Response, case: schemathesis.Case,
                              additional_checks: Any = None, **kwargs: Any) -> None:
            excluded = EXCLUDED_ON_CREATE if case.operation.label == "POST /jobs" else []
            case.validate_response(response, headers=_auth(tenant), additional_checks=CHECKS,
                                   excluded_checks=excluded, transport_kwargs=kwargs)

    sampling["created_ids"] = False
    try:
        run_state_machine_as_test(Machine, settings=settings(
            SETTINGS, max_examples=max(10, MAX_EXAMPLES // 5), stateful_step_count=6))
    finally:
        sampling["created_ids"] = True


# ---------------------------------------------------------- raw HTTP, around the document
# What the document cannot generate: bytes in the head, deep JSON, numbers out of range.

FIELD_VALUE_BYTES = [0x09, *range(0x20, 0x7F), *range(0x80, 0x100)]  # what a field value may hold


def _exchange(base_url: str, raw: bytes) -> tuple[int, str, bytes]:
    """Send ``raw`` on a new connection; (status, media type, body) of the answer."""
    port = int(base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        media_type = (response.getheader("Content-Type") or "").split(";")[0].strip()
        return response.status, media_type, response.read()


def _assert_problem(status: int, media_type: str, body: bytes, *statuses: int) -> dict[str, Any]:
    assert status in statuses, (status, body[:300])
    assert media_type == PROBLEM, (status, media_type, body[:300])
    problem = orjson.loads(body)
    assert problem["status"] == status
    return dict(problem)


def _post_head(tenant: NewTenant, length: bytes, key: str = "raw") -> bytes:
    return (b"POST /jobs HTTP/1.1\r\nHost: jobd\r\nAuthorization: Bearer " + tenant.api_key.encode()
            + b"\r\nIdempotency-Key: " + key.encode() + b"\r\nContent-Type: application/json\r\n"
            + b"Content-Length: " + length + b"\r\n\r\n")


@ON_BOTH_PATHS
@pytest.mark.parametrize("target", ["POST /jobs", "GET /jobs/job_x"])
@given(key=st.lists(st.sampled_from(FIELD_VALUE_BYTES), min_size=1, max_size=80).map(bytes))
@example(key=b"jobd_sk_\x80")
@SETTINGS
def test_any_api_key_is_a_401_problem(served: ServedApi, path: ServedPath, target: str,
                                      key: bytes) -> None:
    """Any bytes a header value may hold, as the key: a 401 problem+json, never a 500."""
    method, url = target.split()
    raw = (f"{method} {url} HTTP/1.1\r\nHost: jobd\r\nIdempotency-Key: k\r\n".encode()
           + b"Authorization: Bearer " + key + b"\r\nContent-Length: 2\r\n\r\n{}")
    _assert_problem(*_exchange(served.base_url(path), raw), 401)


@ON_BOTH_PATHS
@given(depth=st.integers(1, 2000))
@example(depth=300)
@SETTINGS
def test_a_deeply_nested_payload_is_never_a_500(served: ServedApi, tenant: NewTenant,
                                                path: ServedPath, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    body = b'{"tenantId":"%s","type":"noop","payload":{"a":%s}}' % (TENANT.encode(), nested)
    status, media_type, answer = _exchange(
        served.base_url(path), _post_head(tenant, b"%d" % len(body), uuid.uuid4().hex) + body)
    if status != 201:
        _assert_problem(status, media_type, answer, 400, 413)


@ON_BOTH_PATHS
@given(digits=st.integers(8, 6000))
@example(digits=5000)
@SETTINGS
def test_a_huge_content_length_is_a_4xx_problem(served: ServedApi, tenant: NewTenant,
                                                path: ServedPath, digits: int) -> None:
    """Over server.max_body_bytes by any number of digits: refused before the body."""
    status, media_type, body = _exchange(served.base_url(path), _post_head(tenant, b"9" * digits))
    _assert_problem(status, media_type, body, 400, 413)


@ON_BOTH_PATHS
@pytest.mark.parametrize("run_at", ["9999-12-31T23:59:59-00:01", "9999-12-31T20:00:00.000-23:59"])
def test_a_run_at_after_the_year_9999_is_a_400(served: ServedApi, tenant: NewTenant,
                                               path: ServedPath, run_at: str) -> None:
    body = {"tenantId": TENANT, "type": "noop", "payload": {}, "runAt": run_at}
    response = requests.post(served.base_url(path) + "/jobs", json=body, timeout=10,
                             headers={**_auth(tenant), "Idempotency-Key": uuid.uuid4().hex})
    problem = _assert_problem(response.status_code, response.headers.get("Content-Type", ""),
                              response.content, 400)
    assert [e["field"] for e in problem["errors"]] == ["runAt"]


@ON_BOTH_PATHS
@pytest.mark.parametrize(("run_at", "utc"), [
    ("0583-01-01T00:00:00Z", "0583-01-01T00:00:00.000Z"),
    ("0001-01-01T00:30:00+01:00", "0000-12-31T23:30:00.000Z"),
])
def test_a_run_at_before_the_year_1000_reads_back_as_rfc3339(
        served: ServedApi, tenant: NewTenant, path: ServedPath, run_at: str, utc: str) -> None:
    """Found by the stateful run: such a time used to read back as ``583-01-01T...``."""
    base_url = served.base_url(path)
    body = {"tenantId": TENANT, "type": "noop", "payload": {}, "runAt": run_at}
    created = requests.post(base_url + "/jobs", json=body, timeout=10,
                            headers={**_auth(tenant), "Idempotency-Key": uuid.uuid4().hex})
    assert created.status_code == 201, created.text
    got = requests.get(base_url + created.headers["Location"], headers=_auth(tenant), timeout=10)
    assert got.json()["runAt"] == utc
    schema["/jobs/{jobId}"]["GET"].validate_response(got)
