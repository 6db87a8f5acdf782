"""POST /jobs: 201, authentication, validation, Idempotency-Key and body-size rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from jobd.config import Config
from tests.api.conftest import JOB_ID, NOW0, Api, eventually, parse_time
from tests.conftest import Databases, make_config


@pytest.fixture
def config(tmp_path: Path, database: Databases) -> Config:
    """This module's app refuses bodies over 2048 bytes (see the 413 tests at the end)."""
    return make_config(tmp_path, server={"max_body_bytes": 2048})


# --------------------------------------------------------------------------- 201


async def test_created_body_headers_and_row(api: Api) -> None:
    body = api.body(type="noop", payload={"n": 1, "nested": {"a": [1, 2, None]}},
                    priority=7, maxAttempts=3, timeoutSeconds=2.5,
                    runAt="2030-01-02T03:04:05.250Z", webhookUrl="https://client.example/hook")
    r = await api.post_job(body)
    assert r.status == 201, r.raw
    assert r.content_type == "application/json"
    data = r.json
    assert set(data) == {"jobId", "status", "createdAt"}
    assert JOB_ID.match(data["jobId"]), data
    assert data["status"] == "queued"
    assert parse_time(data["createdAt"]) == pytest.approx(NOW0, abs=0.001)
    assert r.headers["Location"] == f"/jobs/{data['jobId']}"
    assert "Idempotent-Replayed" not in r.headers

    job = await api.store.find_job(data["jobId"], "acme")
    assert job is not None
    assert job.tenant_id == "acme"
    assert job.type == "noop"
    assert orjson.loads(job.payload) == {"n": 1, "nested": {"a": [1, 2, None]}}
    assert job.priority == 7
    assert job.max_attempts == 3
    assert job.timeout_seconds == 2.5
    assert job.run_at == pytest.approx(parse_time("2030-01-02T03:04:05.250Z"))
    assert job.next_run_at == pytest.approx(job.run_at)
    assert job.webhook_url == "https://client.example/hook"
    assert job.status.value == "queued"
    assert job.attempts == 0
    assert job.created_at == pytest.approx(NOW0)
    # The scheduler was woken once, with the job's due time.
    assert api.created == [pytest.approx(job.run_at)]


async def test_defaults_when_optional_fields_are_omitted(api: Api) -> None:
    r = await api.post_job()
    assert r.status == 201, r.raw
    job = await api.store.find_job(r.json["jobId"])
    assert job is not None
    assert job.priority == 0
    assert job.max_attempts == api.config.jobs.max_attempts
    assert job.timeout_seconds is None
    assert job.webhook_url is None
    assert job.run_at == pytest.approx(NOW0)  # due now
    assert api.created == [pytest.approx(NOW0)]


async def test_location_header_resolves_with_get(api: Api) -> None:
    r = await api.post_job()
    got = await api.request("GET", r.headers["Location"])
    assert got.status == 200
    assert got.json["jobId"] == r.json["jobId"]


async def test_runat_with_offset_is_normalised_to_utc(api: Api) -> None:
    r = await api.post_job(api.body(runAt="2030-01-01T12:00:00+02:00"))
    assert r.status == 201, r.raw
    got = (await api.get_job(r.json["jobId"])).json
    assert got["runAt"].startswith("2030-01-01T10:00:00")
    assert got["nextRunAt"].startswith("2030-01-01T10:00:00")


async def test_job_ids_are_unique_and_url_safe(api: Api) -> None:
    ids = set()
    for i in range(25):
        r = await api.post_job(key=f"k{i}")
        assert r.status == 201
        assert JOB_ID.match(r.json["jobId"])
        ids.add(r.json["jobId"])
    assert len(ids) == 25
    assert api.job_count() == 25
    assert len(api.created) == 25


async def test_rate_limit_headers_present_and_remaining_decreases(api: Api) -> None:
    seen = []
    for i in range(3):
        r = await api.post_job(key=f"rl-{i}")
        assert r.status == 201
        for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
            assert r.headers[name].isdigit(), (name, r.headers.get(name))
        assert int(r.headers["RateLimit-Limit"]) == 1000  # the tenant's burst
        seen.append(int(r.headers["RateLimit-Remaining"]))
    assert seen == [999, 998, 997]


async def test_lowercase_bearer_scheme_is_accepted(api: Api) -> None:
    r = await api.post_job(auth=False, headers={"Authorization": f"bearer {api.key}"})
    assert r.status == 201, r.raw


