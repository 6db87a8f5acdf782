"""``jobd dlq`` through the real CLI, against a database prepared through the store."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from jobd.models import DeliveryStatus, JobStatus, NewJob
from jobd.store.backend import Rotation
from tests.cli.conftest import make_tenant
from tests.conftest import T0
from tests.stores import BlockingStore
from tests.support import cli, cli_json, write_config

HOOK = "https://example.com/hook"
_keys = itertools.count(1)


@pytest.fixture
def cfg(tmp_path: Path, db: BlockingStore) -> Path:
    # the same database as the ``db`` fixture: tmp_path / "jobd.db"
    return write_config(tmp_path / "jobd.toml", tmp_path, 0)


def dead_delivery(db: BlockingStore, *, tenant: str = "acme", failures: int = 2,
                  now: float = T0) -> str:
    """A job that failed for good with a webhook, its delivery failed ``failures`` times,
    the last into the DLQ; its id."""
    key = f"key-{next(_keys)}"
    job = NewJob(tenant_id=tenant, type="noop", payload='{"n":1}', priority=0, max_attempts=1,
                 timeout_seconds=None, run_at=now, webhook_url=HOOK, idempotency_key=key)
    db.run(lambda b: b.insert_job(job, body_hash=key.encode(), now=now, idempotency_ttl_s=60))
    [claimed_job] = db.run(lambda b: b.claim_jobs(now=now, limit=1, owner="w", lease_s=60,
                                                  rotation=Rotation())).jobs
    assert db.run(lambda b: b.finish_job(claimed_job, owner="w", status=JobStatus.FATAL,
                                         now=now, error="boom"))
    [delivery] = db.run(lambda b: b.deliveries_of_job(claimed_job.id))
    for number in range(1, failures + 1):
        [claimed] = db.run(lambda b: b.claim_deliveries(now=now, limit=1, lease_s=60))
        assert claimed.id == delivery.id
        last = number == failures
        db.run(lambda b, claimed=claimed, number=number, last=last: b.record_delivery_attempt(
            claimed, now=now, attempted_at=now, status_code=500,
            error=f"HTTP 500: try {number}", duration_ms=3.0, retry_at=None if last else now))
    return delivery.id


def delivery(db: BlockingStore, delivery_id: str):
    found = db.run(lambda b: b.find_delivery(delivery_id))
    assert found is not None, delivery_id
    return found


def status_of(db: BlockingStore, delivery_id: str) -> DeliveryStatus:
    return delivery(db, delivery_id).status


def test_list_newest_first_with_tenant_filter_and_limit(cfg, db):
    make_tenant(db, "acme")
    make_tenant(db, "other")
    first = dead_delivery(db, now=T0)
    second = dead_delivery(db, tenant="other", now=T0 + 10)
    third = dead_delivery(db, now=T0 + 20)

    listed = cli_json(cfg, "dlq", "list")
    assert [d["deliveryId"] for d in listed] == [third, second, first]
    top = listed[0]
    assert top["jobId"] == delivery(db, third).job_id
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


def test_show_has_the_body_and_every_attempt(cfg, db):
    make_tenant(db)
    delivery_id = dead_delivery(db, failures=3)
    doc = cli_json(cfg, "dlq", "show", delivery_id)
    assert doc["deliveryId"] == delivery_id
    assert doc["status"] == "dead"
    assert doc["body"]["jobId"] == doc["jobId"] == delivery(db, delivery_id).job_id
    assert doc["body"]["payload"] == {"n": 1}
    assert [a["error"] for a in doc["history"]] == [f"HTTP 500: try {n}" for n in (1, 2, 3)]
    assert {a["statusCode"] for a in doc["history"]} == {500}
    human = cli(cfg, "dlq", "show", delivery_id).stdout
    assert delivery_id in human and "attempts" in human


def test_missing_ids_exit_1_with_a_message(cfg, db):
    for args in (("show", "msg_nope"), ("retry", "msg_nope"), ("purge", "msg_nope")):
        proc = cli(cfg, "dlq", *args, check=False)
        assert proc.returncode == 1, (args, proc.stderr)
        assert "msg_nope" in proc.stderr
        assert proc.stdout == ""


def test_id_and_all_together_or_neither_exit_2(cfg, db):
    make_tenant(db)
    delivery_id = dead_delivery(db)
    for command in ("retry", "purge"):
        both = cli(cfg, "dlq", command, delivery_id, "--all", check=False)
        assert both.returncode == 2
        assert "not both" in both.stderr
        neither = cli(cfg, "dlq", command, check=False)
        assert neither.returncode == 2
        assert "--all" in neither.stderr
    assert status_of(db, delivery_id) is DeliveryStatus.DEAD


def test_retry_one_gives_a_fresh_budget_then_it_is_no_longer_in_the_dlq(cfg, db):
    make_tenant(db)
    delivery_id = dead_delivery(db)
    assert cli_json(cfg, "dlq", "retry", delivery_id) == {"retried": 1,
                                                         "deliveryIds": [delivery_id]}
    again = delivery(db, delivery_id)
    # still 2 attempts made (the history's count); the retry budget starts again
    assert (again.status, again.attempts, again.dead_at) == (DeliveryStatus.PENDING, 2, None)
    assert again.next_attempt_at is not None
    due = again.next_attempt_at
    [claimed] = db.run(lambda b: b.claim_deliveries(now=due, limit=1, lease_s=60))
    assert claimed.attempts == 0  # attempts of the new budget, as the dispatcher sees them
    db.run(lambda b: b.release_deliveries(now=due, all_sending=True))
    assert again.next_attempt_at > T0  # now, by the CLI's clock
    assert cli_json(cfg, "dlq", "list") == []

    proc = cli(cfg, "dlq", "retry", delivery_id, check=False)
    assert proc.returncode == 1
    assert "not in the DLQ" in proc.stderr


def test_retry_all_for_a_tenant_with_progress(cfg, db):
    make_tenant(db, "acme")
    make_tenant(db, "other")
    mine = [dead_delivery(db) for i in range(3)]
    theirs = dead_delivery(db, tenant="other")
    proc = cli(cfg, "dlq", "retry", "--all", "--tenant", "acme")
    assert "3 dead delivery(ies) queued again" in proc.stdout
    assert {status_of(db, i) for i in mine} == {DeliveryStatus.PENDING}
    assert status_of(db, theirs) is DeliveryStatus.DEAD
    assert cli_json(cfg, "dlq", "retry", "--all") == {"retried": 1, "deliveryIds": [theirs]}
    assert cli_json(cfg, "dlq", "retry", "--all") == {"retried": 0, "deliveryIds": []}


def test_purge_deletes_deliveries_and_their_attempts(cfg, db):
    make_tenant(db, "acme")
    make_tenant(db, "other")
    one = dead_delivery(db)
    rest = [dead_delivery(db), dead_delivery(db, tenant="other")]
    assert cli_json(cfg, "dlq", "purge", one) == {"purged": 1, "deliveryIds": [one]}
    assert db.run(lambda b: b.find_delivery(one)) is None
    assert db.run(lambda b: b.delivery_attempts(one)) == []

    proc = cli(cfg, "dlq", "purge", "--all", "--yes")
    assert "2 dead delivery(ies) purged" in proc.stdout
    assert all(db.run(lambda b, i=i: b.find_delivery(i)) is None for i in rest)
    assert json.loads(cli(cfg, "dlq", "list", "--json").stdout) == []


def test_purge_leaves_deliveries_that_are_not_dead(cfg, db):
    make_tenant(db)
    dead = dead_delivery(db)
    cli_json(cfg, "dlq", "retry", dead)  # pending again
    assert cli_json(cfg, "dlq", "purge", "--all", "--yes") == {"purged": 0, "deliveryIds": []}
    assert status_of(db, dead) is DeliveryStatus.PENDING
    proc = cli(cfg, "dlq", "purge", dead, check=False)
    assert proc.returncode == 1
    assert "pending" in proc.stderr
