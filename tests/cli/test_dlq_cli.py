"""``jobd dlq`` through the real CLI, against a database prepared with store functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobd.models import DeliveryStatus
from jobd.store.sqlite import deliveries as store_deliveries
from jobd.store.sqlite.outbox import enqueue_delivery
from tests.conftest import T0
from tests.support import cli, cli_json, write_config


@pytest.fixture
def cfg(tmp_path: Path, db) -> Path:
    # same database file as the ``db`` fixture: tmp_path / "jobd.db"
    return write_config(tmp_path / "jobd.toml", tmp_path, 0)


def dead_delivery(db, *, job_id: str, tenant: str = "acme", failures: int = 2,
                  now: float = T0) -> str:
    """Queue a webhook for a finished job and fail it ``failures`` times, the last into the DLQ."""
    finished = {"id": job_id, "tenant_id": tenant, "type": "noop", "status": "fatal",
                "attempts": 1, "payload": '{"n":1}', "completed_at": now, "result": None,
                "last_error": "boom", "webhook_url": "https://example.com/hook"}
    delivery_id = db.write(enqueue_delivery, finished, now)
    for number in range(1, failures + 1):
        [claimed] = db.write(store_deliveries.claim_due_deliveries, now=now, limit=1, lease_s=60)
        assert claimed.id == delivery_id
        last = number == failures
        db.write(store_deliveries.record_delivery_attempt, claimed, now=now, attempted_at=now,
                 status_code=500, error=f"HTTP 500: try {number}", duration_ms=3.0,
                 retry_at=None if last else now)
    return delivery_id


def status_of(db, delivery_id: str) -> DeliveryStatus:
    return db.read(store_deliveries.get_delivery, delivery_id).status


def test_list_newest_first_with_tenant_filter_and_limit(cfg, db, new_tenant):
    new_tenant("acme")
    new_tenant("other")
    first = dead_delivery(db, job_id="job_1", now=T0)
    second = dead_delivery(db, job_id="job_2", tenant="other", now=T0 + 10)
    third = dead_delivery(db, job_id="job_3", now=T0 + 20)

    listed = cli_json(cfg, "dlq", "list")
    assert [d["deliveryId"] for d in listed] == [third, second, first]
    top = listed[0]
    assert top["jobId"] == "job_3"
    assert top["tenantId"] == "acme"
    assert top["url"] == "https://example.com/hook"
    assert top["attempts"] == 2
    assert top["lastError"] == "HTTP 500: try 2"
    assert top["deadAt"].endswith("Z")
    assert [d["deliveryId"] for d in cli_json(cfg, "dlq", "list", "--tenant", "acme")] == [
        third, first]
    assert len(cli_json(cfg, "dlq", "list", "--limit", "1")) == 1

    table = cli(cfg, "dlq", "list").stdout
    assert third in table  # ids are never cut, whatever the width


def test_show_has_the_body_and_every_attempt(cfg, db, new_tenant):
    new_tenant()
    delivery_id = dead_delivery(db, job_id="job_1", failures=3)
    doc = cli_json(cfg, "dlq", "show", delivery_id)
    assert doc["deliveryId"] == delivery_id
    assert doc["status"] == "dead"
    assert doc["body"]["jobId"] == "job_1"
    assert doc["body"]["payload"] == {"n": 1}
    assert [a["error"] for a in doc["history"]] == [f"HTTP 500: try {n}" for n in (1, 2, 3)]
    assert {a["statusCode"] for a in doc["history"]} == {500}
    human = cli(cfg, "dlq", "show", delivery_id).stdout
    assert delivery_id in human and "attempts" in human


def test_missing_ids_exit_1_with_a_message(cfg, db, new_tenant):
    for args in (("show", "msg_nope"), ("retry", "msg_nope"), ("purge", "msg_nope")):
        proc = cli(cfg, "dlq", *args, check=False)
        assert proc.returncode == 1, (args, proc.stderr)
        assert "msg_nope" in proc.stderr
        assert proc.stdout == ""


def test_id_and_all_together_or_neither_exit_2(cfg, db, new_tenant):
    new_tenant()
    delivery_id = dead_delivery(db, job_id="job_1")
    for command in ("retry", "purge"):
        both = cli(cfg, "dlq", command, delivery_id, "--all", check=False)
        assert both.returncode == 2
        assert "not both" in both.stderr
        neither = cli(cfg, "dlq", command, check=False)
        assert neither.returncode == 2
        assert "--all" in neither.stderr
    assert status_of(db, delivery_id) is DeliveryStatus.DEAD


def test_retry_one_gives_a_fresh_budget_then_it_is_no_longer_in_the_dlq(cfg, db, new_tenant):
    new_tenant()
    delivery_id = dead_delivery(db, job_id="job_1")
    assert cli_json(cfg, "dlq", "retry", delivery_id) == {"retried": 1,
                                                         "deliveryIds": [delivery_id]}
    again = db.read(store_deliveries.get_delivery, delivery_id)
    # still 2 attempts made (the history's count); the retry budget starts again
    assert (again.status, again.attempts, again.dead_at) == (DeliveryStatus.PENDING, 2, None)
    [claimed] = db.write(store_deliveries.claim_due_deliveries, now=again.next_attempt_at,
                         limit=1, lease_s=60)
    assert claimed.attempts == 0  # attempts of the new budget, as the dispatcher sees them
    db.write(store_deliveries.release_sending_deliveries, now=again.next_attempt_at,
             all_sending=True)
    assert again.next_attempt_at > T0  # now, by the CLI's clock
    assert cli_json(cfg, "dlq", "list") == []

    proc = cli(cfg, "dlq", "retry", delivery_id, check=False)
    assert proc.returncode == 1
    assert "not in the DLQ" in proc.stderr


def test_retry_all_for_a_tenant_with_progress(cfg, db, new_tenant):
    new_tenant("acme")
    new_tenant("other")
    mine = [dead_delivery(db, job_id=f"job_{i}") for i in range(3)]
    theirs = dead_delivery(db, job_id="job_x", tenant="other")
    proc = cli(cfg, "dlq", "retry", "--all", "--tenant", "acme")
    assert "3 dead delivery(ies) queued again" in proc.stdout
    assert {status_of(db, i) for i in mine} == {DeliveryStatus.PENDING}
    assert status_of(db, theirs) is DeliveryStatus.DEAD
    assert cli_json(cfg, "dlq", "retry", "--all") == {"retried": 1, "deliveryIds": [theirs]}
    assert cli_json(cfg, "dlq", "retry", "--all") == {"retried": 0, "deliveryIds": []}


def test_purge_deletes_deliveries_and_their_attempts(cfg, db, new_tenant):
    new_tenant("acme")
    new_tenant("other")
    one = dead_delivery(db, job_id="job_1")
    rest = [dead_delivery(db, job_id="job_2"), dead_delivery(db, job_id="job_3", tenant="other")]
    assert cli_json(cfg, "dlq", "purge", one) == {"purged": 1, "deliveryIds": [one]}
    assert db.read(store_deliveries.find_delivery, one) is None
    assert db.read(store_deliveries.attempts_of_delivery, one) == []

    proc = cli(cfg, "dlq", "purge", "--all", "--yes")
    assert "2 dead delivery(ies) purged" in proc.stdout
    assert all(db.read(store_deliveries.find_delivery, i) is None for i in rest)
    assert json.loads(cli(cfg, "dlq", "list", "--json").stdout) == []


def test_purge_leaves_deliveries_that_are_not_dead(cfg, db, new_tenant):
    new_tenant()
    dead = dead_delivery(db, job_id="job_1")
    cli_json(cfg, "dlq", "retry", dead)  # pending again
    assert cli_json(cfg, "dlq", "purge", "--all", "--yes") == {"purged": 0, "deliveryIds": []}
    assert status_of(db, dead) is DeliveryStatus.PENDING
    proc = cli(cfg, "dlq", "purge", dead, check=False)
    assert proc.returncode == 1
    assert "pending" in proc.stderr