async def test_email_and_http_jobs_are_accepted(api: Api) -> None:
    r1 = await api.post_job(api.body(type="email", payload={
        "to": "user@example.com", "subject": "Hello", "body": "Welcome!"}), key="e")
    r2 = await api.post_job(api.body(type="http", payload={
        "url": "https://example.com/hook", "method": "post", "json": {"a": 1}}), key="h")
    assert (r1.status, r2.status) == (201, 201), (r1.raw, r2.raw)
    assert {row["type"] for row in api.job_rows()} == {"email", "http"}


@pytest.mark.parametrize("payload", [{}, {"anything": [1, {"x": None}], "n": 1.5},
                                     {"deep": {"a": {"b": "c"}}},
                                     {"nul": "a\u0000b", "astral": "\U0001f600"}])
async def test_noop_accepts_any_object_payload(api: Api, payload: dict[str, object]) -> None:
    r = await api.post_job(api.body(type="noop", payload=payload))
    assert r.status == 201, r.raw
    job = await api.store.find_job(r.json["jobId"])
    assert job is not None and orjson.loads(job.payload) == payload


# --------------------------------------------------------------------------- 401


@pytest.mark.parametrize("authorization", [
    None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token jobd_sk_x",
    "Bearer jobd_sk_unknown-key",
])
async def test_bad_credentials_are_401(api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = await api.post_job(auth=False, headers=headers)
    r.problem(401, "unauthorized")
    assert api.job_count() == 0
    assert api.created == []


async def test_wrong_scheme_with_valid_key_is_401(api: Api) -> None:
    r = await api.post_job(auth=False, headers={"Authorization": f"Basic {api.key}"})
    r.problem(401, "unauthorized")
    assert api.job_count() == 0


async def test_disabled_tenant_is_401_and_reenabled_works(api: Api) -> None:
    warm = await api.post_job(key="d0")  # the tenant is now known to the API
    assert warm.status == 201
    await api.store.set_tenant_disabled("acme", disabled=True, now=NOW0)
    # Refused at once, even though the API saw the tenant enabled a moment ago.
    (await api.post_job(key="d1")).problem(401, "unauthorized")
    (await api.get_job(warm.json["jobId"])).problem(401, "unauthorized")
    (await api.delete_job(warm.json["jobId"])).problem(401, "unauthorized")
    # Even a replay of an earlier request is refused.
    (await api.post_job(key="d0")).problem(401, "unauthorized")
    assert api.job_count() == 1
    assert len(api.created) == 1
    await api.store.set_tenant_disabled("acme", disabled=False, now=NOW0)
    r = await eventually(lambda: api.post_job(key="d2"), 201)
    assert r.status == 201, r.raw
    assert api.job_count() == 2


async def test_rotated_key_old_is_401_new_works(api: Api) -> None:
    old = api.key
    assert (await api.post_job(key="before")).status == 201
    rotated = await api.store.rotate_api_key("acme", now=NOW0)
    r = await api.post_job(key="after-old", api_key=old)
    r.problem(401, "unauthorized")
    assert api.job_count() == 1
    r = await api.post_job(key="after-new", api_key=rotated.api_key)
    assert r.status == 201, r.raw
    assert api.job_count() == 2


@pytest.mark.parametrize("claimed", ["globex", "no-such-tenant"])
async def test_tenant_id_of_another_tenant_is_401(api: Api, claimed: str) -> None:
    await api.make_tenant("globex")
    r = await api.post_job(api.body(tenantId=claimed))
    r.problem(401, "unauthorized")
    assert api.job_count() == 0
    assert api.created == []


async def test_key_of_one_tenant_cannot_create_for_other(api: Api) -> None:
    other = await api.make_tenant("globex")
    r = await api.post_job(api.body(tenantId="acme"), api_key=other.api_key)
    r.problem(401, "unauthorized")
    assert api.job_count() == 0


async def test_401_carries_www_authenticate(api: Api) -> None:
    r = await api.post_job(auth=False)
    r.problem(401, "unauthorized")
    assert r.headers.get("WWW-Authenticate", "").lower().startswith("bearer")


# --------------------------------------------------------------------------- 400

EMAIL_OK = {"to": "user@example.com", "subject": "Hello", "body": "Welcome!"}


def _without(data: dict[str, object], name: str) -> dict[str, object]:
    return {k: v for k, v in data.items() if k != name}


BASE = {"tenantId": "acme", "type": "noop", "payload": {}}

INVALID_BODIES = [
    ("missing tenantId", _without(BASE, "tenantId"), "tenantId"),
    ("missing type", _without(BASE, "type"), "type"),
    ("missing payload", _without(BASE, "payload"), "payload"),
    ("unknown field", {**BASE, "foo": 1}, "foo"),
    ("typo of a known field", {**BASE, "maxAttempt": 3}, "maxAttempt"),
    ("payload is a list", {**BASE, "payload": [1, 2]}, "payload"),
    ("payload is a string", {**BASE, "payload": "x"}, "payload"),
    ("payload is null", {**BASE, "payload": None}, "payload"),
    ("tenantId not a string", {**BASE, "tenantId": 5}, "tenantId"),
    ("type not a string", {**BASE, "type": 5}, "type"),
    ("unknown type", {**BASE, "type": "nope"}, "type"),
    ("http payload without url", {**BASE, "type": "http", "payload": {"method": "GET"}},
     "payload.url"),
    ("http payload unknown field", {**BASE, "type": "http",
                                    "payload": {"url": "https://e.com", "bogus": 1}},
     "payload.bogus"),
    ("email bad to", {**BASE, "type": "email", "payload": {**EMAIL_OK, "to": "not-an-address"}},
     "payload.to"),
    ("email missing subject", {**BASE, "type": "email", "payload": _without(EMAIL_OK, "subject")},
     "payload.subject"),
    ("maxAttempts 0", {**BASE, "maxAttempts": 0}, "maxAttempts"),
    ("maxAttempts 101", {**BASE, "maxAttempts": 101}, "maxAttempts"),
    ("maxAttempts string", {**BASE, "maxAttempts": "5"}, "maxAttempts"),
    ("maxAttempts float", {**BASE, "maxAttempts": 2.5}, "maxAttempts"),
    ("priority string", {**BASE, "priority": "1"}, "priority"),
    ("priority bool", {**BASE, "priority": True}, "priority"),
    ("runAt not a date", {**BASE, "runAt": "not a date"}, "runAt"),
    ("runAt naive", {**BASE, "runAt": "2025-08-20T10:00:00"}, "runAt"),
    ("runAt date only", {**BASE, "runAt": "2025-08-20"}, "runAt"),
    ("runAt impossible date", {**BASE, "runAt": "2025-13-40T10:00:00Z"}, "runAt"),
    ("timeoutSeconds negative", {**BASE, "timeoutSeconds": -1}, "timeoutSeconds"),
    ("timeoutSeconds zero", {**BASE, "timeoutSeconds": 0}, "timeoutSeconds"),
    ("timeoutSeconds string", {**BASE, "timeoutSeconds": "5"}, "timeoutSeconds"),
    ("webhookUrl ftp", {**BASE, "webhookUrl": "ftp://x"}, "webhookUrl"),
    ("webhookUrl not a url", {**BASE, "webhookUrl": "not a url"}, "webhookUrl"),
    ("webhookUrl relative", {**BASE, "webhookUrl": "/hooks/job"}, "webhookUrl"),
    ("webhookUrl not a string", {**BASE, "webhookUrl": 5}, "webhookUrl"),
]


@pytest.mark.parametrize(("body", "field"), [(b, f) for _, b, f in INVALID_BODIES],
                         ids=[name for name, _, _ in INVALID_BODIES])
async def test_invalid_body_is_400_naming_the_field(api: Api, body: dict[str, object],
                                                    field: str) -> None:
    r = await api.post_job(body)
    fields = r.error_fields()
    assert field in fields, (field, r.json)
    assert r.content_type == "application/problem+json"
    # Rate-limit headers are on every POST /jobs response once the tenant is known.
    assert "RateLimit-Remaining" in r.headers
    assert api.job_count() == 0
    assert api.created == []


async def test_several_invalid_fields_are_all_named(api: Api) -> None:
    r = await api.post_job({**BASE, "maxAttempts": 0, "priority": "x", "foo": 1})
    assert {"maxAttempts", "priority", "foo"} <= set(r.error_fields())


@pytest.mark.parametrize("raw", [
    b'{"tenantId": "acme", "type": "noop", "payload": {}',  # truncated
    b"",
    b"not json",
    b"{'tenantId': 'acme'}",
    b'{"tenantId": "acme", "type": "noop", "payload": {}} trailing',
    b"\xff\xfe\x00",
])
async def test_malformed_json_is_400(api: Api, raw: bytes) -> None:
    r = await api.post_job(raw=raw)
    assert r.error_fields() == ["body"]
    assert api.job_count() == 0


@pytest.mark.parametrize("raw", [b"[]", b'[{"tenantId": "acme", "type": "noop", "payload": {}}]',
                                 b'"a string"', b"42", b"null"])
async def test_json_that_is_not_an_object_is_400(api: Api, raw: bytes) -> None:
    r = await api.post_job(raw=raw)
    assert r.error_fields() == ["body"]
    assert api.job_count() == 0


@pytest.mark.parametrize("run_at", [1750000000, "0", "1750000000"],
                         ids=["json number", "string zero", "numeric string"])
async def test_runat_must_be_rfc3339_not_unix_seconds(api: Api, run_at: object) -> None:
    r = await api.post_job(api.body(runAt=run_at))
    assert "runAt" in r.error_fields()
    assert api.job_count() == 0


async def test_private_addresses_are_refused_at_submit(api: Api) -> None:
    webhooks = api.config.webhooks.model_copy(update={"allow_private_networks": False})
    api.ctx.config = api.config.model_copy(update={"webhooks": webhooks})
    cases = [
        (api.body(webhookUrl="http://127.0.0.1:8080/hook"), "webhookUrl"),
        (api.body(webhookUrl="http://localhost/hook"), "webhookUrl"),
        (api.body(webhookUrl="http://[::1]/hook"), "webhookUrl"),
        (api.body(type="http", payload={"url": "http://169.254.169.254/latest/meta-data"}),
         "payload"),
        (api.body(type="http", payload={"url": "http://10.0.0.1/"}), "payload"),
    ]
    for i, (body, field) in enumerate(cases):
        r = await api.post_job(body, key=f"ssrf-{i}")
        assert field in r.error_fields(), (body, r.json)
        # the refusal names the setting that lifts it, in the detail and the field's message
        assert "webhooks.allow_private_networks" in r.json["detail"], r.json
        assert "webhooks.allow_private_networks" in r.json["errors"][0]["message"]
    assert api.job_count() == 0
    # a URL refused for another reason does not point at that setting
    r = await api.post_job(api.body(webhookUrl="ftp://example.com/hook"), key="ftp")
    assert "webhookUrl" in r.error_fields()
    assert "allow_private_networks" not in r.json["detail"]
    ok = await api.post_job(api.body(type="http", payload={"url": "https://example.com/"},
                                     webhookUrl="https://client.example/hook"), key="public")
    assert ok.status == 201, ok.raw


# ------------------------------------------------------------- Idempotency-Key


async def test_missing_idempotency_key_is_400(api: Api) -> None:
    r = await api.post_job(key=None)
    r.problem(400, "missing_idempotency_key")
    assert api.job_count() == 0
    assert api.created == []


@pytest.mark.parametrize("key", ["x" * 256, "a\tb", "ключ", "caf\u00e9"],
                         ids=["256 chars", "tab", "cyrillic", "latin-1"])
async def test_invalid_idempotency_key_is_400(api: Api, key: str) -> None:
    r = await api.post_job(key=key)
    r.problem(400, "missing_idempotency_key")
    assert api.job_count() == 0


@pytest.mark.parametrize("key", ["x" * 255, "a", "order-42/retry:1 ~!@#$%^&*()"],
                         ids=["255 chars", "1 char", "punctuation"])
async def test_valid_idempotency_keys_are_accepted(api: Api, key: str) -> None:
    r = await api.post_job(key=key)
    assert r.status == 201, r.raw
    replay = await api.post_job(key=key)
    assert replay.status == 201
    assert replay.json["jobId"] == r.json["jobId"]
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert api.job_count() == 1


# --------------------------------------------------------------------------- 413


def _body_of_size(size: int) -> bytes:
    head = b'{"tenantId":"acme","type":"noop","payload":{"blob":"'
    tail = b'"}}'
    raw = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(raw) == size
    orjson.loads(raw)
    return raw


async def test_body_over_limit_with_content_length_is_413(api: Api) -> None:
    r = await api.post_job(raw=_body_of_size(3000))
    r.problem(413, "payload_too_large")
    assert api.job_count() == 0
    assert api.created == []


async def test_body_just_over_limit_is_413_and_at_limit_is_ok(api: Api) -> None:
    (await api.post_job(raw=_body_of_size(2049), key="over")).problem(413, "payload_too_large")
    r = await api.post_job(raw=_body_of_size(2048), key="at")
    assert r.status == 201, r.raw
    assert api.job_count() == 1


async def test_chunked_body_over_limit_is_413(api: Api) -> None:
    raw = _body_of_size(5000)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 500):
            yield raw[i:i + 500]

    r = await api.post_job(raw=chunks())
    r.problem(413, "payload_too_large")
    assert api.job_count() == 0


async def test_chunked_body_under_limit_is_accepted(api: Api) -> None:
    raw = _body_of_size(1500)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 100):
            yield raw[i:i + 100]

    r = await api.post_job(raw=chunks())
    assert r.status == 201, r.raw
    assert api.job_count() == 1


async def test_gzip_body_that_inflates_over_limit_is_413(api: Api) -> None:
    import gzip

    compressed = gzip.compress(_body_of_size(50_000))
    assert len(compressed) < 2048
    r = await api.post_job(raw=compressed, headers={"Content-Encoding": "gzip"})
    r.problem(413, "payload_too_large")
    assert api.job_count() == 0
