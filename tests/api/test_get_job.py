"""GET /jobs/{jobId} and DELETE /jobs/{jobId}: tenant-scoped reads and cancellation."""

from __future__ import annotations

import pytest

from jobd.models import JobStatus
from jobd.store.backend import Rotation
from tests.api.conftest import NOW0, Api, parse_time

REQUIRED = {"jobId", "status", "attempts", "nextRunAt", "createdAt", "updatedAt"}


async def _create(api: Api, key: str = "k", **fields: object) -> str:
    r = await api.post_job(api.body(**fields), key=key)
    assert r.status == 201, r.raw
    return str(r.json["jobId"])


# ------------------------------------------------------------------------- GET


async def test_get_queued_job(api: Api) -> None:
    job_id = await _create(api, type="noop", priority=3, maxAttempts=4)
    r = await api.get_job(job_id)
    assert r.status == 200, r.raw
    assert r.content_type == "application/json"
    data = r.json
    assert set(data) >= REQUIRED
    assert data["jobId"] == job_id
    assert data["status"] == "queued"
    assert data["attempts"] == 0
    assert data["nextRunAt"] is not None
    assert parse_time(data["nextRunAt"]) == pytest.approx(NOW0, abs=0.001)
    assert parse_time(data["createdAt"]) == pytest.approx(NOW0, abs=0.001)
    assert parse_time(data["updatedAt"]) == pytest.approx(NOW0, abs=0.001)
    assert data["type"] == "noop"
    assert data["maxAttempts"] == 4
    assert data["priority"] == 3
    # GET is not rate limited, so it carries no rate-limit headers and consumes no tokens.
    assert "RateLimit-Remaining" not in r.headers


async def test_get_matches_created_response(api: Api) -> None:
    created = await api.post_job(api.body(runAt="2031-05-06T07:08:09Z"), key="x")
    data = (await api.get_job(created.json["jobId"])).json
    assert data["createdAt"] == created.json["createdAt"]
    assert data["nextRunAt"] == "2031-05-06T07:08:09.000Z"
    assert data["status"] == created.json["status"]


async def test_get_another_tenants_job_is_404(api: Api) -> None:
    job_id = await _create(api)
    other = await api.make_tenant("globex")
    body = (await api.get_job(job_id, api_key=other.api_key)).problem(404, "not_found")
    assert job_id not in body.get("errors", [])
    # ...and exactly like an id that never existed: no oracle for other tenants' ids.
    unknown = (await api.get_job("job_doesnotexist000000000", api_key=other.api_key))
    unknown.problem(404, "not_found")


@pytest.mark.parametrize("job_id", ["job_doesnotexist000000000", "nope", "job_" + "a" * 300,
                                    "%27%20OR%201%3D1--"])
async def test_get_unknown_id_is_404(api: Api, job_id: str) -> None:
    (await api.get_job(job_id)).problem(404, "not_found")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer jobd_sk_nope"},
                                     {"Authorization": "Basic x"}])
async def test_get_without_valid_auth_is_401(api: Api, headers: dict[str, str]) -> None:
    job_id = await _create(api)
    r = await api.get_job(job_id, auth=False, headers=headers)
    body = r.problem(401, "unauthorized")
    assert job_id not in r.raw.decode()
    assert "status" in body


async def test_get_running_job_has_no_next_run_at(api: Api) -> None:
    job_id = await _create(api)
    claimed = await api.store.claim_jobs(now=NOW0 + 1, limit=10, owner="w1", lease_s=30,
                                          rotation=Rotation())
    assert [j.id for j in claimed.jobs] == [job_id]
    data = (await api.get_job(job_id)).json
    assert data["status"] == "running"
    assert data["attempts"] == 1
    assert data["nextRunAt"] is None


# ---------------------------------------------------------------------- DELETE


async def test_cancel_queued_job(api: Api) -> None:
    job_id = await _create(api)
    api.clock.advance(5)
    r = await api.delete_job(job_id)
    assert r.status == 200, r.raw
    data = r.json
    assert data["jobId"] == job_id
    assert data["status"] == "cancelled"
    assert data["nextRunAt"] is None
    assert parse_time(data["updatedAt"]) == pytest.approx(NOW0 + 5, abs=0.001)
    # Durable, and visible to GET.
    job = await api.store.find_job(job_id)
    assert job is not None and job.status is JobStatus.CANCELLED
    assert (await api.get_job(job_id)).json["status"] == "cancelled"
    # A waiting job is cancelled at once: no running worker needs to be told.
    assert api.cancels == []
    assert api.webhooks_queued == []  # it has no webhook


async def test_cancelling_a_job_with_a_webhook_wakes_the_dispatcher(api: Api) -> None:
    r = await api.post_job(api.body(webhookUrl="http://127.0.0.1:9/hook"))
    assert r.status == 201, r.raw
    assert (await api.delete_job(r.json["jobId"])).json["status"] == "cancelled"
    assert api.webhooks_queued == [True]
    assert (await api.store.deliveries_of_job(r.json["jobId"]))[0].status.value == "pending"


async def test_cancel_twice_is_409(api: Api) -> None:
    job_id = await _create(api)
    assert (await api.delete_job(job_id)).status == 200
    (await api.delete_job(job_id)).problem(409, "invalid_state")
    assert (await api.get_job(job_id)).json["status"] == "cancelled"


async def test_cancel_another_tenants_job_is_404_and_leaves_it(api: Api) -> None:
    job_id = await _create(api)
    other = await api.make_tenant("globex")
    (await api.delete_job(job_id, api_key=other.api_key)).problem(404, "not_found")
    assert (await api.get_job(job_id)).json["status"] == "queued"


async def test_cancel_unknown_and_unauthorized(api: Api) -> None:
    (await api.delete_job("job_doesnotexist000000000")).problem(404, "not_found")
    job_id = await _create(api)
    (await api.delete_job(job_id, auth=False)).problem(401, "unauthorized")
    assert (await api.get_job(job_id)).json["status"] == "queued"


async def test_cancel_running_job_asks_the_worker(api: Api) -> None:
    job_id = await _create(api)
    await api.store.claim_jobs(now=NOW0 + 1, limit=10, owner="w1", lease_s=30,
                               rotation=Rotation())
    r = await api.delete_job(job_id)
    assert r.status == 200, r.raw
    assert r.json["status"] == "running"        # cancelled cooperatively, not yet stopped
    assert r.json["cancelRequested"] is True
    assert api.cancels == [job_id]


async def test_cancel_is_not_rate_limited(api: Api) -> None:
    slow = await api.make_tenant("slow", rate=0.001, burst=1)
    r = await api.post_job(api.body(tenantId="slow"), api_key=slow.api_key, key="only")
    assert r.status == 201
    (await api.post_job(api.body(tenantId="slow"), api_key=slow.api_key, key="second")).problem(
        429, "rate_limited")
    job_id = r.json["jobId"]
    assert (await api.get_job(job_id, api_key=slow.api_key)).status == 200
    assert (await api.delete_job(job_id, api_key=slow.api_key)).status == 200


async def test_get_shows_the_webhook_once_the_job_finished(api: Api) -> None:
    job_id = await _create(api, webhookUrl="http://127.0.0.1:9/hook")
    assert (await api.get_job(job_id)).json.get("webhook") is None
    assert (await api.delete_job(job_id)).status == 200  # cancelled: a final status
    webhook = (await api.get_job(job_id)).json["webhook"]
    assert webhook["deliveryId"].startswith("msg_")
    assert webhook["status"] == "pending"
    assert webhook["attempts"] == 0
    assert webhook["deliveredAt"] is None
