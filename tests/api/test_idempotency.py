"""Idempotency-Key: replays, conflicts, per-tenant scope, concurrency and expiry."""

from __future__ import annotations

import asyncio

from tests.api.conftest import Api, Reply


def _assert_replay(first: Reply, again: Reply) -> None:
    assert again.status == first.status == 201, (again.status, again.raw)
    assert again.json == first.json           # same jobId and createdAt
    assert again.raw == first.raw             # the original response, byte for byte
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert "Idempotent-Replayed" not in first.headers


async def test_same_key_same_body_replays(api: Api) -> None:
    first = await api.post_job(key="same")
    api.clock.advance(30)  # a replay later still reports the original createdAt
    again = await api.post_job(key="same")
    _assert_replay(first, again)
    assert api.job_count() == 1
    assert len(api.created) == 1


async def test_replay_compares_parsed_json(api: Api) -> None:
    first = await api.post_job(
        raw=b'{"tenantId":"acme","type":"noop","payload":{"a":1,"b":{"x":"\xc3\xa9","y":[1,2]}},'
            b'"priority":2}', key="parsed")
    assert first.status == 201, first.raw
    variants = [
        # keys in another order, nested too
        b'{"priority":2,"payload":{"b":{"y":[1,2],"x":"\xc3\xa9"},"a":1},"type":"noop",'
        b'"tenantId":"acme"}',
        # other whitespace
        b'{\n  "tenantId" : "acme",\t"type":"noop",\r\n "payload" : { "a" : 1 ,'
        b' "b" : {"x":"\xc3\xa9","y":[ 1 , 2 ]}}, "priority":   2 }\n',
        # the same string written with a \u escape
        b'{"tenantId":"acme","type":"noop","payload":{"a":1,"b":{"x":"\\u00e9","y":[1,2]}},'
        b'"priority":2}',
    ]
    for raw in variants:
        _assert_replay(first, await api.post_job(raw=raw, key="parsed"))
    assert api.job_count() == 1
    assert len(api.created) == 1


async def test_same_key_different_body_is_409(api: Api) -> None:
    first = await api.post_job(api.body(payload={"n": 1}), key="dup")
    assert first.status == 201
    for body in (api.body(payload={"n": 2}), api.body(payload={"n": 1}, priority=5),
                 api.body(payload={"n": 1}, type="http") | {"payload": {"url": "https://e.com"}}):
        r = await api.post_job(body, key="dup")
        r.problem(409, "idempotency_conflict")
        assert "Idempotent-Replayed" not in r.headers
    assert api.job_count() == 1
    assert len(api.created) == 1
    # The original is still replayed afterwards.
    _assert_replay(first, await api.post_job(api.body(payload={"n": 1}), key="dup"))


async def test_array_order_matters(api: Api) -> None:
    assert (await api.post_job(api.body(payload={"a": [1, 2]}), key="arr")).status == 201
    (await api.post_job(api.body(payload={"a": [2, 1]}), key="arr")).problem(
        409, "idempotency_conflict")


async def test_keys_are_per_tenant(api: Api) -> None:
    other = await api.make_tenant("globex")
    a = await api.post_job(api.body(payload={"n": 1}), key="shared")
    b = await api.post_job(api.body(tenantId="globex", payload={"n": 2}), key="shared",
                           api_key=other.api_key)
    assert (a.status, b.status) == (201, 201), (a.raw, b.raw)
    assert "Idempotent-Replayed" not in b.headers
    assert a.json["jobId"] != b.json["jobId"]
    assert api.job_count("acme") == 1
    assert api.job_count("globex") == 1
    assert len(api.created) == 2
    # Each tenant replays its own job.
    again = await api.post_job(api.body(tenantId="globex", payload={"n": 2}), key="shared",
                               api_key=other.api_key)
    _assert_replay(b, again)


async def test_replay_after_cancel_returns_original_response(api: Api) -> None:
    first = await api.post_job(key="c")
    assert (await api.delete_job(first.json["jobId"])).status == 200
    _assert_replay(first, await api.post_job(key="c"))
    assert api.job_count() == 1


async def test_concurrent_identical_requests_create_one_job(api: Api) -> None:
    body = api.body(payload={"n": 42})
    replies = await asyncio.gather(*(api.post_job(body, key="race") for _ in range(20)))
    assert {r.status for r in replies} == {201}, [r.raw for r in replies]
    assert len({r.json["jobId"] for r in replies}) == 1
    assert len({r.json["createdAt"] for r in replies}) == 1
    originals = [r for r in replies if r.headers.get("Idempotent-Replayed") != "true"]
    assert len(originals) == 1
    assert api.job_count() == 1
    assert len(api.created) == 1


async def test_concurrent_different_keys_create_one_job_each(api: Api) -> None:
    replies = await asyncio.gather(*(api.post_job(key=f"k{i}") for i in range(20)))
    assert {r.status for r in replies} == {201}
    assert len({r.json["jobId"] for r in replies}) == 20
    assert api.job_count() == 20
    assert len(api.created) == 20


async def test_concurrent_conflicting_requests_one_wins(api: Api) -> None:
    replies = await asyncio.gather(*(api.post_job(api.body(payload={"n": i % 2}), key="mix")
                                     for i in range(10)))
    created = {r.json["jobId"] for r in replies if r.status == 201}
    assert len(created) == 1
    assert {r.status for r in replies} <= {201, 409}
    winner = next(r for r in replies if r.status == 201).json
    job = await api.store.find_job(winner["jobId"])
    assert job is not None
    n = 0 if '"n":0' in job.payload else 1
    for i, r in enumerate(replies):
        assert r.status == (201 if i % 2 == n else 409), (i, r.status)
    assert api.job_count() == 1
    assert len(api.created) == 1


async def test_key_expires_after_ttl(api: Api) -> None:
    ttl = api.config.idempotency.ttl_hours * 3600
    first = await api.post_job(key="ttl")
    api.clock.advance(ttl - 1)
    _assert_replay(first, await api.post_job(key="ttl"))
    api.clock.advance(2)  # now past the TTL
    fresh = await api.post_job(key="ttl")
    assert fresh.status == 201, fresh.raw
    assert "Idempotent-Replayed" not in fresh.headers
    assert fresh.json["jobId"] != first.json["jobId"]
    assert fresh.json["createdAt"] != first.json["createdAt"]
    assert api.job_count() == 2
    assert len(api.created) == 2
    # The new answer is what is replayed from now on.
    _assert_replay(fresh, await api.post_job(key="ttl"))


async def test_expired_key_may_be_reused_with_another_body(api: Api) -> None:
    ttl = api.config.idempotency.ttl_hours * 3600
    assert (await api.post_job(api.body(payload={"v": 1}), key="reuse")).status == 201
    api.clock.advance(ttl + 1)
    r = await api.post_job(api.body(payload={"v": 2}), key="reuse")
    assert r.status == 201, r.raw
    assert api.job_count() == 2


async def test_rejected_requests_do_not_burn_the_key(api: Api) -> None:
    (await api.post_job(api.body(maxAttempts=0), key="retry-me")).error_fields()
    (await api.post_job(api.body(tenantId="globex"), key="retry-me")).problem(401, "unauthorized")
    r = await api.post_job(api.body(payload={"fixed": True}), key="retry-me")
    assert r.status == 201, r.raw
    assert "Idempotent-Replayed" not in r.headers
