"""Per-tenant token bucket on POST /jobs: 429 with Retry-After, refill, headers."""

from __future__ import annotations

from typing import Any

from jobd.models import NewTenant
from tests.api.conftest import NOW0, Api, Reply, eventually


async def _post(api: Api, tenant: NewTenant, key: str, **fields: Any) -> Reply:
    return await api.post_job(api.body(tenantId=tenant.tenant.id, **fields), key=key,
                              api_key=tenant.api_key)


async def test_burst_then_429_then_refill(api: Api) -> None:
    slow = await api.make_tenant("slow", rate=1, burst=2)
    r1 = await _post(api, slow, "a")
    r2 = await _post(api, slow, "b")
    assert (r1.status, r2.status) == (201, 201)
    assert [r.headers["RateLimit-Limit"] for r in (r1, r2)] == ["2", "2"]
    assert [r.headers["RateLimit-Remaining"] for r in (r1, r2)] == ["1", "0"]

    r3 = await _post(api, slow, "c")
    r3.problem(429, "rate_limited")
    retry_after = r3.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    assert int(retry_after) == 1       # one token per second
    assert r3.headers["RateLimit-Remaining"] == "0"
    assert r3.headers["RateLimit-Limit"] == "2"
    assert int(r3.headers["RateLimit-Reset"]) >= 1
    assert api.job_count("slow") == 2
    assert len(api.created) == 2
    assert api.rate_limited == ["slow"]

    api.clock.advance(1)
    r4 = await _post(api, slow, "c")
    assert r4.status == 201, r4.raw
    assert api.job_count("slow") == 3
    (await _post(api, slow, "d")).problem(429, "rate_limited")


async def test_retry_after_is_whole_seconds_for_slow_rates(api: Api) -> None:
    slow = await api.make_tenant("slow", rate=0.3, burst=1)
    assert (await _post(api, slow, "a")).status == 201
    r = await _post(api, slow, "b")
    r.problem(429, "rate_limited")
    assert r.headers["Retry-After"] == "4"    # ceil(1 / 0.3)
    api.clock.advance(3)
    (await _post(api, slow, "b")).problem(429, "rate_limited")
    api.clock.advance(0.5)
    assert (await _post(api, slow, "b")).status == 201


async def test_rate_limited_request_writes_nothing(api: Api) -> None:
    slow = await api.make_tenant("slow", rate=1, burst=1)
    assert (await _post(api, slow, "a")).status == 201
    r = await _post(api, slow, "b", payload={"never": "stored"})
    r.problem(429, "rate_limited")
    assert api.job_count() == 1
    # The refused key was not recorded: after the refill it creates a job, not a replay/409.
    api.clock.advance(1)
    again = await _post(api, slow, "b", payload={"other": "body"})
    assert again.status == 201
    assert "Idempotent-Replayed" not in again.headers


async def test_limits_are_per_tenant(api: Api) -> None:
    slow = await api.make_tenant("slow", rate=1, burst=1)
    assert (await _post(api, slow, "a")).status == 201
    (await _post(api, slow, "b")).problem(429, "rate_limited")
    # acme (rate 1000, burst 1000) is unaffected.
    r = await api.post_job(key="acme-1")
    assert r.status == 201
    assert r.headers["RateLimit-Remaining"] == "999"


async def test_get_is_never_rate_limited(api: Api) -> None:
    slow = await api.make_tenant("slow", rate=1, burst=1)
    created = await _post(api, slow, "a")
    assert created.status == 201
    (await _post(api, slow, "b")).problem(429, "rate_limited")
    for _ in range(20):
        r = await api.get_job(created.json["jobId"], api_key=slow.api_key)
        assert r.status == 200
    # Nor do the GETs use up tokens: after one second exactly one POST is allowed again.
    api.clock.advance(1)
    assert (await _post(api, slow, "b")).status == 201
    (await _post(api, slow, "c")).problem(429, "rate_limited")


async def test_replays_and_errors_carry_rate_headers(api: Api) -> None:
    slow = await api.make_tenant("slow", rate=1, burst=5)
    first = await _post(api, slow, "same")
    replay = await _post(api, slow, "same")
    invalid = await _post(api, slow, "bad", maxAttempts=0)
    conflict = await _post(api, slow, "same", priority=9)
    no_key = await api.post_job(api.body(tenantId="slow"), key=None, api_key=slow.api_key)
    statuses = [r.status for r in (first, replay, invalid, conflict, no_key)]
    assert statuses == [201, 201, 400, 409, 400]
    remaining = [int(r.headers["RateLimit-Remaining"]) for r in (first, replay, invalid, conflict,
                                                                  no_key)]
    assert remaining == [4, 3, 2, 1, 0]
    for r in (first, replay, invalid, conflict, no_key):
        assert r.headers["RateLimit-Limit"] == "5"
        assert r.headers["RateLimit-Reset"].isdigit()


async def test_new_limits_from_the_cli_apply(api: Api) -> None:
    slow = await api.make_tenant("slow", rate=1, burst=1)
    assert (await _post(api, slow, "a")).status == 201
    (await _post(api, slow, "b")).problem(429, "rate_limited")
    await api.store.update_tenant_limits("slow", rate=None, burst=3, max_concurrency=None,
                                         clear_max_concurrency=False, now=NOW0)
    # Noticed within the poll interval (SPEC §1); the FakeClock does not move meanwhile.
    r = await eventually(lambda: _post(api, slow, "b"), 201)
    assert r.status == 201, r.raw
    assert r.headers["RateLimit-Limit"] == "3"
