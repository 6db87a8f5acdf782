"""Webhooks as a receiver sees them: the real daemon, the real CLI, a real HTTP server."""

from __future__ import annotations

import hmac
import itertools
import os
import random
import threading
import time
from typing import Any

from tests.e2e.receiver import HANG, x_signature
from tests.support import cli, cli_json, wait_for


def created(resp: tuple[int, dict[str, str], Any]) -> str:
    status, _, body = resp
    assert status == 201, body
    return str(body["jobId"])


def delivery_of(env: Any, job_id: str) -> dict[str, Any] | None:
    deliveries = cli_json(env.config, "jobs", "show", job_id)["deliveries"]
    return deliveries[0] if deliveries else None


def wait_delivery_status(env: Any, job_id: str, status: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        d = delivery_of(env, job_id)
        return d if d and d["status"] == status else None
    return wait_for(check, timeout_s=8, interval_s=0.05, what=f"delivery to be {status}")


def test_a_finished_job_sends_a_signed_webhook(make_env, receiver):
    env = make_env()
    env.daemon.start()
    url = receiver.script("/hook", [200])
    payload = {"to": "user@example.com", "subject": "Hello"}
    job_id = created(env.client.submit("noop", payload, key="k1", webhookUrl=url))

    [seen] = receiver.wait_hits("/hook", 1)
    body = seen.json
    assert body["jobId"] == job_id
    assert body["status"] == "succeeded"
    assert body["attempts"] == 1
    assert body["payload"] == payload
    assert body["completedAt"].endswith("Z")
    assert seen.headers["Content-Type"] == "application/json"
    assert hmac.compare_digest(seen.headers["X-Signature"], x_signature(env.webhook_secret, seen.body))
    assert seen.headers["webhook-id"].startswith("msg_")
    assert abs(int(seen.headers["webhook-timestamp"]) - time.time()) < 60

    done = wait_delivery_status(env, job_id, "succeeded")
    assert done["deliveryId"] == seen.headers["webhook-id"]
    assert [h["statusCode"] for h in done["history"]] == [200]


def test_a_job_that_fails_for_good_sends_a_fatal_webhook(make_env, receiver):
    env = make_env()
    env.daemon.start()
    target = receiver.script("/target", [500])
    hook = receiver.script("/hook", [200])
    job_id = created(env.client.submit("http", {"url": target}, key="k1", maxAttempts=2,
                                       webhookUrl=hook))
    [seen] = receiver.wait_hits("/hook", 1)
    body = seen.json
    assert (body["jobId"], body["status"], body["attempts"]) == (job_id, "fatal", 2)
    assert "500" in body["error"]
    assert len(receiver.hits("/target")) == 2
    assert seen.headers["X-Signature"] == x_signature(env.webhook_secret, seen.body)


def test_failing_deliveries_retry_then_land_in_the_dlq_and_dlq_retry_delivers(make_env, receiver):
    delays = [0.1, 0.2, 0.3]
    env = make_env(webhooks={"retry_delays": delays})
    env.daemon.start()
    url = receiver.script("/down", [500])
    job_id = created(env.client.submit("noop", {"n": 1}, key="k1", webhookUrl=url))

    dead = wait_for(lambda: cli_json(env.config, "dlq", "list"), timeout_s=8, interval_s=0.05,
                    what="the delivery to be dead-lettered")
    hits = receiver.hits("/down")
    assert len(hits) == 4  # one delivery plus 3 retries, then nothing more
    gaps = [b.at - a.at for a, b in itertools.pairwise(hits)]
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay - 0.01 <= gap < delay + 1.5, gaps
    assert gaps[0] < gaps[2], gaps
    [entry] = dead
    delivery_id = entry["deliveryId"]
    assert (entry["jobId"], entry["attempts"]) == (job_id, 4)
    assert entry["lastError"].startswith("HTTP 500")
    assert {h.headers["webhook-id"] for h in hits} == {delivery_id}

    receiver.script("/down", [200])
    assert cli_json(env.config, "dlq", "retry", delivery_id)["retried"] == 1
    hits = receiver.wait_hits("/down", 5)
    assert hits[4].headers["webhook-id"] == delivery_id
    assert hits[4].body == hits[0].body
    done = wait_delivery_status(env, job_id, "succeeded")
    # every view counts the same five attempts to send it: jobs show, dlq show, the API
    assert (done["attempts"], len(done["history"])) == (5, 5)
    shown = cli_json(env.config, "dlq", "show", delivery_id)
    assert (shown["attempts"], len(shown["history"])) == (5, 5)
    assert env.client.job(job_id)["webhook"]["attempts"] == 5
    assert env.client.job(job_id)["attempts"] == 1  # the job itself ran once
    assert cli_json(env.config, "dlq", "list") == []
    assert len(receiver.hits("/down")) == 5


def test_a_webhook_survives_kill_9_while_it_is_being_sent(make_env, receiver):
    env = make_env(webhooks={"timeout": 8})
    env.daemon.start()
    url = receiver.script("/slow", [HANG, 200])
    job_id = created(env.client.submit("noop", {"n": 1}, key="k1", webhookUrl=url))
    [first] = receiver.wait_hits("/slow", 1)  # the job succeeded; its webhook is in flight
    assert env.client.job(job_id)["status"] == "succeeded"
    env.daemon.kill9()
    receiver.release.set()
    assert delivery_of(env, job_id)["status"] == "sending"

    env.daemon.start()
    hits = receiver.wait_hits("/slow", 2)
    assert hits[1].headers["webhook-id"] == first.headers["webhook-id"]
    assert hits[1].body == first.body
    assert hits[1].headers["X-Signature"] == x_signature(env.webhook_secret, hits[1].body)
    wait_delivery_status(env, job_id, "succeeded")
    assert "left sending when the last process died" in env.daemon.log()


def test_dlq_cli_changes_are_picked_up_by_a_running_daemon(make_env, receiver):
    env = make_env(webhooks={"retry_delays": []})
    env.daemon.start()
    url = receiver.script("/once", [500, 500, 200])
    ids = [created(env.client.submit("noop", {"n": i}, key=f"k{i}", webhookUrl=url))
           for i in range(2)]
    wait_for(lambda: len(cli_json(env.config, "dlq", "list")) == 2, timeout_s=8, interval_s=0.05,
             what="both deliveries dead (no retries configured)")
    proc = cli(env.config, "dlq", "retry", "--all")
    assert "2 dead delivery(ies) queued again" in proc.stdout
    for job_id in ids:
        wait_delivery_status(env, job_id, "succeeded")
    assert len(receiver.hits("/once")) == 4


def test_sigterm_with_a_webhook_in_flight_exits_cleanly_and_it_is_sent_after_restart(
        make_env, receiver):
    env = make_env(webhooks={"timeout": 8}, workers={"shutdown_grace": 0.5})
    env.daemon.start()
    url = receiver.script("/slow", [HANG, 200])
    job_id = created(env.client.submit("noop", {}, key="k1", webhookUrl=url))
    [first] = receiver.wait_hits("/slow", 1)
    started = time.monotonic()
    assert env.daemon.terminate() == 0
    assert time.monotonic() - started < 5
    receiver.release.set()
    interrupted = delivery_of(env, job_id)
    assert interrupted["status"] == "pending"  # put back, not left `sending`
    assert interrupted["history"] == []  # an interrupted send is not a failed attempt

    env.daemon.start()
    hits = receiver.wait_hits("/slow", 2)
    assert hits[1].headers["webhook-id"] == first.headers["webhook-id"]
    wait_delivery_status(env, job_id, "succeeded")


def test_kill9_during_a_burst_with_webhooks_every_job_s_webhook_arrives(make_env, receiver):
    """Webhooks sent at once (created sending in the job's own commit) and queued ones,
    with the daemon killed at random moments: every job's webhook still arrives."""
    env = make_env()
    url = receiver.script("/burst", [200])
    rounds = int(os.environ.get("JOBD_CRASH_ROUNDS", "3"))
    rng, acknowledged = random.Random(11), []
    env.daemon.start()
    for round_no in range(rounds):
        stop, acked = threading.Event(), []

        def post(round_no: int = round_no, stop: threading.Event = stop,
                 acked: list[str] = acked) -> None:
            for n in itertools.count():
                if stop.is_set():
                    return
                try:
                    status, _, body = env.client.submit("noop", {"n": n}, key=f"r{round_no}-{n}",
                                                        webhookUrl=url)
                except OSError:
                    return
                if status == 201:
                    acked.append(body["jobId"])
        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        wait_for(lambda acked=acked: len(acked) > 20, what="some jobs acknowledged")
        time.sleep(rng.uniform(0.0, 0.2))
        env.daemon.kill9()
        stop.set()
        poster.join(10)
        acknowledged.extend(acked)
        env.daemon.start()
    wait_for(lambda: {s.json["jobId"] for s in receiver.hits("/burst")} >= set(acknowledged),
             timeout_s=30, interval_s=0.1, what="every acknowledged job's webhook")
    assert {s.json["status"] for s in receiver.hits("/burst")} == {"succeeded"}
    for job_id in acknowledged[-5:]:
        wait_delivery_status(env, job_id, "succeeded")
