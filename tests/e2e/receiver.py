"""A webhook receiver for the end-to-end tests: a real HTTP server on 127.0.0.1 whose
paths answer from scripts, and the signatures a receiver checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support import wait_for

HANG = "hang"  # a script step: hold the request until released, then answer 200


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on 127.0.0.1: each path answers from its script of steps
    (status codes or HANG; the last step repeats) and records every request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.scripts: dict[str, list[int | str]] = {}
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                step = receiver._record(self.path, dict(self.headers), body)
                if step == HANG:
                    receiver.release.wait(15)
                    step = 200
                try:
                    self.send_response(int(step))
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the sender is gone (killed)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> int | str:
        with self.lock:
            self.seen.append(Seen(path, headers, body, time.monotonic()))
            script = self.scripts.get(path, [200])
            return script.pop(0) if len(script) > 1 else script[0]

    def script(self, path: str, steps: list[int | str]) -> str:
        with self.lock:
            self.scripts[path] = list(steps)
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def hits(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path]

    def wait_hits(self, path: str, count: int, timeout_s: float = 8) -> list[Seen]:
        return wait_for(lambda: (hits := self.hits(path)) and len(hits) >= count and hits,
                        timeout_s=timeout_s, what=f"{count} webhook request(s) to {path}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver for one test (tests/e2e/conftest.py offers it to every e2e test)."""
    r = Receiver()
    r.thread.start()
    yield r
    r.release.set()
    r.server.shutdown()
    r.server.server_close()


def x_signature(secret: str, body: bytes) -> str:
    """jobd's own header: ``X-Signature: sha256=<hex HMAC of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_signature(secret: str, seen: Seen) -> str:
    """Standard Webhooks' ``webhook-signature``: ``v1,<base64 HMAC of id.timestamp.body>``
    under the base64 key after ``whsec_``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = (f"{seen.headers['webhook-id']}.{seen.headers['webhook-timestamp']}.".encode()
              + seen.body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
