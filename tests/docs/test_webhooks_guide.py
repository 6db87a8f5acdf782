"""docs/webhooks.md: its snippet and its complete receiver, against jobd's real signatures."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from jobd.credentials import new_webhook_secret
from jobd.signing import signature_headers
from tests.docs.conftest import DOCS, Jobd, code_blocks, load_module
from tests.support import free_port, wait_for

GUIDE = DOCS / "webhooks.md"
RECEIVER = DOCS / "examples" / "webhook_receiver.py"
BODY = b'{"jobId":"job_1","type":"noop","status":"succeeded","attempts":1,"result":{"ok":true}}'


@pytest.fixture
def receiver() -> ModuleType:
    return load_module(RECEIVER, "webhook_receiver")


def test_the_guide_shows_the_receiver_file_as_it_is() -> None:
    assert RECEIVER.read_text(encoding="utf-8") in code_blocks(GUIDE, "python")


def test_the_guides_snippet_accepts_jobds_signatures_and_refuses_stale_ones() -> None:
    snippet = next(b for b in code_blocks(GUIDE, "python") if b.startswith("import base64"))
    ns: dict[str, Any] = {}
    exec(compile(snippet, "webhooks.md", "exec"), ns)
    secret, now = new_webhook_secret(), int(time.time())
    h = signature_headers(secret, "msg_1", now, BODY)
    assert ns["verify_x_signature"](secret, BODY, h["X-Signature"])
    assert ns["verify_standard_webhook"](secret, BODY, "msg_1", str(now), h["webhook-signature"])
    assert not ns["verify_x_signature"](secret, BODY + b" ", h["X-Signature"])
    old = signature_headers(secret, "msg_1", now - 301, BODY)
    assert not ns["verify_standard_webhook"](secret, BODY, "msg_1", str(now - 301),
                                             old["webhook-signature"])


def test_the_receiver_checks_both_signatures_and_the_timestamp(receiver: ModuleType) -> None:
    secret, now = new_webhook_secret(), 1_800_000_000
    h = {k.lower(): v for k, v in signature_headers(secret, "msg_1", now, BODY).items()}
    assert receiver.is_authentic(secret, h, BODY, now=now + 299)
    assert not receiver.is_authentic(secret, h, BODY, now=now + 301)
    assert not receiver.is_authentic(secret, h, BODY, now=now - 301)
    assert not receiver.is_authentic(secret, h, BODY.replace(b"1", b"2"), now=now)
    assert not receiver.is_authentic(new_webhook_secret(), h, BODY, now=now)
    assert not receiver.is_authentic(secret, {**h, "x-signature": "sha256=00"}, BODY, now=now)
    assert not receiver.is_authentic(secret, {**h, "webhook-id": "msg_2"}, BODY, now=now)
    assert not receiver.is_authentic(secret, {}, BODY, now=now)


class Running:
    def __init__(self, module: ModuleType, secret: str, inbox_path: Path) -> None:
        self.handled: list[dict[str, Any]] = []
        module.handle = self.handled.append  # the work: record it
        self.inbox = module.Inbox(str(inbox_path))
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port),
                                          module.make_handler(secret, self.inbox))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=module.work_forever, args=(self.inbox,), daemon=True).start()

    def post(self, headers: dict[str, str], body: bytes) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("POST", "/", body, headers)
        status = conn.getresponse().status
        conn.close()
        return status


@pytest.fixture
def running(receiver: ModuleType, tmp_path: Path) -> Iterator[Callable[[str], Running]]:
    made: list[Running] = []

    def start(secret: str) -> Running:
        made.append(Running(receiver, secret, tmp_path / "inbox.db"))
        return made[-1]

    yield start
    for one in made:
        one.server.shutdown()
        one.server.server_close()


def test_a_redelivery_is_acknowledged_and_handled_once(running: Callable[[str], Running]) -> None:
    secret = new_webhook_secret()
    r = running(secret)
    headers = signature_headers(secret, "msg_1", int(time.time()), BODY)
    assert r.post(headers, BODY) == 204
    assert r.post(headers, BODY) == 204  # the same delivery again, as after a lost answer
    later = signature_headers(secret, "msg_1", int(time.time()) + 1, BODY)
    assert r.post(later, BODY) == 204  # a retry: new timestamp, same webhook-id
    wait_for(lambda: r.inbox.next_unhandled() is None, what="the inbox to be worked off")
    assert [e["jobId"] for e in r.handled] == ["job_1"]
    assert r.post({**headers, "X-Signature": "sha256=00"}, BODY) == 401


@pytest.mark.e2e
def test_the_receiver_takes_real_deliveries_once_each(jobd: Callable[..., Jobd],
                                                       running: Callable[[str], Running]) -> None:
    env = jobd()
    r = running(env.secret)
    ids = []
    for n in range(3):
        status, _, body = env.client.submit("noop", {"n": n}, key=f"k{n}",
                                            webhookUrl=f"http://127.0.0.1:{r.port}/")
        assert status == 201, body
        ids.append(body["jobId"])
    wait_for(lambda: len(r.handled) == 3, what="three webhooks handled")
    assert sorted(e["jobId"] for e in r.handled) == sorted(ids)
    assert {e["status"] for e in r.handled} == {"succeeded"}
    for job_id in ids:
        delivery = wait_for(lambda j=job_id: (env.client.job(j).get("webhook") or {}).get(
            "status") == "succeeded" and env.client.job(j)["webhook"], what="delivery recorded")
        assert delivery["lastStatusCode"] == 204 and delivery["attempts"] == 1
